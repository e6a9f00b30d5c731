package drivertest

import (
	"errors"
	"fmt"
	"math/rand/v2"
	"strings"
	"testing"
	"time"

	"github.com/xabridge/xabridge/drivers"
)

// NodeLockHarness is what an adapter's tests hand to RunNodeLock.
type NodeLockHarness struct {
	// Mine and Other are two resources on the same database that use
	// sessions of their own, as two coordinator processes would. Other's
	// name is the one a refusal must name.
	Mine, Other drivers.NodeLocker
	OtherName   string
	// Holder returns how a refusal names the session holding node's lock
	// (PostgreSQL "pid N", MariaDB "connection N"), read from the server.
	Holder func(t *testing.T, node string) string
	// Held reports whether the server sees node's lock held by any session.
	Held func(t *testing.T, node string) bool
	// KillHolder ends the session holding node's lock from outside, as a
	// crash or an operator's KILL would, and returns once it is gone.
	KillHolder func(t *testing.T, node string)
}

// RunNodeLock checks the node lock of drivers.NodeLocker: exclusive across
// sessions (a second one is refused with ErrNodeInUse naming the holder and
// the resource), per node id, released by Close without Lost firing, and
// released by the server when the holding session ends, which Lost reports.
func RunNodeLock(t *testing.T, h NodeLockHarness) {
	t.Helper()
	if h.Mine == nil || h.Other == nil || h.Holder == nil || h.Held == nil || h.KillHolder == nil {
		t.Fatal("drivertest: every NodeLockHarness field is required")
	}
	ctx := ctxT(t)
	node := fmt.Sprintf("lk-%08x", rand.Uint32())

	lk, err := h.Mine.LockNode(ctx, node)
	if err != nil {
		t.Fatalf("LockNode: %v", err)
	}
	holder := h.Holder(t, node)
	for i, c := range []struct {
		name string
		node string
		want error
	}{
		{"same node, another session", node, drivers.ErrNodeInUse},
		{"another node", node + "-b", nil},
	} {
		t.Run(c.name, func(t *testing.T) {
			lk2, err := h.Other.LockNode(ctx, c.node)
			if !errors.Is(err, c.want) {
				t.Fatalf("case %d: LockNode(%s) from another session: %v; want %v", i, c.node, err, c.want)
			}
			if err == nil {
				_ = lk2.Close()
				return
			}
			msg := err.Error()
			for _, s := range []string{"node id " + node + " is in use", holder, "resource " + h.OtherName, "each coordinator needs its own node id"} {
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
	if h.Held(t, node) {
		t.Fatal("the lock is still held after Close")
	}
	lk2, err := h.Other.LockNode(ctx, node)
	if err != nil {
		t.Fatalf("LockNode after Close: %v", err)
	}
	defer lk2.Close()

	// Its session ended from outside: the server releases it, Lost fires.
	h.KillHolder(t, node)
	killed := time.Now()
	select {
	case <-lk2.Lost():
		t.Logf("Lost fired %v after the holding session was ended", time.Since(killed).Round(time.Millisecond))
	case <-time.After(10 * time.Second):
		t.Fatal("Lost did not fire within 10s of the lock's session being ended")
	}
	// A server may take a moment to release a killed session's locks.
	var lk3 drivers.NodeLock
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		if lk3, err = h.Mine.LockNode(ctx, node); !errors.Is(err, drivers.ErrNodeInUse) || time.Now().After(deadline) {
			break
		}
	}
	if err != nil {
		t.Fatalf("LockNode after the holder was ended: %v", err)
	}
	t.Logf("lock taken again %v after the holder was ended", time.Since(killed).Round(time.Millisecond))
	if err := lk3.Close(); err != nil {
		t.Fatal(err)
	}
	if err := lk2.Close(); err != nil { // the lost one: idempotent, no error
		t.Errorf("Close of a lost lock: %v", err)
	}
}
