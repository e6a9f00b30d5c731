package drivertest

import (
	"context"
	"errors"
	"testing"

	"github.com/xabridge/xabridge/drivers"
)

// SessionEndHarness is what an adapter's tests hand to RunSessionEnd.
type SessionEndHarness struct {
	// Dead, Live and Claimant are three resources on one database, each
	// with sessions of its own: a paused coordinator incarnation's, another
	// live incarnation's of the same node, and a claimant's. Each must
	// implement drivers.SessionEnder.
	Dead, Live, Claimant drivers.Resource
	// Write makes an active branch read-write (a write of row k of a test
	// table; distinct k never conflict).
	Write func(ctx context.Context, b drivers.Branch, k int) error
}

// RunSessionEnd checks drivers.SessionEnder: EndSessions ends the sessions
// of one mark, after which their prepared branches can be finished from
// another session at once; a branch of another mark keeps its session and
// commits on it; a second EndSessions finds nothing; malformed marks are
// refused.
func RunSessionEnd(t *testing.T, h SessionEndHarness) {
	t.Helper()
	enders := map[string]drivers.SessionEnder{}
	for name, r := range map[string]drivers.Resource{"Dead": h.Dead, "Live": h.Live, "Claimant": h.Claimant} {
		se, ok := r.(drivers.SessionEnder)
		if !ok {
			t.Fatalf("drivertest: %s (%T) does not implement drivers.SessionEnder", name, r)
		}
		enders[name] = se
	}
	if h.Write == nil {
		t.Fatal("drivertest: SessionEndHarness.Write is required")
	}
	ctx := ctxT(t)
	dead := drivers.SessionMark(NodeID, "dead-incarnation")
	live := drivers.SessionMark(NodeID, "live-incarnation")
	noErr(t, "MarkSessions(dead)", enders["Dead"].MarkSessions(dead))
	noErr(t, "MarkSessions(live)", enders["Live"].MarkSessions(live))
	t.Cleanup(func() {
		_ = enders["Dead"].MarkSessions("")
		_ = enders["Live"].MarkSessions("")
	})

	prepared := func(r drivers.Resource, k int) drivers.Branch {
		t.Helper()
		b, err := r.Begin(ctx, NewXID())
		noErr(t, "Begin", err)
		noErr(t, "write", h.Write(ctx, b, k))
		v, err := b.Prepare(ctx)
		noErr(t, "Prepare", err)
		if v != drivers.VoteCommit {
			t.Fatalf("Prepare voted %v; want commit", v)
		}
		return b
	}
	bd := prepared(h.Dead, 1)
	bl := prepared(h.Live, 2)
	defer func() { _ = bd.Close(); _ = bl.Close() }()

	n, err := enders["Claimant"].EndSessions(ctx, dead)
	noErr(t, "EndSessions(dead)", err)
	if n < 1 {
		t.Fatalf("EndSessions(dead) ended %d sessions; want at least the prepared branch's", n)
	}
	noErr(t, "CommitPrepared of the ended incarnation's branch from the claimant", h.Claimant.CommitPrepared(ctx, bd.XID()))
	noErr(t, "Commit of the live incarnation's branch on its own session", bl.Commit(ctx))
	if n, err := enders["Claimant"].EndSessions(ctx, dead); err != nil || n != 0 {
		t.Errorf("second EndSessions(dead) = %d, %v; want 0, nil", n, err)
	}
	for _, bad := range []string{"", "short", "0123456789ABCDEF", "x'); KILL 1; --xx"} {
		if _, err := enders["Claimant"].EndSessions(ctx, bad); err == nil {
			t.Errorf("EndSessions(%q) accepted", bad)
		}
		if bad != "" {
			if err := enders["Dead"].MarkSessions(bad); err == nil {
				t.Errorf("MarkSessions(%q) accepted", bad)
			}
		}
	}
	if err := h.Claimant.CommitPrepared(ctx, bl.XID()); err != nil && !errors.Is(err, drivers.ErrNotFound) {
		t.Errorf("the live branch, committed on its session, by XID: %v; want nil or ErrNotFound", err)
	}
}
