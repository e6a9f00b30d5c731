package replica

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/xabridge/xabridge/drivers"
	"github.com/xabridge/xabridge/internal/bank"
	"github.com/xabridge/xabridge/internal/dbtest"
	"github.com/xabridge/xabridge/postgres"
	"github.com/xabridge/xabridge/xa"
)

// openFile opens a replica of id with a file log in logDir (no shared
// store), on connections of its own.
func (w *world) openFile(id, logDir string, hook func(xa.Step, xa.StepInfo)) (*node, error) {
	t := w.t
	t.Helper()
	ctx := ctxT(t)
	b, err := bank.Open(ctx, dbtest.PG(t), dbtest.MySQL(t), 8)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(b.Close)
	if err := b.SetPrefix(w.prefix); err != nil {
		t.Fatal(err)
	}
	r, err := Open(ctx, Config{
		Coordinator: xa.Config{NodeID: id, LogDir: logDir, Resources: []drivers.Resource{b.PG, b.My}, Hook: hook, Timeout: time.Minute},
		Settle:      50 * time.Millisecond,
	})
	if err != nil {
		return nil, err
	}
	n := &node{id: id, r: r, b: b}
	t.Cleanup(func() { n.close() })
	return n, nil
}

// TestSameNodeTwoFileLogs is the operator mistake of issue 14 that the
// restart fast path made dangerous: two live replicas with one node id and
// two file logs (two directories) on the same databases. The first one has
// transfers in flight, prepared and undecided; the second is refused at
// Open with a clear error naming the node, a resource and the lock's
// holder, and changes nothing: no branch of the first is rolled back (its
// fast path would have), its log directory is not even created, and the
// first's transfers then commit with the money conserved. Once the first
// closes, the second opens.
func TestSameNodeTwoFileLogs(t *testing.T) {
	w := newWorld(t)
	stop := newStopper()
	id := "twin-" + suffix()
	first, err := w.openFile(id, filepath.Join(t.TempDir(), "a"), stop.hook)
	if err != nil {
		t.Fatalf("open the first replica: %v", err)
	}
	results, gs := runStopped(t, first, stop, []stopAt{{step: xa.StepAllPrepared}, {step: xa.StepAllPrepared}}, 1)
	released := false
	defer func() {
		if !released {
			close(stop.release)
		}
	}()
	before, err := w.prepared(id)
	if err != nil || before != 2*len(gs) {
		t.Fatalf("%d branches of %s prepared (%v), want %d", before, id, err, 2*len(gs))
	}

	dirB := filepath.Join(t.TempDir(), "b")
	start := time.Now()
	second, err := w.openFile(id, dirB, nil)
	if second != nil {
		t.Fatal("the second replica with the same node id opened")
	}
	if !errors.Is(err, drivers.ErrNodeInUse) {
		t.Fatalf("open the second replica: %v; want ErrNodeInUse", err)
	}
	var nie *drivers.NodeInUseError
	if !errors.As(err, &nie) || nie.Holder == "" {
		t.Errorf("the refusal does not name the lock's holder: %v", err)
	}
	for _, s := range []string{"node id " + id + " is in use by another live coordinator", "lock held by ", "on resource ", "each coordinator needs its own node id"} {
		if !strings.Contains(err.Error(), s) {
			t.Errorf("error %q does not say %q", err, s)
		}
	}
	t.Logf("refused after %v: %v", time.Since(start).Round(time.Millisecond), err)

	// Nothing changed: the first's branches are all still prepared (a
	// refused Open returns before it starts any pass or goroutine, so
	// nothing of the second can act later).
	if n, err := w.prepared(id); err != nil || n != before {
		t.Fatalf("after the refusal %d branches of %s prepared (%v), want all %d", n, id, err, before)
	}
	if _, err := os.Stat(dirB); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("the refused replica's log directory: %v; want it never created", err)
	}

	// The first finishes its transfers: committed, money conserved.
	close(stop.release)
	released = true
	for range gs {
		r := <-results
		if r.err != nil {
			t.Errorf("transfer %s of the first replica: %v", r.id, r.err)
		} else if pg, my := w.transferIn(r.id); !pg || !my {
			t.Errorf("transfer %s: in postgres %v, in mysql %v; want both", r.id, pg, my)
		}
	}
	first.close()
	w.assertInvariants(id)

	// The node is free again: the second opens.
	second, err = w.openFile(id, dirB, nil)
	if err != nil {
		t.Fatalf("open the second replica after the first closed: %v", err)
	}
	second.close()
}

// A node lock lost while the replica runs (its PostgreSQL session
// terminated) turns the restart fast path off (Held false) until a pass
// takes the lock again.
func TestNodeLockLostAndRetaken(t *testing.T) {
	ctx := ctxT(t)
	w := newWorld(t)
	id := "lost-" + suffix()
	n, err := w.openFile(id, filepath.Join(t.TempDir(), "a"), nil)
	if err != nil {
		t.Fatal(err)
	}
	if !n.r.locks.Held() {
		t.Fatal("the node lock is not held after Open")
	}
	ns, key := postgres.NodeLockKey(id)
	var pid int
	if err := w.pool.QueryRow(ctx, `SELECT pid FROM pg_locks WHERE locktype = 'advisory' AND granted
		AND classid = $1::bigint::oid AND objid = $2::bigint::oid AND objsubid = 2`, int64(ns), int64(uint32(key))).Scan(&pid); err != nil {
		t.Fatalf("the node lock in pg_locks: %v", err)
	}
	if _, err := w.pool.Exec(ctx, "SELECT pg_terminate_backend($1)", pid); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 10*time.Second, "the lost lock to be seen", func() bool { return !n.r.locks.Held() })
	if _, err := n.r.Pass(ctx); err != nil {
		t.Fatalf("pass: %v", err)
	}
	if !n.r.locks.Held() {
		t.Fatalf("the node lock was not taken again by a pass (missing: %v)", n.r.locks.Missing())
	}
}
