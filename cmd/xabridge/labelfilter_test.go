package main

import (
	"context"
	"encoding/json"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/xabridge/xabridge/drivers"
	"github.com/xabridge/xabridge/internal/strand"
)

// list --label L shows only the branches whose transaction label is
// exactly L, in the table and in JSON (with the label); a label that
// drivers.ValidateLabel refuses, or an empty one, is a usage error.
func TestListLabelFilter(t *testing.T) {
	s := newStoreScene(t)
	ctx := context.Background()
	s.open(t, "lf-node", 5*time.Second)
	now := time.Now()
	prep := func(seq uint32, label string, onMy bool) drivers.GlobalID {
		g := strand.GlobalID("lf-node", now.Add(-time.Second), now.Add(time.Hour), seq)
		for i, r := range []drivers.Resource{s.b.PG, s.b.My} {
			if i == 1 && !onMy {
				continue
			}
			x := drivers.XID{Global: g, Branch: uint8(i), Label: label}
			s.xids = append(s.xids, x)
			if err := strand.Prepare(ctx, r, x, "UPDATE "+s.table+" SET balance = balance + 1 WHERE id = "+strconv.Itoa(int(seq))); err != nil {
				t.Fatal(err)
			}
		}
		return g
	}
	g1 := prep(1, "order-17", true)
	g2 := prep(2, "order-170", false) // a longer label with the same prefix
	g3 := prep(3, "", false)
	args := append(append([]string{"list", "--node-id", "lf-node"}, s.flags()...), s.resources()...)

	out, errOut, code := cli(t, append(args, "--label", "order-17", "-o", "json")...)
	if code != exitOK {
		t.Fatalf("list --label: exit %d\n%s%s", code, out, errOut)
	}
	var rep reportJSON
	if err := json.Unmarshal([]byte(out), &rep); err != nil {
		t.Fatal(err)
	}
	if len(rep.Branches) != 2 {
		t.Fatalf("list --label order-17 -o json: %d branches, want g1's 2\n%s", len(rep.Branches), out)
	}
	for _, b := range rep.Branches {
		if b.GTRID != g1.String() || b.Label != "order-17" {
			t.Errorf("list --label order-17 -o json: branch %s label %q", b.GTRID, b.Label)
		}
	}
	out, errOut, code = cli(t, append(args, "--label", "order-17")...)
	if code != exitOK || !strings.Contains(out, g1.String()) || !strings.Contains(out, "LABEL") || !strings.Contains(out, "order-17") ||
		strings.Contains(out, g2.String()) || strings.Contains(out, g3.String()) {
		t.Fatalf("list --label order-17 (table): exit %d\n%s%s", code, out, errOut)
	}
	// Without --label: all three, each with its label. (The servers are
	// shared with other tests, whose branches of other nodes list too.)
	out, _, _ = cli(t, append(args, "-o", "json")...)
	if err := json.Unmarshal([]byte(out), &rep); err != nil {
		t.Fatal(err)
	}
	labels := map[string]string{}
	for _, b := range rep.Branches {
		if strings.HasPrefix(b.GTRID, "lf-node.") {
			labels[b.GTRID] = b.Label
		}
	}
	if labels[g1.String()] != "order-17" || labels[g2.String()] != "order-170" || labels[g3.String()] != "" || len(labels) != 3 {
		t.Fatalf("list without --label: labels %v", labels)
	}
	// No match: an empty listing, exit 0.
	out, errOut, code = cli(t, append(args, "--label", "order-99", "-o", "json")...)
	if err := json.Unmarshal([]byte(out), &rep); err != nil || code != exitOK || len(rep.Branches) != 0 {
		t.Fatalf("list --label order-99: exit %d, %d branches (%v)\n%s%s", code, len(rep.Branches), err, out, errOut)
	}

	for _, bad := range []struct{ label, want string }{
		{"order 17", "character ' '"},
		{"ord'er", "character '\\''"},
		{strings.Repeat("x", drivers.MaxLabelLen+1), "longer than"},
		{"", "--label is empty"},
	} {
		out, errOut, code := cli(t, append(args, "--label", bad.label)...)
		if code != exitUsage || !strings.Contains(errOut, "--label") || !strings.Contains(errOut, bad.want) || out != "" {
			t.Errorf("list --label %q: exit %d, want 2 naming the problem (%s)\nstdout: %s\nstderr: %s", bad.label, code, bad.want, out, errOut)
		}
	}
}
