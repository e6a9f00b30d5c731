package postgres_test

import (
	"errors"
	"fmt"
	"math/rand/v2"
	"strings"
	"testing"
	"time"

	"github.com/xabridge/xabridge/drivers"
	"github.com/xabridge/xabridge/postgres"
)

// TestNodeLock: a node lock is exclusive across sessions (a second one is
// refused with ErrNodeInUse naming the holder's pid), visible in pg_locks
// under the documented keys, released by Close, and released by the server
// when the holding session is terminated, which Lost reports.
func TestNodeLock(t *testing.T) {
	e := newEnv(t)
	ctx := ctxT(t)
	node := fmt.Sprintf("lk-%08x", rand.Uint32())
	other := postgres.New("pg-other", e.admin) // another process's resource: its own sessions

	lk, err := e.r.LockNode(ctx, node)
	if err != nil {
		t.Fatalf("LockNode: %v", err)
	}
	ns, key := postgres.NodeLockKey(node)
	pid := e.queryInt(`SELECT pid FROM pg_locks WHERE locktype = 'advisory' AND granted
		AND classid = $1::bigint::oid AND objid = $2::bigint::oid AND objsubid = 2`, int64(ns), int64(uint32(key)))

	for i, c := range []struct {
		name string
		node string
		want error
	}{
		{"same node, another session", node, drivers.ErrNodeInUse},
		{"another node", node + "-b", nil},
	} {
		t.Run(c.name, func(t *testing.T) {
			lk2, err := other.LockNode(ctx, c.node)
			if !errors.Is(err, c.want) {
				t.Fatalf("case %d: LockNode(%s) from another session: %v; want %v", i, c.node, err, c.want)
			}
			if err == nil {
				_ = lk2.Close()
				return
			}
			msg := err.Error()
			for _, s := range []string{"node id " + node + " is in use", fmt.Sprintf("pid %d", pid), "resource pg-other", "each coordinator needs its own node id"} {
				if !strings.Contains(msg, s) {
					t.Errorf("error %q does not say %q", msg, s)
				}
			}
		})
	}

	// Close releases it: another session takes it at once.
	if err := lk.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	select {
	case <-lk.Lost():
		t.Fatal("Lost fired for a lock closed by its owner")
	default:
	}
	lk2, err := other.LockNode(ctx, node)
	if err != nil {
		t.Fatalf("LockNode after Close: %v", err)
	}
	defer lk2.Close()

	// Its session terminated: the server releases it, Lost fires.
	pid2 := e.queryInt(`SELECT pid FROM pg_locks WHERE locktype = 'advisory' AND granted
		AND classid = $1::bigint::oid AND objid = $2::bigint::oid AND objsubid = 2`, int64(ns), int64(uint32(key)))
	e.terminate(pid2)
	killed := time.Now()
	select {
	case <-lk2.Lost():
		t.Logf("Lost fired %v after pg_terminate_backend", time.Since(killed).Round(time.Millisecond))
	case <-time.After(10 * time.Second):
		t.Fatal("Lost did not fire within 10s of the lock's session being terminated")
	}
	lk3, err := e.r.LockNode(ctx, node)
	if err != nil {
		t.Fatalf("LockNode after the holder was terminated: %v", err)
	}
	if err := lk3.Close(); err != nil {
		t.Fatal(err)
	}
	if err := lk2.Close(); err != nil { // the lost one: idempotent, no error
		t.Errorf("Close of a lost lock: %v", err)
	}
}

// TestNodeLockBadNode: an invalid node id is refused before any session is
// used.
func TestNodeLockBadNode(t *testing.T) {
	e := newEnv(t)
	for _, node := range []string{"", "Upper", "x'; SELECT 1; --", strings.Repeat("a", 25)} {
		if lk, err := e.r.LockNode(ctxT(t), node); err == nil {
			_ = lk.Close()
			t.Errorf("LockNode(%q) = nil error; want a refusal", node)
		}
	}
	e.assertPoolClean()
}
