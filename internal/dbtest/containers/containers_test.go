package containers

import (
	"context"
	"fmt"
	"net/netip"
	"os/exec"
	"slices"
	"strings"
	"testing"

	"github.com/xabridge/xabridge/internal/dbtest"
)

// The containers are configured for two-phase commit and for the URLs the
// tests expect, with an environment the local and the public images both
// understand.
func TestSpecs(t *testing.T) {
	ss := specs(LocalPGImage, "mysql:8.4")
	if len(ss) != 2 || ss[0].key != "XABRIDGE_PG" || ss[1].key != "XABRIDGE_MYSQL" {
		t.Fatalf("specs: %+v", ss)
	}
	if ss[0].image != LocalPGImage || ss[1].image != "mysql:8.4" {
		t.Fatalf("images %s, %s", ss[0].image, ss[1].image)
	}
	if !slices.Contains(ss[0].cmd, "max_prepared_transactions=300") {
		t.Fatalf("postgres without two-phase commit: %v", ss[0].cmd)
	}
	if u := ss[0].url("127.0.0.1:5"); u != "postgres://postgres@127.0.0.1:5/xabridge?sslmode=disable" {
		t.Fatalf("postgres url %s", u)
	}
	if u := ss[1].url("127.0.0.1:6"); !strings.HasPrefix(u, "mysql://root@127.0.0.1:6/") {
		t.Fatalf("mysql url %s", u)
	}
}

// Overrides win; "local" and "public" need no engine.
func TestImages(t *testing.T) {
	ctx := context.Background()
	for _, tc := range []struct {
		mode, pgOverride, wantPG, wantMy string
		wantErr                          bool
	}{
		{"local", "", LocalPGImage, LocalMySQLImage, false},
		{"public", "", PublicPGImage, PublicMySQLImage, false},
		{"public", "example/pg:1", "example/pg:1", PublicMySQLImage, false},
		{"cloud", "", "", "", true},
	} {
		t.Setenv("XABRIDGE_TEST_IMAGES", tc.mode)
		t.Setenv("XABRIDGE_TEST_PG_IMAGE", tc.pgOverride)
		t.Setenv("XABRIDGE_TEST_MYSQL_IMAGE", "")
		pg, my, err := Images(ctx)
		if (err != nil) != tc.wantErr || pg != tc.wantPG || my != tc.wantMy {
			t.Errorf("mode %q override %q: Images = %q, %q, %v; want %q, %q, error %v", tc.mode, tc.pgOverride, pg, my, err, tc.wantPG, tc.wantMy, tc.wantErr)
		}
	}
}

func TestOverlaps(t *testing.T) {
	routes := []netip.Prefix{netip.MustParsePrefix("10.213.0.0/16"), netip.MustParsePrefix("172.17.0.0/16")}
	if !overlaps(netip.MustParsePrefix("10.213.5.0/24"), routes) {
		t.Error("10.213.5.0/24 inside 10.213.0.0/16 not seen as overlapping")
	}
	if overlaps(netip.MustParsePrefix("10.214.5.0/24"), routes) {
		t.Error("10.214.5.0/24 seen as overlapping")
	}
	if len(hostRoutes()) == 0 {
		t.Log("no IPv4 routes read from /proc/net/route")
	}
}

// ReapStale removes the test containers of dead processes of this host and
// leaves those of live ones alone. It needs a Docker engine (and an image:
// scripts/images), like every test of this package's containers.
func TestReapStale(t *testing.T) {
	switch {
	case dbtest.Mode() == "local":
		t.Skip("XABRIDGE_TEST_DB=local: no containers")
	case !dbtest.DockerReachable():
		if dbtest.Mode() == "containers" {
			t.Fatal("XABRIDGE_TEST_DB=containers, but no Docker engine answers")
		}
		t.Skip("no Docker engine answers")
	}
	ctx := context.Background()
	pg, _, err := Images(ctx)
	if err != nil {
		t.Fatal(err)
	}
	// A pid that was alive a moment ago and is not any more.
	dead := exec.Command("true")
	if err := dead.Run(); err != nil {
		t.Fatal(err)
	}
	create := func(pid int) string {
		t.Helper()
		out, err := docker(ctx, "create", "--label", LabelTest+"=1", "--label", LabelHost+"="+hostname,
			"--label", fmt.Sprintf("%s=%d", LabelPID, pid), pg)
		if err != nil {
			t.Fatal(err)
		}
		id := strings.TrimSpace(out)
		t.Cleanup(func() { _, _ = docker(context.Background(), "rm", "-f", "-v", id) })
		return id
	}
	orphan := create(dead.Process.Pid)
	kept := create(1) // init: alive
	if _, err := ReapStale(ctx); err != nil {
		t.Fatal(err)
	}
	if _, err := docker(ctx, "inspect", orphan); err == nil {
		t.Errorf("container %s of dead process %d not removed", orphan, dead.Process.Pid)
	}
	if _, err := docker(ctx, "inspect", kept); err != nil {
		t.Errorf("container %s of a live process removed: %v", kept, err)
	}
}
