package main

import (
	"bytes"
	"context"
	"os"
	"os/exec"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/xabridge/xabridge/decisionlog/pgstore"
)

// The demonstration: two `xabridge demo transfer --store`
// coordinators (real processes, different node ids) on one store; one is
// killed with SIGKILL mid-run and the other takes its transactions over
// with no operator: xabridge nodes shows the killed node taken over and no
// branch of it prepared; the survivor says what it took over; the demo's
// invariants hold.
func TestTwoDemoCoordinatorsOnStore(t *testing.T) {
	s := newStoreScene(t)
	ctx := context.Background()
	bin := cliBinary(t)
	prefix := "xab_sd_" + randHex(3)
	b := s.b
	if err := b.SetPrefix(prefix); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = b.Drop(context.Background()) })
	transfers := func() int {
		var n int
		if err := b.PGPool.QueryRow(ctx, "SELECT count(*) FROM "+b.Table("transfers")).Scan(&n); err != nil {
			return -1 // not created yet
		}
		return n
	}
	waitFor := func(what string, d time.Duration, cond func() bool) {
		t.Helper()
		deadline := time.Now().Add(d)
		for !cond() {
			if time.Now().After(deadline) {
				t.Fatalf("timed out after %s waiting for %s", d, what)
			}
			time.Sleep(50 * time.Millisecond)
		}
	}
	start := func(node string, extra ...string) (*exec.Cmd, *bytes.Buffer) {
		args := append([]string{"demo", "transfer", "--count", "1000000", "--concurrency", "4", "--table-prefix", prefix,
			"--node-id", node, "--store", s.pgURL, "--store-schema", s.schema, "--lease-ttl", "2s"}, extra...)
		cmd := exec.Command(bin, args...)
		cmd.Env = append(os.Environ(), "XABRIDGE_PG="+s.pgURL, "XABRIDGE_MYSQL="+s.myURL)
		var out bytes.Buffer
		cmd.Stdout, cmd.Stderr = &out, os.Stderr
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = cmd.Process.Kill(); _ = cmd.Wait() })
		return cmd, &out
	}
	nodeState := func(node string) (pgstore.NodeInfo, bool) {
		rd, err := pgstore.OpenReader(ctx, s.pool, pgstore.ReaderOptions{Schema: s.schema})
		if err != nil {
			return pgstore.NodeInfo{}, false
		}
		ni, err := rd.NodeInfo(ctx, node)
		return ni, err == nil
	}

	a, _ := start("dm-a")
	waitFor("dm-a to commit 50 transfers", 60*time.Second, func() bool { return transfers() >= 50 })
	bcmd, bout := start("dm-b", "--reset=false")
	waitFor("dm-b to hold its lease", 30*time.Second, func() bool {
		ni, ok := nodeState("dm-b")
		return ok && ni.State == pgstore.NodeLive
	})
	n0 := transfers()
	waitFor("both to commit 100 more transfers", 60*time.Second, func() bool { return transfers() >= n0+100 })

	if err := a.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	_ = a.Wait()
	killed := time.Now()

	// Poll xabridge nodes until dm-a is taken over by dm-b and nothing of
	// it is prepared or undecided.
	args := append(append([]string{"nodes", "-o", "json"}, s.flags()...), s.resources()...)
	waitFor("dm-b to take dm-a over", 60*time.Second, func() bool {
		j, _, _ := nodesOut(t, args[3:]...)
		n, ok := byNode(j)["dm-a"]
		return ok && n.Holder.Node == "dm-b" && n.Epoch >= 2 && n.InDoubtBranches != nil && *n.InDoubtBranches == 0 && n.PendingDecisions == 0
	})
	took := time.Since(killed)
	table, _, _ := cli(t, append([]string{"nodes"}, args[3:]...)...)
	t.Logf("dm-a settled by dm-b %.1fs after its SIGKILL (lease TTL 2s):\n%s", took.Seconds(), table)

	if err := bcmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	_ = bcmd.Wait()
	if !strings.Contains(bout.String(), "node dm-b took over: [dm-a (epoch") {
		t.Errorf("dm-b does not say it took dm-a over:\n%s", bout.String())
	}
	// dm-b stopped mid-transfer and released its lease: what it left is
	// settled by recover --store, as by any replica.
	out, errOut, code := cli(t, append(append([]string{"recover"}, s.flags()...), s.resources()...)...)
	if code != exitOK {
		t.Fatalf("recover --store after dm-b stopped: exit %d\n%s%s", code, out, errOut)
	}
	j, code, errOut := nodesOut(t, args[3:]...)
	if code != exitOK {
		t.Fatalf("nodes after recover: exit %d: %s", code, errOut)
	}
	for _, n := range j.Nodes {
		if n.InDoubtBranches == nil || *n.InDoubtBranches != 0 || n.PendingDecisions != 0 {
			t.Errorf("node %s: in doubt %v, pending %d", n.Node, n.InDoubtBranches, n.PendingDecisions)
		}
	}
	out, errOut, code = cli(t, "demo", "check", "--pg", s.pgURL, "--mysql", s.myURL, "--table-prefix", prefix, "--nodes", "dm-a,dm-b")
	if code != exitOK {
		t.Fatalf("demo invariants violated (exit %d)\n%s%s", code, out, errOut)
	}
	t.Logf("%s", strings.ReplaceAll(strings.TrimSpace(out), "\n", "; "))
}
