package mysql

import (
	"errors"
	"fmt"
	"math/rand/v2"
	"strings"
	"testing"
	"time"

	"github.com/xabridge/xabridge/drivers"
)

// TestNodeLock: a node lock is exclusive across sessions (a second one is
// refused with ErrNodeInUse naming the holder's connection id), released
// by Close, and released by the server when the holding connection is
// KILLed, which Lost reports.
func TestNodeLock(t *testing.T) {
	e := newEnv(t, 4)
	ctx := ctxT(t)
	node := fmt.Sprintf("lk-%08x", rand.Uint32())
	name := NodeLockPrefix + node
	other := New("mysql-other", e.admin) // another process's resource: its own sessions

	lk, err := e.r.LockNode(ctx, node)
	if err != nil {
		t.Fatalf("LockNode: %v", err)
	}
	holder := e.queryInt(fmt.Sprintf("SELECT IS_USED_LOCK('%s')", name)) // name: [a-z0-9:-] only

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
			for _, s := range []string{"node id " + node + " is in use", fmt.Sprintf("connection %d", holder), "resource mysql-other", "each coordinator needs its own node id"} {
				if !strings.Contains(msg, s) {
					t.Errorf("error %q does not say %q", msg, s)
				}
			}
		})
	}

	if err := lk.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	select {
	case <-lk.Lost():
		t.Fatal("Lost fired for a lock closed by its owner")
	default:
	}
	if n := e.queryInt(fmt.Sprintf("SELECT IS_USED_LOCK('%s') IS NULL", name)); n != 1 {
		t.Fatal("the lock is still in use after Close")
	}
	lk2, err := other.LockNode(ctx, node)
	if err != nil {
		t.Fatalf("LockNode after Close: %v", err)
	}
	defer lk2.Close()

	// Its connection KILLed: the server releases it, Lost fires.
	holder2 := e.queryInt(fmt.Sprintf("SELECT IS_USED_LOCK('%s')", name))
	e.sqlExec(fmt.Sprintf("KILL %d", holder2))
	killed := time.Now()
	select {
	case <-lk2.Lost():
		t.Logf("Lost fired %v after KILL", time.Since(killed).Round(time.Millisecond))
	case <-time.After(10 * time.Second):
		t.Fatal("Lost did not fire within 10s of the lock's connection being killed")
	}
	var lk3 drivers.NodeLock
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		if lk3, err = e.r.LockNode(ctx, node); !errors.Is(err, drivers.ErrNodeInUse) || time.Now().After(deadline) {
			break
		}
	}
	if err != nil {
		t.Fatalf("LockNode after the holder was killed: %v", err)
	}
	t.Logf("lock taken again %v after KILL", time.Since(killed).Round(time.Millisecond))
	if err := lk3.Close(); err != nil {
		t.Fatal(err)
	}
	if err := lk2.Close(); err != nil {
		t.Errorf("Close of a lost lock: %v", err)
	}
}

// TestNodeLockBadNode: an invalid node id is refused before any session is
// used.
func TestNodeLockBadNode(t *testing.T) {
	e := newEnv(t, 2)
	for _, node := range []string{"", "Upper", "x'; SELECT 1; --", strings.Repeat("a", 25)} {
		if lk, err := e.r.LockNode(ctxT(t), node); err == nil {
			_ = lk.Close()
			t.Errorf("LockNode(%q) = nil error; want a refusal", node)
		}
	}
	if n := e.db.Stats().InUse; n != 0 {
		t.Errorf("%d connections in use after refusals", n)
	}
}
