package main

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/xabridge/xabridge/drivers"
	"github.com/xabridge/xabridge/internal/bank"
	"github.com/xabridge/xabridge/internal/dbtest"
	"github.com/xabridge/xabridge/internal/startup"
	"github.com/xabridge/xabridge/internal/strand"
	"github.com/xabridge/xabridge/recovery"
)

// The operator's promise: after kill -9 of a process running
// `xabridge demo transfer`, one `xabridge recover --min-age 0s` leaves no
// prepared branch of that node, and the demo's invariants hold.
func TestKillDemoThenRecover(t *testing.T) {
	r := newDemoRig(t, "kd")
	bin, pg, my, prefix := r.bin, r.pg, r.my, r.prefix
	node := "kd-" + randHex(3)
	logDir := t.TempDir()

	for round := 0; round < 3; round++ {
		cmd := exec.Command(bin, "demo", "transfer", "--count", "1000000", "--concurrency", "8",
			"--table-prefix", prefix, "--node-id", node, "--log-dir", logDir)
		cmd.Env = append(os.Environ(), "XABRIDGE_PG="+pg, "XABRIDGE_MYSQL="+my)
		cmd.Stdout, cmd.Stderr = os.Stderr, os.Stderr
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		// Let it run until some transfers have committed (a condition, polled).
		r.waitTransfers(t, cmd, 100*(round+1), 60*time.Second)
		if err := cmd.Process.Signal(syscall.SIGKILL); err != nil {
			t.Fatal(err)
		}
		err := cmd.Wait()
		if ws, ok := cmd.ProcessState.Sys().(syscall.WaitStatus); !ok || !ws.Signaled() || ws.Signal() != syscall.SIGKILL {
			t.Fatalf("round %d: demo did not die by SIGKILL: %v", round, err)
		}

		// Before recovery the check may not judge: branches the kill left
		// prepared make it "in doubt" (exit 3), never a violation (exit 1).
		out, errOut, code := cli(t, "demo", "check", "--pg", pg, "--mysql", my, "--table-prefix", prefix, "--nodes", node)
		switch {
		case code == exitInDoubt && strings.Contains(out, "still prepared"):
			t.Logf("round %d: before recover: %s", round, firstLine(out, "in doubt"))
		case code != exitOK:
			t.Fatalf("round %d: demo check before recover: exit %d, want 0 or 3 (in doubt)\n%s%s", round, code, out, errOut)
		}
		args := []string{"--node-id", node, "--log-dir", logDir, "--resource", "pg=" + pg, "--resource", "mysql=" + my}
		out, errOut, code = cli(t, append(args, "recover", "--min-age", "0s")...)
		if code != exitOK {
			t.Fatalf("round %d: recover exit %d\n%s%s", round, code, out, errOut)
		}
		resolved := strings.Count(out, "committed\n") + strings.Count(out, "rolled back\n")
		t.Logf("round %d: recover resolved %d branch(es)", round, resolved)
		out, errOut, code = cli(t, append(args, "list")...)
		if code != exitOK || strings.Contains(out, node) {
			t.Fatalf("round %d: branches of %s remain after recover (exit %d)\n%s%s", round, node, code, out, errOut)
		}
		out, errOut, code = cli(t, "demo", "check", "--pg", pg, "--mysql", my, "--table-prefix", prefix, "--nodes", node)
		if code != exitOK {
			t.Fatalf("round %d: demo invariants violated (exit %d)\n%s%s", round, code, out, errOut)
		}
		t.Logf("round %d: %s", round, strings.ReplaceAll(strings.TrimSpace(out), "\n", "; "))
	}
}

// The restart fast path: after kill -9 of a running `xabridge demo
// transfer`, the same demo started again (same --node-id and --log-dir)
// rolls back what the killed one left undecided before its first transfer,
// without waiting for the fence (the 30s transaction timeout). Then a plain
// `xabridge recover` (no --min-age: it still waits for the fence) finds
// nothing left to wait for, and the invariants hold.
func TestKillDemoThenRestart(t *testing.T) {
	r := newDemoRig(t, "kr")
	bin, pg, my, prefix, b := r.bin, r.pg, r.my, r.prefix, r.b
	node := "kr-" + randHex(3)
	logDir := t.TempDir()
	ctx := context.Background()
	db := []string{"--pg", pg, "--mysql", my, "--table-prefix", prefix, "--node-id", node, "--log-dir", logDir}

	// Until one kill left prepared branches behind (most do: 16 workers
	// spend much of a transfer prepared), at most 5 rounds.
	stranded := 0
	for round := 0; round < 5 && stranded == 0; round++ {
		args := append([]string{"demo", "transfer", "--count", "1000000", "--concurrency", "16"}, db...)
		if round > 0 {
			args = append(args, "--reset=false")
		}
		cmd := exec.Command(bin, args...)
		cmd.Stdout, cmd.Stderr = os.Stderr, os.Stderr
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		r.waitTransfers(t, cmd, 100*(round+1), 60*time.Second)
		if err := cmd.Process.Signal(syscall.SIGKILL); err != nil {
			t.Fatal(err)
		}
		_ = cmd.Wait()
		if ws, ok := cmd.ProcessState.Sys().(syscall.WaitStatus); !ok || !ws.Signaled() || ws.Signal() != syscall.SIGKILL {
			t.Fatalf("round %d: demo did not die by SIGKILL", round)
		}
		killed := time.Now()
		n, err := startup.InDoubt(ctx, node, b.PG, b.My)
		if err != nil {
			t.Fatal(err)
		}
		stranded += n

		// The restart: a short run on the same tables, node and log.
		out, errOut, code := cli(t, append([]string{"demo", "transfer", "--count", "20", "--concurrency", "4", "--reset=false"}, db...)...)
		if code != exitOK {
			t.Fatalf("round %d: restarted demo exit %d\n%s%s", round, code, out, errOut)
		}
		if stranded > 0 && !strings.Contains(out, "start-up recovery of node "+node) {
			t.Errorf("round %d: %d branches were prepared, but the restarted demo reported no start-up recovery:\n%s", round, stranded, out)
		}
		t.Logf("round %d: %d prepared branches at the kill; restarted demo: %s", round, stranded, firstLine(out, "start-up recovery"))

		// recover without --min-age: within the fence of every killed
		// transaction still (the demo's timeout is 30s), it would leave an
		// orphan alone. It may finish commit decisions the restarted demo
		// closed before resuming.
		if since := time.Since(killed); since > 25*time.Second {
			t.Fatalf("round %d: too slow to tell the fast path from the fence (%v since the kill)", round, since)
		}
		rargs := []string{"--node-id", node, "--log-dir", logDir, "--resource", "pg=" + pg, "--resource", "mysql=" + my}
		out, errOut, code = cli(t, append(rargs, "recover")...)
		if code != exitOK {
			t.Fatalf("round %d: recover (fence kept) exit %d: the restart left branches in doubt\n%s%s", round, code, out, errOut)
		}
		out, errOut, code = cli(t, append(rargs, "list")...)
		if code != exitOK || strings.Contains(out, node) {
			t.Fatalf("round %d: branches of %s remain after the restart (exit %d)\n%s%s", round, node, code, out, errOut)
		}
		out, errOut, code = cli(t, "demo", "check", "--pg", pg, "--mysql", my, "--table-prefix", prefix, "--nodes", node)
		if code != exitOK {
			t.Fatalf("round %d: demo invariants violated (exit %d)\n%s%s", round, code, out, errOut)
		}
	}
	if stranded == 0 {
		t.Fatal("no kill in 5 rounds left a prepared branch: the restart path was not exercised")
	}
}

// firstLine returns the first line of s containing sub, or "".
func firstLine(s, sub string) string {
	for _, l := range strings.Split(s, "\n") {
		if strings.Contains(l, sub) {
			return l
		}
	}
	return ""
}

// Two demos with one --node-id run from two directories (two decision
// logs) on the same databases: the second's start-up pass would roll back
// the first's in-flight prepared branches. It is refused instead, with a
// clear error naming the node, a resource and the lock's holder, exit 2,
// before it opens a log or changes anything; the first runs on and, once
// it is killed and recovered, the money is conserved. Then the same
// second demo, started after the kill, takes the node (the servers
// released the dead process's lock) and runs.
func TestTwoDemosOneNodeID(t *testing.T) {
	r := newDemoRig(t, "tw")
	bin, pg, my, prefix, b := r.bin, r.pg, r.my, r.prefix, r.b
	ctx := context.Background()
	node := "tw-" + randHex(3)
	logA, logB := t.TempDir(), filepath.Join(t.TempDir(), "b")

	first := exec.Command(bin, "demo", "transfer", "--count", "1000000", "--concurrency", "8",
		"--pg", pg, "--mysql", my, "--table-prefix", prefix, "--node-id", node, "--log-dir", logA)
	first.Stdout, first.Stderr = os.Stderr, os.Stderr
	if err := first.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { _ = first.Process.Kill(); _ = first.Wait() }()
	r.waitTransfers(t, nil, 100, 60*time.Second)

	db := []string{"--pg", pg, "--mysql", my, "--table-prefix", prefix, "--node-id", node}
	start := time.Now()
	out, errOut, code := cli(t, append([]string{"demo", "transfer", "--count", "20", "--concurrency", "4", "--reset=false", "--log-dir", logB}, db...)...)
	took := time.Since(start)
	if code != exitUsage {
		t.Fatalf("the second demo with node id %s: exit %d, want %d (refused)\n%s%s", node, code, exitUsage, out, errOut)
	}
	for _, s := range []string{"node id " + node + " is in use by another live coordinator (lock held by ", "on resource ", "each coordinator needs its own node id"} {
		if !strings.Contains(errOut, s) {
			t.Errorf("the refusal does not say %q:\n%s", s, errOut)
		}
	}
	if strings.Contains(out, "start-up recovery") {
		t.Errorf("the refused demo ran a start-up recovery:\n%s", out)
	}
	if _, err := os.Stat(logB); !os.IsNotExist(err) {
		t.Errorf("the refused demo's log directory: %v; want it never created", err)
	}
	t.Logf("second demo refused in %v: %s", took.Round(time.Millisecond), strings.TrimSpace(errOut))
	if err := first.Process.Signal(syscall.Signal(0)); err != nil {
		t.Fatalf("the first demo is gone after the refusal: %v", err)
	}
	// The first still commits transfers after the refusal.
	r.waitTransfers(t, nil, r.transfers()+50, 30*time.Second)

	// Kill the first; the second demo now starts (same node, its own log)
	// and runs. The dead one's in-doubt branches are its log's to settle:
	// recover with the first's log, then check the money.
	if err := first.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	_ = first.Wait()
	killed := time.Now()
	// How long the servers keep a SIGKILLed process's node lock: polled
	// from the moment it is reaped.
	var released time.Duration
	for {
		locks, err := recovery.LockNode(ctx, node, []drivers.Resource{b.PG, b.My}, 0, nil)
		if err == nil && locks.Held() {
			released = time.Since(killed)
			_ = locks.Close()
			break
		}
		if err == nil {
			_ = locks.Close()
		}
		if time.Since(killed) > 10*time.Second {
			t.Fatalf("the killed demo's node lock was not released within 10s: %v", err)
		}
		time.Sleep(time.Millisecond)
	}
	t.Logf("the killed demo's node lock released by both servers %v after it was reaped", released.Round(time.Microsecond))
	rargs := []string{"--node-id", node, "--log-dir", logA, "--resource", "pg=" + pg, "--resource", "mysql=" + my}
	if out, errOut, code := cli(t, append(rargs, "recover", "--min-age", "0s")...); code != exitOK {
		t.Fatalf("recover with the first demo's log: exit %d\n%s%s", code, out, errOut)
	}
	out, errOut, code = cli(t, append([]string{"demo", "transfer", "--count", "20", "--concurrency", "4", "--reset=false", "--log-dir", logB}, db...)...)
	if code != exitOK {
		t.Fatalf("the second demo after the first was killed: exit %d\n%s%s", code, out, errOut)
	}
	t.Logf("second demo ran %v after the kill", time.Since(killed).Round(time.Millisecond))
	out, errOut, code = cli(t, "demo", "check", "--pg", pg, "--mysql", my, "--table-prefix", prefix, "--nodes", node)
	if code != exitOK {
		t.Fatalf("demo invariants violated (exit %d)\n%s%s", code, out, errOut)
	}
	t.Logf("%s", strings.ReplaceAll(strings.TrimSpace(out), "\n", "; "))
}

// An interrupted demo (SIGTERM) stops starting transfers, lets those in
// flight finish, and checks the invariants: exit 0, nothing left prepared.
func TestDemoInterruptedCleanly(t *testing.T) {
	r := newDemoRig(t, "di")
	bin, pg, my, prefix := r.bin, r.pg, r.my, r.prefix
	node := "di-" + randHex(3)

	var out strings.Builder
	cmd := exec.Command(bin, "demo", "transfer", "--count", "1000000", "--concurrency", "8",
		"--table-prefix", prefix, "--node-id", node, "--log-dir", t.TempDir())
	cmd.Env = append(os.Environ(), "XABRIDGE_PG="+pg, "XABRIDGE_MYSQL="+my)
	cmd.Stdout, cmd.Stderr = &out, os.Stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	r.waitTransfers(t, cmd, 100, 60*time.Second)
	if err := cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	if err := cmd.Wait(); err != nil {
		t.Fatalf("interrupted demo: %v, want exit 0\n%s", err, out.String())
	}
	for _, want := range []string{"interrupted", "ok: conserved", "ok: atomic"} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("interrupted demo's output lacks %q:\n%s", want, out.String())
		}
	}
	args := []string{"--node-id", node, "--resource", "pg=" + pg, "--resource", "mysql=" + my, "--log-dir", t.TempDir()}
	if lo, errOut, code := cli(t, append(args, "list", "--all")...); strings.Contains(lo, node) {
		t.Errorf("branches of %s left prepared after a clean stop (exit %d):\n%s%s", node, code, lo, errOut)
	}
}

// cliBinary builds the xabridge command, for tests that run it as a real
// process (to kill it, or because it re-executes itself).
func cliBinary(t *testing.T) string {
	t.Helper()
	bin := filepath.Join(t.TempDir(), "xabridge")
	if out, err := exec.Command("go", "build", "-o", bin, ".").CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	return bin
}

// demoRig is what the tests that run `xabridge demo transfer` as a real
// process share: the binary and the demo's tables under a prefix of the
// test's own, dropped at its end.
type demoRig struct {
	bin, pg, my, prefix string
	b                   *bank.Bank
}

func newDemoRig(t *testing.T, tag string) *demoRig {
	t.Helper()
	r := &demoRig{bin: cliBinary(t), pg: dbtest.PG(t), my: dbtest.MySQL(t), prefix: "xab_" + tag + "_" + randHex(3)}
	b, err := bank.Open(context.Background(), r.pg, r.my, 2)
	if err != nil {
		t.Fatal(err)
	}
	if err := b.SetPrefix(r.prefix); err != nil {
		b.Close()
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = b.Drop(context.Background()); b.Close() })
	r.b = b
	return r
}

// transfers is the number of transfers committed on PostgreSQL (-1 when it
// cannot be read).
func (r *demoRig) transfers() int {
	var n int
	if err := r.b.PGPool.QueryRow(context.Background(), "SELECT count(*) FROM "+r.b.Table("transfers")).Scan(&n); err != nil {
		return -1
	}
	return n
}

// waitTransfers polls until at least want transfers have committed; after
// within it kills cmd (if any) and fails the test.
func (r *demoRig) waitTransfers(t *testing.T, cmd *exec.Cmd, want int, within time.Duration) {
	t.Helper()
	for deadline := time.Now().Add(within); r.transfers() < want; time.Sleep(20 * time.Millisecond) {
		if time.Now().After(deadline) {
			if cmd != nil {
				_ = cmd.Process.Kill()
				_ = cmd.Wait()
			}
			t.Fatalf("the demo did not commit %d transfers in %v (%d so far)", want, within, r.transfers())
		}
	}
}

// A consistent state is judged at once even while another node's branch is
// prepared; a broken one is in doubt (exit 3) while a branch that could
// explain it is prepared, and demo check --nodes counts only the named
// nodes' branches as such: with the demo's own node named, an unrelated
// branch no longer holds the verdict (exit 1). A bad node id is a usage
// error.
func TestDemoCheckNodes(t *testing.T) {
	r := newDemoRig(t, "cn")
	node := "cn-" + randHex(3)
	db := []string{"--pg", r.pg, "--mysql", r.my, "--table-prefix", r.prefix}
	if out, errOut, code := cli(t, append([]string{"demo", "transfer", "--count", "5", "--concurrency", "1", "--node-id", node, "--log-dir", t.TempDir()}, db...)...); code != exitOK {
		t.Fatalf("demo transfer: exit %d\n%s%s", code, out, errOut)
	}
	ctx := context.Background()
	now := time.Now()
	other := strand.GlobalID("cx-"+randHex(3), now, now.Add(time.Minute), 1)
	xid := drivers.XID{Global: other, Branch: 1}
	if err := strand.Prepare(ctx, r.b.PG, xid, "SELECT 1"); err != nil {
		t.Fatal(err)
	}
	defer func() { _ = r.b.PG.RollbackPrepared(context.Background(), xid) }()
	check := func(args ...string) (int, string) {
		out, errOut, code := cli(t, append(append([]string{"demo", "check"}, args...), db...)...)
		return code, out + errOut
	}

	if code, out := check(); code != exitOK {
		t.Errorf("consistent state, another node's branch prepared: exit %d, want %d\n%s", code, exitOK, out)
	}
	// A transfer in PostgreSQL only: broken.
	if _, err := r.b.PGPool.Exec(ctx, "INSERT INTO "+r.b.Table("transfers")+" (id, amount) VALUES ('cn-half', 1)"); err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		args []string
		want int
	}{
		{nil, exitInDoubt}, // any node's branch may explain it
		{[]string{"--nodes", other.Node()}, exitInDoubt}, // the node with the branch
		{[]string{"--nodes", node}, exitError},           // nothing of the demo's node prepared: violated
	} {
		if code, out := check(c.args...); code != c.want {
			t.Errorf("broken state, check %v: exit %d, want %d\n%s", c.args, code, c.want, out)
		}
	}
	if code, out := check("--nodes", "Bad!"); code != exitUsage || !strings.Contains(out, "--nodes") {
		t.Errorf("check --nodes Bad!: exit %d, want %d naming --nodes: %s", code, exitUsage, out)
	}
}
