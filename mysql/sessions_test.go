package mysql

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/xabridge/xabridge/drivers"
	"github.com/xabridge/xabridge/drivers/drivertest"
)

// prepareOn begins a branch on e's resource, updates row id of tbl and
// prepares it: the branch's session stays open, pinned, holding it.
func prepareOn(t *testing.T, e *env, tbl string, id int) *branch {
	t.Helper()
	ctx := ctxT(t)
	b := e.begin(ctx)
	if _, err := b.user.ExecContext(ctx, fmt.Sprintf("UPDATE %s SET v = v + 1 WHERE id = %d", tbl, id)); err != nil {
		t.Fatalf("UPDATE: %v", err)
	}
	if v, err := b.Prepare(ctx); err != nil || v != drivers.VoteCommit {
		t.Fatalf("Prepare = %v, %v", v, err)
	}
	return b
}

// holdsLock reports whether session id holds mark's session lock.
func (e *env) holdsLock(mark string, id uint64) bool {
	e.t.Helper()
	return e.queryInt(fmt.Sprintf("SELECT COALESCE(IS_USED_LOCK('%s%s:%d'), 0)", SessionLockPrefix, mark, id)) == int64(id)
}

// TestEndSessions: a prepared branch of a marked incarnation, whose session
// is still open, cannot be finished from another session (XAER_NOTA:
// ErrBusy); EndSessions kills exactly the sessions of that mark, after
// which the branch can be finished. A session of another incarnation of the
// same node, an unmarked session, and one holding a lock that names another
// session under the mark are left alone.
func TestEndSessions(t *testing.T) {
	e := newEnv(t, 4)
	tbl := e.table("end")
	ctx := ctxT(t)
	dead := drivers.SessionMark("node-x", "0011223344556677")
	live := drivers.SessionMark("node-x", "8899aabbccddeeff") // the same node, restarted
	if err := e.r.MarkSessions(dead); err != nil {
		t.Fatal(err)
	}
	victim := prepareOn(t, e, tbl, 1)
	if !e.holdsLock(dead, victim.owner) {
		t.Fatalf("the branch's session %d does not hold its mark's lock", victim.owner)
	}

	other := &env{t: t, cfg: e.cfg, db: openDB(t, e.cfg, 2), admin: e.admin}
	other.r = New("mysql-live", other.db)
	if err := other.r.MarkSessions(live); err != nil {
		t.Fatal(err)
	}
	bystander := prepareOn(t, other, tbl, 2)

	// An unmarked session, and one holding a lock named like the dead
	// mark's but for another session's id (it is not that session).
	plain, err := e.admin.Conn(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = plain.Close() }()
	plainID := connID(t, plain)
	forger, err := e.admin.Conn(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer discard(forger) // it holds a lock: never back to the pool
	forgerID := connID(t, forger)
	if _, err := forger.ExecContext(ctx, fmt.Sprintf("DO GET_LOCK('%s%s:%d', 0)", SessionLockPrefix, dead, bystander.owner)); err != nil {
		t.Fatal(err)
	}

	claimant := New("mysql-claimant", openDB(t, e.cfg, 2))
	if err := claimant.CommitPrepared(ctx, victim.xid); !errors.Is(err, drivers.ErrBusy) {
		t.Fatalf("CommitPrepared while the owner is connected = %v; want ErrBusy", err)
	}
	start := time.Now()
	n, err := claimant.EndSessions(ctx, dead)
	if err != nil || n != 1 {
		t.Fatalf("EndSessions = %d, %v; want 1, nil", n, err)
	}
	t.Logf("EndSessions took %s", time.Since(start).Round(time.Millisecond))
	if e.sessionListed(victim.owner) {
		t.Errorf("the marked session %d is still listed after EndSessions returned", victim.owner)
	}
	for what, id := range map[string]uint64{"another incarnation's": bystander.owner, "an unmarked": plainID, "the forging": forgerID} {
		if !e.sessionListed(id) {
			t.Errorf("%s session %d was ended", what, id)
		}
	}
	if err := claimant.CommitPrepared(ctx, victim.xid); err != nil {
		t.Fatalf("CommitPrepared after EndSessions: %v", err)
	}
	if v := e.queryInt("SELECT v FROM " + tbl + " WHERE id = 1"); v != 1 {
		t.Errorf("row 1 = %d after the commit; want 1", v)
	}
	if err := claimant.CommitPrepared(ctx, bystander.xid); !errors.Is(err, drivers.ErrBusy) {
		t.Errorf("the other incarnation's branch: CommitPrepared = %v; want ErrBusy (its session is alive)", err)
	}
	if err := bystander.Commit(ctx); err != nil {
		t.Errorf("the other incarnation commits its own branch: %v", err)
	}
	// Nothing is left to end: a second call is a no-op.
	if n, err := claimant.EndSessions(ctx, dead); err != nil || n != 0 {
		t.Errorf("second EndSessions = %d, %v; want 0, nil", n, err)
	}
}

// TestMarkSessionsChange: a pooled session marked for one incarnation drops
// that mark when it is next pinned under another, so ending the old mark
// never ends it; "" stops marking.
func TestMarkSessionsChange(t *testing.T) {
	e := newEnv(t, 1) // one connection: every branch reuses the same session
	ctx := ctxT(t)
	first := drivers.SessionMark("node-y", "1")
	second := drivers.SessionMark("node-y", "2")
	if err := e.r.MarkSessions(first); err != nil {
		t.Fatal(err)
	}
	b := e.begin(ctx)
	id := b.owner
	if err := b.Rollback(ctx); err != nil {
		t.Fatal(err)
	}
	if !e.holdsLock(first, id) {
		t.Fatalf("session %d does not hold the first mark", id)
	}
	if err := e.r.MarkSessions(second); err != nil {
		t.Fatal(err)
	}
	b = e.begin(ctx)
	if b.owner != id {
		t.Fatalf("the pool gave session %d, want %d again", b.owner, id)
	}
	if e.holdsLock(first, id) || !e.holdsLock(second, id) {
		t.Errorf("after the mark changed, session %d holds first=%v second=%v; want false, true", id, e.holdsLock(first, id), e.holdsLock(second, id))
	}
	claimant := New("mysql-claimant", openDB(t, e.cfg, 1))
	if n, err := claimant.EndSessions(ctx, first); err != nil || n != 0 {
		t.Errorf("EndSessions(first) = %d, %v; want 0, nil", n, err)
	}
	if err := b.Rollback(ctx); err != nil {
		t.Fatal(err)
	}
	if err := e.r.MarkSessions(""); err != nil {
		t.Fatal(err)
	}
	b = e.begin(ctx)
	if e.holdsLock(second, id) {
		t.Errorf("session %d still holds a mark after marking stopped", id)
	}
	if err := b.Rollback(ctx); err != nil {
		t.Fatal(err)
	}
	for _, bad := range []string{"x", "0123456789ABCDEF", "0123456789abcdeg", "'; KILL 1; --'xx"} {
		if err := e.r.MarkSessions(bad); err == nil {
			t.Errorf("MarkSessions(%q) accepted", bad)
		}
		if _, err := claimant.EndSessions(ctx, bad); err == nil {
			t.Errorf("EndSessions(%q) accepted", bad)
		}
	}
}

// TestSessionEndConformance runs the drivers.SessionEnder conformance
// suite.
func TestSessionEndConformance(t *testing.T) {
	e := newEnv(t, 4)
	tbl := e.table("sconf")
	drivertest.RunSessionEnd(t, drivertest.SessionEndHarness{
		Dead:     e.r,
		Live:     New("mysql-live", openDB(t, e.cfg, 2)),
		Claimant: New("mysql-claimant", openDB(t, e.cfg, 2)),
		Write: func(ctx context.Context, b drivers.Branch, k int) error {
			_, err := b.(*branch).user.ExecContext(ctx, fmt.Sprintf("UPDATE %s SET v = v + 1 WHERE id = %d", tbl, k))
			return err
		},
	})
}
