package mysql

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"math/rand/v2"
	"slices"
	"strings"
	"testing"
	"time"

	mysqldriver "github.com/go-sql-driver/mysql"

	"github.com/xabridge/xabridge/drivers"
	"github.com/xabridge/xabridge/drivers/drivertest"
)

// retryLater calls f until it returns something other than a "call again
// later" class (ErrBusy, ErrInDoubt), with a growing delay; no fixed sleeps.
func retryLater(t *testing.T, what string, f func() error) error {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for delay := time.Millisecond; ; delay = min(2*delay, 50*time.Millisecond) {
		err := f()
		if !errors.Is(err, drivers.ErrBusy) && !errors.Is(err, drivers.ErrInDoubt) {
			return err
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: still %v after 10s", what, err)
		}
		time.Sleep(delay)
	}
}

func wantKind(t *testing.T, what string, err, kind error) {
	t.Helper()
	if got := drivers.Classify(err); got != kind {
		t.Fatalf("%s: class %v, want %v (err: %v)", what, got, kind, err)
	}
	var de *drivers.Error
	if !errors.As(err, &de) {
		t.Fatalf("%s: %T is not a *drivers.Error", what, err)
	}
}

func (e *env) insert(ctx context.Context, b *branch, tbl string, id int64) {
	e.t.Helper()
	if _, err := b.user.ExecContext(ctx, fmt.Sprintf("INSERT INTO %s VALUES (%d, %d)", tbl, id, id)); err != nil {
		e.t.Fatalf("insert %d: %v", id, err)
	}
}

func (e *env) rows(tbl string, id int64) int64 {
	e.t.Helper()
	return e.queryInt(fmt.Sprintf("SELECT COUNT(*) FROM %s WHERE id = %d", tbl, id))
}

// wantCleanPool checks every connection the pool can hand out (it must be
// limited to n): each answers plain SQL and can start a new XA transaction,
// i.e. none was returned in an XA state (which would fail with 1399).
func wantCleanPool(t *testing.T, db *sql.DB, n int) {
	t.Helper()
	ctx := ctxT(t)
	conns := make([]*sql.Conn, n)
	for i := range conns {
		c, err := db.Conn(ctx)
		if err != nil {
			t.Fatalf("conn %d: %v", i, err)
		}
		conns[i] = c
	}
	for i, c := range conns {
		xid := fmt.Sprintf("'xab-clean-check-%08x'", rand.Uint32())
		for _, q := range []string{"SELECT 1", "XA START " + xid, "XA END " + xid, "XA ROLLBACK " + xid} {
			if _, err := c.ExecContext(ctx, q); err != nil {
				t.Fatalf("pooled connection %d is dirty: %s: %v", i, q, err)
			}
		}
	}
	for _, c := range conns {
		_ = c.Close()
	}
}

// The trap of facts §6: while the preparing session is open, another
// session's XA COMMIT answers XAER_NOTA although XA RECOVER lists the XID.
// The adapter must call that ErrBusy, never "not found" or "done"; once the
// branch's session is closed, CommitPrepared succeeds.
func TestSessionBoundTrap(t *testing.T) {
	e := newEnv(t, 4)
	tbl := e.table("trap")
	ctx := ctxT(t)
	b := e.begin(ctx)
	e.insert(ctx, b, tbl, 10)
	if v, err := b.Prepare(ctx); err != nil || v != drivers.VoteCommit {
		t.Fatalf("Prepare: %v %v", v, err)
	}

	_, err := e.admin.ExecContext(ctx, "XA COMMIT "+b.xid.MySQL())
	if !isNumber(err, erXAERNota) {
		t.Fatalf("XA COMMIT from another session while the owner is open: got %v, want 1397 XAER_NOTA", err)
	}
	if !e.listed(b.xid) {
		t.Fatal("XA RECOVER does not list the prepared branch")
	}
	wantKind(t, "CommitPrepared while the owner is open", e.r.CommitPrepared(ctx, b.xid), drivers.ErrBusy)
	stranger := New("mysql-test", e.admin)
	wantKind(t, "RollbackPrepared (other Resource) while the owner is open", stranger.RollbackPrepared(ctx, b.xid), drivers.ErrBusy)
	if e.rows(tbl, 10) != 0 {
		t.Fatal("prepared row visible")
	}

	if err := b.Close(); err != nil {
		t.Fatal(err)
	}
	if err := retryLater(t, "CommitPrepared after Close", func() error { return e.r.CommitPrepared(ctx, b.xid) }); err != nil {
		t.Fatalf("CommitPrepared after Close: %v", err)
	}
	if e.rows(tbl, 10) != 1 {
		t.Fatal("committed row not visible")
	}
	if e.listed(b.xid) {
		t.Fatal("still listed after commit")
	}
	wantKind(t, "CommitPrepared again", e.r.CommitPrepared(ctx, b.xid), drivers.ErrNotFound)
	// The branch itself: already committed elsewhere, so its Commit is a no-op.
	if err := b.Commit(ctx); err != nil {
		t.Fatalf("Branch.Commit after CommitPrepared: %v", err)
	}
}

// discard must really close the server session, not return it to the pool.
func TestDiscardClosesSession(t *testing.T) {
	e := newEnv(t, 1)
	ctx := ctxT(t)
	conn, err := e.db.Conn(ctx)
	if err != nil {
		t.Fatal(err)
	}
	id := connID(t, conn)
	if !e.sessionListed(id) {
		t.Fatal("session not in the processlist")
	}
	discard(conn)
	if err := conn.PingContext(ctx); !errors.Is(err, sql.ErrConnDone) {
		t.Fatalf("Ping after discard: %v, want sql.ErrConnDone", err)
	}
	eventually(t, 5*time.Second, "the discarded session to leave the processlist", func() bool { return !e.sessionListed(id) })
	if n := e.db.Stats().OpenConnections; n != 0 {
		t.Fatalf("pool still counts %d open connections", n)
	}
	next, err := e.db.Conn(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer next.Close()
	if connID(t, next) == id {
		t.Fatal("the pool handed out the discarded session again")
	}
}

// The reply to XA PREPARE is lost after the server executed it: Prepare is
// in doubt, the session is discarded (the next one from a one-connection
// pool is new and clean), the branch is really prepared, and Rollback
// finishes it by XID once its session is gone.
func TestPrepareReplyLost(t *testing.T) {
	e := newEnv(t, 4)
	tbl := e.table("lostprep")
	ctx := ctxT(t)
	p := newProxy(t, e.cfg.Addr)
	cfg := e.cfg.Clone()
	cfg.Addr = p.addr()
	db := openDB(t, cfg, 1)
	r := New("mysql-proxy", db)

	bb, err := r.Begin(ctx, drivertest.NewXID())
	if err != nil {
		t.Fatal(err)
	}
	b := bb.(*branch)
	defer b.Close()
	e.insert(ctx, b, tbl, 20)
	p.loseReplyTo("XA PREPARE")
	_, err = b.Prepare(ctx)
	wantKind(t, "Prepare with its reply lost", err, drivers.ErrInDoubt)
	if p.cuts.Load() != 1 {
		t.Fatalf("proxy cut %d connections, want 1", p.cuts.Load())
	}

	// The pool's only connection is a new, clean session.
	conn, err := db.Conn(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if connID(t, conn) == b.owner {
		t.Fatal("the in-doubt session went back to the pool")
	}
	_ = conn.Close()
	wantCleanPool(t, db, 1)

	// The server did prepare it, and it detaches once its session is gone.
	eventually(t, 5*time.Second, "the in-doubt branch to show in XA RECOVER", func() bool { return e.listed(b.xid) })
	if err := retryLater(t, "Rollback", func() error { return b.Rollback(ctx) }); err != nil {
		t.Fatalf("Rollback of the in-doubt branch: %v", err)
	}
	if e.listed(b.xid) || e.rows(tbl, 20) != 0 {
		t.Fatal("in-doubt branch not rolled back")
	}
	if err := b.Rollback(ctx); err != nil {
		t.Fatalf("Rollback again: %v", err)
	}
}

// The reply to phase 2 (XA COMMIT, or XA COMMIT … ONE PHASE) is lost after
// the server committed: the call is in doubt, and a later Commit finds the
// branch gone and reports it done.
func TestCommitReplyLost(t *testing.T) {
	e := newEnv(t, 4)
	tbl := e.table("lostcommit")
	ctx := ctxT(t)
	p := newProxy(t, e.cfg.Addr)
	cfg := e.cfg.Clone()
	cfg.Addr = p.addr()
	db := openDB(t, cfg, 2)
	r := New("mysql-proxy", db)

	bb, err := r.Begin(ctx, drivertest.NewXID())
	if err != nil {
		t.Fatal(err)
	}
	b := bb.(*branch)
	defer b.Close()
	e.insert(ctx, b, tbl, 30)
	if _, err := b.Prepare(ctx); err != nil {
		t.Fatal(err)
	}
	p.loseReplyTo("XA COMMIT")
	wantKind(t, "Commit with its reply lost", b.Commit(ctx), drivers.ErrInDoubt)
	if err := retryLater(t, "Commit", func() error { return b.Commit(ctx) }); err != nil {
		t.Fatalf("Commit after in-doubt: %v", err)
	}
	if e.rows(tbl, 30) != 1 || e.listed(b.xid) {
		t.Fatal("branch not committed")
	}

	bb2, err := r.Begin(ctx, drivertest.NewXID())
	if err != nil {
		t.Fatal(err)
	}
	b2 := bb2.(*branch)
	defer b2.Close()
	e.insert(ctx, b2, tbl, 31)
	p.loseReplyTo("ONE PHASE")
	wantKind(t, "CommitOnePhase with its reply lost", b2.CommitOnePhase(ctx), drivers.ErrInDoubt)
	if e.rows(tbl, 31) != 1 {
		t.Fatal("one-phase branch not committed by the server")
	}
	// Nothing can tell its outcome now (it was never prepared, so XA
	// RECOVER cannot list it): every later call says so, none guesses.
	wantKind(t, "Rollback after the lost one-phase commit", b2.Rollback(ctx), drivers.ErrInDoubt)
	wantKind(t, "Commit after the lost one-phase commit", b2.Commit(ctx), drivers.ErrInDoubt)
	_, err = b2.Prepare(ctx)
	wantKind(t, "Prepare after the lost one-phase commit", err, drivers.ErrInDoubt)
	wantKind(t, "CommitOnePhase again", b2.CommitOnePhase(ctx), drivers.ErrInDoubt)
	wantCleanPool(t, db, 2)
}

// A deadlock inside a branch: the statement fails with ErrRetryable (the
// *mysql.MySQLError 1213 still reachable), the server has rolled the whole
// XA transaction back (MariaDB: state ROLLBACK ONLY, XA END answers 1399),
// Prepare and CommitOnePhase refuse, nothing is prepared, Rollback works and
// the session goes back to the pool clean.
func TestDeadlock(t *testing.T) {
	for _, onePhase := range []bool{false, true} {
		t.Run(fmt.Sprintf("onePhase=%v", onePhase), func(t *testing.T) {
			e := newEnv(t, 2)
			tbl := e.table("deadlock")
			ctx := ctxT(t)
			b := e.begin(ctx)
			e.insert(ctx, b, tbl, 40)
			berr, err := deadlock(ctx, e, b, tbl, 50)
			if err != nil {
				t.Fatal(err)
			}
			wantKind(t, "deadlocked statement", berr, drivers.ErrRetryable)
			var me *mysqldriver.MySQLError
			if !errors.As(berr, &me) || me.Number != erLockDeadlock {
				t.Fatalf("deadlocked statement: %v, want a reachable MySQLError 1213", berr)
			}
			if onePhase {
				err = b.CommitOnePhase(ctx)
			} else {
				_, err = b.Prepare(ctx)
			}
			wantKind(t, "after the deadlock", err, drivers.ErrRefused)
			if !errors.Is(err, drivers.ErrRetryable) {
				t.Errorf("refusal after a deadlock is not marked retryable: %v", err)
			}
			if e.listed(b.xid) {
				t.Fatal("refused branch is prepared")
			}
			if err := b.Rollback(ctx); err != nil {
				t.Fatalf("Rollback after refusal: %v", err)
			}
			if err := b.Close(); err != nil {
				t.Fatal(err)
			}
			if e.rows(tbl, 40) != 0 {
				t.Fatal("refused branch's row is visible")
			}
			wantCleanPool(t, e.db, 2)
		})
	}
}

// A lock wait timeout only rolls back the statement: ErrRetryable, and the
// branch goes on to commit.
func TestLockWaitTimeout(t *testing.T) {
	e := newEnv(t, 2)
	cfg := e.cfg.Clone()
	cfg.Params = map[string]string{"innodb_lock_wait_timeout": "1"}
	e.r = New("mysql-test", openDB(t, cfg, 2))
	tbl := e.table("lockwait")
	ctx := ctxT(t)
	holder, err := e.admin.Conn(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer discard(holder)
	for _, q := range []string{"BEGIN", "UPDATE " + tbl + " SET v = 9 WHERE id = 1"} {
		if _, err := holder.ExecContext(ctx, q); err != nil {
			t.Fatal(err)
		}
	}
	b := e.begin(ctx)
	e.insert(ctx, b, tbl, 60)
	_, err = b.user.ExecContext(ctx, "UPDATE "+tbl+" SET v = 1 WHERE id = 1")
	wantKind(t, "lock wait timeout", err, drivers.ErrRetryable)
	if !isNumber(err, erLockWaitTimeout) {
		t.Fatalf("want 1205, got %v", err)
	}
	e.insert(ctx, b, tbl, 61)
	if v, err := b.Prepare(ctx); err != nil || v != drivers.VoteCommit {
		t.Fatalf("Prepare after a lock wait timeout: %v %v", v, err)
	}
	if err := b.Commit(ctx); err != nil {
		t.Fatal(err)
	}
	if e.rows(tbl, 60)+e.rows(tbl, 61) != 2 {
		t.Fatal("rows not committed")
	}
}

// Foreign prepared XA transactions (another xid, another formatID, our
// formatID with a gtrid that is not ours, binary bytes) are listed with
// Ours=false and the id XA statements accept, and nothing the adapter does
// touches them.
func TestForeignXIDsUntouched(t *testing.T) {
	e := newEnv(t, 4)
	tbl := e.table("foreign")
	ctx := ctxT(t)
	ourShape := drivertest.NewXID() // a valid xabridge gtrid ...
	gtrid := ourShape.Global.String()
	tag := fmt.Sprintf("%08x", rand.Uint32())
	foreign := []foreignXID{
		{sql: "'foreign-" + tag + "'", gtrid: "foreign-" + tag, formatID: 1},
		// ... under formatID 7: not ours.
		{sql: fmt.Sprintf("X'%x',X'3030',7", gtrid), gtrid: gtrid, bqual: "00", formatID: 7},
		// Our formatID, a gtrid that does not decode.
		{sql: fmt.Sprintf("X'%x',X'3030',%d", "not-ours-"+tag, drivers.FormatID), gtrid: "not-ours-" + tag, bqual: "00", formatID: int64(drivers.FormatID)},
		// Raw bytes, NUL and 0xff included.
		{sql: fmt.Sprintf("X'00ff%s',X'01',3", tag), gtrid: "\x00\xff" + string(mustHex(t, tag)), bqual: "\x01", formatID: 3},
	}
	for _, f := range foreign {
		prepareForeign(t, e, f)
		t.Cleanup(func() { rollbackForeign(t, e, f) })
	}
	check := func(when string) {
		t.Helper()
		ps, err := e.r.Recover(ctx)
		if err != nil {
			t.Fatal(err)
		}
		for _, f := range foreign {
			found := false
			for _, p := range ps {
				if p.ID == f.id() {
					found = true
					if p.Ours || !p.XID.Global.IsZero() {
						t.Errorf("%s: foreign %s reported as ours: %+v", when, f.sql, p)
					}
				}
			}
			if !found {
				t.Errorf("%s: foreign %s (%s) not listed", when, f.sql, f.id())
			}
		}
	}
	check("before")

	// A full life of our own next to them, and finishing unknown XIDs.
	b := e.begin(ctx)
	e.insert(ctx, b, tbl, 70)
	if _, err := b.Prepare(ctx); err != nil {
		t.Fatal(err)
	}
	if err := b.Commit(ctx); err != nil {
		t.Fatal(err)
	}
	wantKind(t, "CommitPrepared(unknown)", e.r.CommitPrepared(ctx, drivertest.NewXID()), drivers.ErrNotFound)
	wantKind(t, "RollbackPrepared(unknown)", e.r.RollbackPrepared(ctx, drivertest.NewXID()), drivers.ErrNotFound)
	check("after")
}

func mustHex(t *testing.T, s string) []byte {
	t.Helper()
	var out []byte
	for i := 0; i+1 < len(s); i += 2 {
		var v byte
		if _, err := fmt.Sscanf(s[i:i+2], "%02x", &v); err != nil {
			t.Fatal(err)
		}
		out = append(out, v)
	}
	return out
}

// KILL of the branch's session before Prepare.
//
// ErrRefused, not ErrInDoubt: the server rolls back an XA transaction that
// is not prepared when its session ends, and XA PREPARE was never executed:
// the adapter sends it only after XA END succeeded, and here XA END itself
// fails on the dead connection (so XA PREPARE is never sent). Had the kill
// raced XA PREPARE instead (sent, answer lost), the adapter could not know
// whether the server executed it and would report ErrInDoubt; a
// driver.ErrBadConn (the driver proves it wrote nothing) is again ErrRefused.
// TestPrepareReplyLost covers the in-doubt side.
func TestKillBeforePrepare(t *testing.T) {
	e := newEnv(t, 2)
	tbl := e.table("kill")
	ctx := ctxT(t)
	b := e.begin(ctx)
	e.insert(ctx, b, tbl, 80)
	e.sqlExec(fmt.Sprintf("KILL %d", b.owner))
	eventually(t, 5*time.Second, "the killed session to go", func() bool { return !e.sessionListed(b.owner) })
	_, err := b.Prepare(ctx)
	wantKind(t, "Prepare after KILL", err, drivers.ErrRefused)
	if e.listed(b.xid) {
		t.Fatal("killed branch is prepared")
	}
	if err := b.Rollback(ctx); err != nil {
		t.Fatalf("Rollback: %v", err)
	}
	if e.rows(tbl, 80) != 0 {
		t.Fatal("killed branch's row is visible")
	}
	wantCleanPool(t, e.db, 2)
}

// A branch that only read is still prepared (it ran statements), and
// MariaDB rolls such a branch back when its session detaches, answering a
// later XA COMMIT with XA_RBROLLBACK: the adapter reports that as done.
func TestReadOnlyPreparedBranchDetached(t *testing.T) {
	e := newEnv(t, 2)
	tbl := e.table("ro")
	ctx := ctxT(t)
	b := e.begin(ctx)
	var n int
	if err := b.user.QueryRowContext(ctx, "SELECT COUNT(*) FROM "+tbl).Scan(&n); err != nil || n != 2 {
		t.Fatalf("select: %d %v", n, err)
	}
	if v, err := b.Prepare(ctx); err != nil || v != drivers.VoteCommit {
		t.Fatalf("Prepare: %v %v", v, err)
	}
	if err := b.Close(); err != nil {
		t.Fatal(err)
	}
	if err := retryLater(t, "CommitPrepared", func() error { return e.r.CommitPrepared(ctx, b.xid) }); err != nil {
		t.Fatalf("CommitPrepared of a detached read-only branch: %v", err)
	}
	if e.listed(b.xid) {
		t.Fatal("still listed")
	}
}

// The user handle runs statements only while the branch is active.
func TestUserHandleOnlyWhileActive(t *testing.T) {
	e := newEnv(t, 2)
	tbl := e.table("handle")
	ctx := ctxT(t)
	b := e.begin(ctx)
	h := b.user
	if h.XID() != b.xid {
		t.Fatal("XID mismatch")
	}
	var owner uint64
	if err := h.QueryRowContext(ctx, "SELECT CONNECTION_ID()").Scan(&owner); err != nil || owner != b.owner {
		t.Fatalf("the handle does not run on the pinned session: %d (branch owner %d), %v", owner, b.owner, err)
	}
	rows, err := h.QueryContext(ctx, "SELECT id FROM "+tbl+" ORDER BY id")
	if err != nil {
		t.Fatal(err)
	}
	for rows.Next() {
	}
	_ = rows.Close()
	e.insert(ctx, b, tbl, 90)
	if _, err := b.Prepare(ctx); err != nil {
		t.Fatal(err)
	}
	for _, when := range []string{"prepared", "committed"} {
		_, err := h.ExecContext(ctx, "INSERT INTO "+tbl+" VALUES (91, 0)")
		wantKind(t, "Exec when "+when, err, drivers.ErrFailed)
		_, err = h.QueryContext(ctx, "SELECT 1")
		wantKind(t, "Query when "+when, err, drivers.ErrFailed)
		var x int
		err = h.QueryRowContext(ctx, "SELECT 1").Scan(&x)
		wantKind(t, "QueryRow when "+when, err, drivers.ErrFailed)
		if when == "prepared" {
			if err := b.Commit(ctx); err != nil {
				t.Fatal(err)
			}
		}
	}
	if e.rows(tbl, 91) != 0 || e.rows(tbl, 90) != 1 {
		t.Fatal("wrong rows")
	}
}

// A branch that ran nothing votes read-only and leaves nothing behind; its
// session goes back to the pool, and the next branch reuses it (and its
// cached connection id).
func TestEmptyBranchAndSessionIDCache(t *testing.T) {
	e := newEnv(t, 1)
	ctx := ctxT(t)
	b := e.begin(ctx)
	if v, err := b.Prepare(ctx); err != nil || v != drivers.VoteReadOnly {
		t.Fatalf("Prepare: %v %v", v, err)
	}
	for _, f := range []func(context.Context) error{b.Commit, b.Rollback, b.CommitOnePhase} {
		if err := f(ctx); err != nil {
			t.Fatalf("phase 2 on a read-only branch: %v", err)
		}
	}
	if err := b.Close(); err != nil {
		t.Fatal(err)
	}
	b2 := e.begin(ctx)
	if b2.owner != b.owner {
		t.Fatalf("one-connection pool, yet owners %d and %d", b.owner, b2.owner)
	}
	var id uint64
	if err := b2.user.QueryRowContext(ctx, "SELECT CONNECTION_ID()").Scan(&id); err != nil || id != b2.owner {
		t.Fatalf("cached owner %d, CONNECTION_ID() %d (%v)", b2.owner, id, err)
	}
	if err := b2.Rollback(ctx); err != nil {
		t.Fatal(err)
	}
}

type fakeEnlister struct {
	b   drivers.Branch
	err error
}

func (f fakeEnlister) Enlist(context.Context, drivers.Resource) (drivers.Branch, error) {
	return f.b, f.err
}

func TestEnlist(t *testing.T) {
	e := newEnv(t, 2)
	ctx := ctxT(t)
	b := e.begin(ctx)
	h, err := e.r.Enlist(ctx, fakeEnlister{b: b})
	if err != nil || h != b.user {
		t.Fatalf("Enlist: %v %v", h, err)
	}
	other := New("other", e.db)
	if _, err := other.Enlist(ctx, fakeEnlister{b: b}); err == nil {
		t.Fatal("Enlist accepted another resource's branch")
	}
	boom := errors.New("boom")
	if _, err := e.r.Enlist(ctx, fakeEnlister{err: boom}); !errors.Is(err, boom) {
		t.Fatalf("Enlist error: %v", err)
	}
	if err := b.Rollback(ctx); err != nil {
		t.Fatal(err)
	}
}

// Begin refuses invalid XIDs before any SQL and reports the flavour.
func TestBeginAndFlavour(t *testing.T) {
	e := newEnv(t, 2)
	ctx := ctxT(t)
	_, err := e.r.Begin(ctx, drivers.XID{})
	wantKind(t, "Begin(zero XID)", err, drivers.ErrFailed)
	b := e.begin(ctx)
	defer b.Rollback(ctx)
	fl := e.r.fl
	if fl == nil || !fl.mariaDB || !fl.atLeast(10, 5, 0) || fl.detachOnPrepare {
		t.Fatalf("flavour %+v: want MariaDB ≥ 10.5 without detach-on-prepare", fl)
	}
	// The same XID twice is refused by the server (XAER_DUPID) as ErrFailed.
	_, err = e.r.Begin(ctx, b.xid)
	wantKind(t, "Begin(duplicate XID)", err, drivers.ErrFailed)
}

// A branch of a session from before a server restart (another boot, same
// connection id) must not teach the Resource that a live session of this
// boot with that id is gone: a branch prepared on it later still waits for
// its owner to leave, and then for the detach grace, before it is finished
// by XID (else XA COMMIT may answer OK and commit nothing).
func TestOwnerGuardIsPerBoot(t *testing.T) {
	e := newEnv(t, 1) // one connection: both branches get the same session
	tbl := e.table("perboot")
	ctx := ctxT(t)
	conn, err := e.db.Conn(ctx)
	if err != nil {
		t.Fatal(err)
	}
	s, err := e.r.sessionID(ctx, conn)
	if err != nil {
		t.Fatal(err)
	}
	_ = conn.Close()
	// A's owner had this id in an earlier boot; finishing A (unknown XID)
	// finds that session "gone".
	_ = e.r.finishByXID(ctx, "commit", drivertest.NewXID(), true, session{id: s.id, boot: s.boot - 100})

	b := e.begin(ctx)
	if b.owner != s.id {
		t.Fatalf("B got session %d, want %d", b.owner, s.id)
	}
	e.insert(ctx, b, tbl, 5)
	if _, err := b.Prepare(ctx); err != nil {
		t.Fatal(err)
	}
	adm, err := e.admin.Conn(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer adm.Close()
	fl, err := e.r.flavour(ctx, adm)
	if err != nil {
		t.Fatal(err)
	}
	owner := session{b.owner, b.ownerBoot}
	if why, err := e.r.ownerAttached(ctx, adm, fl, owner); err != nil || why == "" {
		t.Fatalf("while B's session is open: guard %q, %v; want busy", why, err)
	}
	_ = b.Close() // the session disconnects: B detaches
	if why, err := e.r.ownerAttached(ctx, adm, fl, owner); err != nil || why == "" {
		t.Fatalf("right after B's session closed: guard %q, %v; want the detach grace", why, err)
	}
	if err := retryLater(t, "Commit", func() error { return b.Commit(ctx) }); err != nil {
		t.Fatal(err)
	}
	if e.rows(tbl, 5) != 1 {
		t.Fatal("B not committed")
	}
}

// MariaDB ignores the formatID when it matches an XID: XA COMMIT of our XID
// commits a foreign branch prepared with the same gtrid and bqual bytes
// under formatID 1. Finishing by XID (resume after a restart, recovery, an
// operator's resolve) must refuse such a twin and leave it prepared.
func TestForeignTwinRefused(t *testing.T) {
	e := newEnv(t, 4)
	ctx := ctxT(t)
	ours := drivertest.NewXID()
	gtrid, bqual := ours.Global.String(), ours.BranchQualifier()
	twin := foreignXID{sql: fmt.Sprintf("X'%x',X'%x',1", gtrid, bqual), gtrid: gtrid, bqual: bqual, formatID: 1}
	prepareForeign(t, e, twin)
	t.Cleanup(func() { rollbackForeign(t, e, twin) })

	for _, tc := range []struct {
		name   string
		finish func(context.Context, drivers.XID) error
	}{{"commit", e.r.CommitPrepared}, {"rollback", e.r.RollbackPrepared}} {
		err := tc.finish(ctx, ours)
		wantKind(t, tc.name, err, drivers.ErrFailed)
		if !errors.Is(err, ErrAmbiguousXID) || !strings.Contains(err.Error(), twin.id()) {
			t.Errorf("%s: %v, want ErrAmbiguousXID naming %s", tc.name, err, twin.id())
		}
		ps, rerr := e.r.Recover(ctx)
		if rerr != nil {
			t.Fatal(rerr)
		}
		if !slices.ContainsFunc(ps, func(p drivers.Prepared) bool { return p.ID == twin.id() }) {
			t.Fatalf("%s: the foreign twin %s is no longer prepared", tc.name, twin.id())
		}
	}
}
