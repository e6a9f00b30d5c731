package mysql

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"sync"

	"github.com/xabridge/xabridge/drivers"
	"github.com/xabridge/xabridge/drivers/sqlguard"
	"github.com/xabridge/xabridge/internal/sqlview"
)

// state is where a branch is in the XA protocol, as far as the adapter knows.
type state int

const (
	// stActive: XA START ran; statements may run. If conn is nil the
	// session was lost, which rolled the (unprepared) branch back.
	stActive state = iota
	// stPrepared: XA PREPARE succeeded and the preparing session, still
	// pinned, owns the branch; phase 2 runs on it.
	stPrepared
	// stDetached: the branch is prepared, or may be (an XA PREPARE or a
	// phase 2 statement whose answer was lost), and its session has been
	// dropped: it can only be finished by XID from another session.
	stDetached
	// stDone: finished (see outcome); the session, if kept, is clean.
	stDone
)

// outcome is how a finished branch ended.
type outcome int

const (
	outCommitted outcome = iota + 1
	outRolledBack
	outReadOnly
	outInDoubt // a keeper's local COMMIT whose answer was lost (its decision row settles it)
)

// branch implements drivers.Branch for one XA transaction on one pinned
// session. Its methods serialize on mu; the user handle (Branch) shares it.
type branch struct {
	r         *Resource
	xid       drivers.XID
	xidSQL    string  // xid.MySQL(), validated at Begin
	owner     uint64  // the pinned session's server connection id
	ownerBoot float64 // the server's boot time when owner was read (see session)
	user      *Branch // the typed handle Enlist returns
	// local: a decision keeper's branch (BeginKept), a plain local
	// transaction on the pinned session instead of an XA transaction.
	local bool

	mu      sync.Mutex
	conn    *sql.Conn // nil once released to the pool or discarded
	state   state
	out     outcome
	used    bool  // a statement ran (or was attempted): not read-only
	rbCause error // set when the server rolled the branch back under a statement (deadlock)
	// unverified: a keeper's branch handed a result set to the
	// application, whose rows may have reported a deadlock the adapter
	// never saw; verify checks before anything else runs.
	unverified bool
	stmts      []*preparedStmt // prepared on conn through the handle (PrepareContext)
	view       *sqlview.View   // the handle's database/sql view, once asked for

	// unguarded turns the statement guard off (tests only: they show what
	// the server and the keeper's checks do with SQL the guard refuses).
	unguarded bool
}

var _ drivers.Branch = (*branch)(nil)

func (b *branch) XID() drivers.XID { return b.xid }

func (b *branch) errorf(op string, kind, err error) error {
	return drivers.NewError(b.r.name, op, b.xid, kind, err)
}

// exec runs one XA statement on the pinned session, as text without
// arguments so that go-sql-driver sends it with COM_QUERY.
func (b *branch) exec(ctx context.Context, verb string, suffix string) error {
	_, err := b.conn.ExecContext(ctx, verb+" "+b.xidSQL+suffix)
	if err != nil {
		return fmt.Errorf("%s: %w", verb, err)
	}
	return nil
}

// release returns the (clean) session to the pool.
func (b *branch) release() {
	b.closeStmts()
	if b.conn != nil {
		_ = b.conn.Close()
		b.conn = nil
	}
}

// drop discards the session: its XA state is not known to be clean.
func (b *branch) drop() {
	b.forgetStmts()
	if b.conn != nil {
		discard(b.conn)
		b.conn = nil
	}
}

// detach drops the session of a branch that is, or may be, prepared: from
// now on it is finished by XID, after its owner session has gone.
func (b *branch) detach() {
	// Remembered before the session is dropped: a CommitPrepared of this
	// process in between must already wait for this owner to go.
	b.r.rememberDetached(b.xid, session{b.owner, b.ownerBoot})
	b.drop()
	b.state = stDetached
}

// finish records the outcome and returns the session to the pool.
func (b *branch) finish(o outcome) {
	b.state, b.out = stDone, o
	b.release()
}

// rollbackSession ends and rolls back an unprepared (or server-rolled-back)
// branch on its own session, after a failure, with a context the caller
// cannot cancel but bounded by cleanupTimeout. It reports whether the
// session is now known to be clean; if not, it has been discarded. Either
// way the branch is rolled back afterwards: an unprepared XA transaction
// does not survive its session.
func (b *branch) rollbackSession(ctx context.Context, needEnd bool) (clean bool) {
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), cleanupTimeout)
	defer cancel()
	if b.local {
		if _, err := b.conn.ExecContext(ctx, "ROLLBACK"); err != nil {
			b.drop()
			return false
		}
		return true
	}
	if needEnd {
		// From ROLLBACK ONLY (after a deadlock) MariaDB answers XA END with
		// 1399, yet accepts XA ROLLBACK; so go on after a server error.
		if err := b.exec(ctx, "XA END", ""); err != nil && !isServerErr(err) {
			b.drop()
			return false
		}
	}
	if err := b.exec(ctx, "XA ROLLBACK", ""); err != nil {
		b.drop()
		return false
	}
	return true
}

// refused builds the ErrRefused error for a branch the server rolled back,
// marked retryable when a deadlock or lock timeout caused it.
func (b *branch) refused(op string, err error) error {
	if b.rbCause != nil && !errors.Is(err, b.rbCause) {
		err = fmt.Errorf("%w (after %w)", err, b.rbCause)
	}
	if b.rbCause != nil || transient(err) {
		err = withRetryable(err)
	}
	return b.errorf(op, drivers.ErrRefused, err)
}

// Prepare ends the branch (XA END) and prepares it (XA PREPARE). A branch
// that ran no statement is rolled back instead and votes VoteReadOnly.
//
// ErrRefused: the branch did not prepare and is rolled back (a deadlock
// earlier, XA_RB* from the server, or the session broke before XA PREPARE
// was sent). ErrInDoubt: XA PREPARE was sent and its answer lost; the
// session is discarded and the branch may be prepared.
func (b *branch) Prepare(ctx context.Context) (drivers.Vote, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.local {
		return 0, b.prepareLocal(ctx)
	}
	switch b.state {
	case stPrepared:
		return drivers.VoteCommit, nil
	case stDetached:
		return 0, b.errorf("prepare", drivers.ErrInDoubt, errors.New("the branch's session was lost after XA PREPARE was sent"))
	case stDone:
		if b.out == outReadOnly {
			return drivers.VoteReadOnly, nil
		}
		if b.out == outInDoubt {
			return 0, b.errorf("prepare", drivers.ErrInDoubt, errors.New("the branch's commit had its answer lost"))
		}
		return 0, b.errorf("prepare", drivers.ErrFailed, fmt.Errorf("the branch is already %s", b.out))
	}
	if b.conn == nil {
		b.state, b.out = stDone, outRolledBack
		return 0, b.refused("prepare", errors.New("the branch's session was lost before prepare; the server rolled it back"))
	}
	if !b.used {
		// Nothing ran, nothing to prepare. The vote stands even if the
		// rollback fails: the session is then discarded, which ends the
		// empty branch just as well.
		if b.rollbackSession(ctx, true) {
			b.release()
		}
		b.state, b.out = stDone, outReadOnly
		return drivers.VoteReadOnly, nil
	}

	if err := b.exec(ctx, "XA END", ""); err != nil {
		// XA PREPARE was not sent, so the branch is not prepared. A server
		// error here (1399 in ROLLBACK ONLY after a deadlock, XA_RB*) leaves
		// the session answering; roll back on it. Anything else: drop the
		// session, which rolls the branch back.
		if isServerErr(err) {
			if b.rollbackSession(ctx, false) {
				b.release()
			}
		} else {
			b.drop()
		}
		b.state, b.out = stDone, outRolledBack
		return 0, b.refused("prepare", err)
	}
	if cerr := context.Cause(ctx); cerr != nil {
		// The caller gave up before XA PREPARE was sent: refuse for
		// certain instead of sending a statement the driver would abort
		// half way (which would leave the branch in doubt).
		if b.rollbackSession(ctx, false) {
			b.release()
		}
		b.state, b.out = stDone, outRolledBack
		return 0, b.refused("prepare", fmt.Errorf("XA PREPARE not sent: %w", cerr))
	}
	err := b.exec(ctx, "XA PREPARE", "")
	if err == nil {
		b.state = stPrepared
		return drivers.VoteCommit, nil
	}
	if notSent(err) {
		// driver.ErrBadConn: the driver wrote nothing, so the server never
		// saw XA PREPARE; the session is gone and the branch with it.
		b.drop()
		b.state, b.out = stDone, outRolledBack
		return 0, b.refused("prepare", err)
	}
	if _, answered := serverError(err); answered {
		// The server refused XA PREPARE (XA_RB*: it rolled the branch
		// back; anything else: the branch stays IDLE). Had it prepared
		// the branch anyway, XA ROLLBACK on this same session would
		// succeed (MariaDB keeps a prepared branch on its session; MySQL
		// 8 lets any session finish it), so an XA ROLLBACK that succeeds
		// or answers XAER_NOTA proves the branch is not prepared.
		cctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), cleanupTimeout)
		rerr := b.exec(cctx, "XA ROLLBACK", "")
		cancel()
		switch {
		case rerr == nil:
			b.finish(outRolledBack)
			return 0, b.refused("prepare", err)
		case isNumber(rerr, erXAERNota):
			b.drop()
			b.state, b.out = stDone, outRolledBack
			return 0, b.refused("prepare", err)
		}
		err = fmt.Errorf("%w; then %w", err, rerr)
	}
	// The answer to XA PREPARE was lost (connection broke, context ended
	// while the server worked, session killed): the branch may be
	// prepared. Drop the session so that, if it is, it detaches and can be
	// finished by XID.
	b.detach()
	return 0, b.errorf("prepare", drivers.ErrInDoubt, err)
}

// Commit commits the prepared branch: XA COMMIT on the preparing session
// while it lives, else by XID once that session is gone.
func (b *branch) Commit(ctx context.Context) error {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.phase2(ctx, true)
}

// Rollback rolls the branch back whatever its state.
func (b *branch) Rollback(ctx context.Context) error {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.state == stActive {
		if b.conn != nil && b.rollbackSession(ctx, true) {
			b.release()
		}
		// Clean or discarded, the unprepared branch is gone.
		b.state, b.out = stDone, outRolledBack
		return nil
	}
	return b.phase2(ctx, false)
}

// phase2 finishes a prepared branch; b.mu is held.
func (b *branch) phase2(ctx context.Context, commit bool) error {
	op, verb, want := "rollback", "XA ROLLBACK", outRolledBack
	if commit {
		op, verb, want = "commit", "XA COMMIT", outCommitted
	}
	switch b.state {
	case stActive:
		return b.errorf(op, drivers.ErrFailed, errors.New("the branch is not prepared (use CommitOnePhase)"))
	case stDone:
		if b.out == want || b.out == outReadOnly {
			return nil
		}
		if b.out == outInDoubt {
			return b.errorf(op, drivers.ErrInDoubt, errors.New("the branch's commit had its answer lost; its outcome cannot be learned by XID"))
		}
		return b.errorf(op, drivers.ErrFailed, fmt.Errorf("the branch is already %s", b.out))
	case stPrepared:
		if cerr := context.Cause(ctx); cerr != nil {
			// Nothing sent; keep the owning session for the next call
			// rather than let database/sql fail the statement unsent and
			// leave us guessing.
			return b.errorf(op, drivers.ErrRetryable, fmt.Errorf("%s not sent: %w", verb, cerr))
		}
		err := b.exec(ctx, verb, "")
		if err == nil {
			b.finish(want)
			return nil
		}
		if _, answered := serverError(err); !answered && !notSent(err) {
			// The answer was lost: done or not, the session goes, and a
			// later call finishes by XID (a no-op if this one worked).
			b.detach()
			return b.errorf(op, drivers.ErrInDoubt, err)
		}
		// The server refused (should not happen on the owning session) or
		// nothing was sent: let go of the session and try by XID below.
		b.detach()
	}
	// stDetached: finish by XID, after the preparing session has left.
	err := b.r.finishByXID(ctx, op, b.xid, commit, session{b.owner, b.ownerBoot})
	if err == nil || errors.Is(err, drivers.ErrNotFound) {
		// Not prepared anywhere any more: phase 2 is idempotent.
		b.state, b.out = stDone, want
		return nil
	}
	return err
}

// CommitOnePhase ends the branch and commits it in one step
// (XA COMMIT … ONE PHASE). ErrRefused: the server rolled it back.
// ErrInDoubt: the answer to the commit was lost.
func (b *branch) CommitOnePhase(ctx context.Context) error {
	b.mu.Lock()
	defer b.mu.Unlock()
	const op = "commit-one-phase"
	switch b.state {
	case stDone:
		if b.out == outCommitted || b.out == outReadOnly {
			return nil
		}
		if b.out == outInDoubt {
			return b.errorf(op, drivers.ErrInDoubt, errors.New("the branch's commit had its answer lost"))
		}
		return b.errorf(op, drivers.ErrFailed, fmt.Errorf("the branch is already %s", b.out))
	case stPrepared, stDetached:
		return b.errorf(op, drivers.ErrFailed, errors.New("the branch is prepared; use Commit"))
	}
	if b.conn == nil {
		b.state, b.out = stDone, outRolledBack
		return b.refused(op, errors.New("the branch's session was lost; the server rolled it back"))
	}
	if b.local {
		return b.commitLocalOnePhase(ctx)
	}
	if err := b.exec(ctx, "XA END", ""); err != nil {
		if isServerErr(err) {
			if b.rollbackSession(ctx, false) {
				b.release()
			}
		} else {
			b.drop()
		}
		b.state, b.out = stDone, outRolledBack
		return b.refused(op, err)
	}
	if cerr := context.Cause(ctx); cerr != nil {
		if b.rollbackSession(ctx, false) {
			b.release()
		}
		b.state, b.out = stDone, outRolledBack
		return b.refused(op, fmt.Errorf("XA COMMIT not sent: %w", cerr))
	}
	err := b.exec(ctx, "XA COMMIT", " ONE PHASE")
	if err == nil {
		b.finish(outCommitted)
		return nil
	}
	if notSent(err) {
		b.drop()
		b.state, b.out = stDone, outRolledBack
		return b.refused(op, err)
	}
	if _, answered := serverError(err); answered {
		// The server refused the commit. A successful XA ROLLBACK on the
		// same session proves nothing was committed.
		cctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), cleanupTimeout)
		rerr := b.exec(cctx, "XA ROLLBACK", "")
		cancel()
		if rerr == nil || isRolledBack(err) {
			if rerr == nil {
				b.finish(outRolledBack)
			} else {
				b.drop()
				b.state, b.out = stDone, outRolledBack
			}
			return b.refused(op, err)
		}
		err = fmt.Errorf("%w; then %w", err, rerr)
	}
	// A one-phase branch is never prepared, so nothing is left to recover:
	// committed or rolled back, nobody can tell from XA RECOVER. It stays
	// in doubt: a later Commit or Rollback by XID would find nothing and
	// report an outcome it never saw.
	b.drop()
	b.state, b.out = stDone, outInDoubt
	return b.errorf(op, drivers.ErrInDoubt, err)
}

// Close releases the session. A finished branch's session goes back to the
// pool; an active one is discarded (the server rolls it back); a prepared
// one is discarded so that the branch detaches from it and can be finished
// by XID (recovery, or a later Commit/Rollback on this branch).
func (b *branch) Close() error {
	// The database/sql view closes after b.mu is released: closing its
	// prepared statements takes b.mu.
	var view *sqlview.View
	defer func() {
		if view != nil {
			view.Close()
		}
	}()
	b.mu.Lock()
	defer b.mu.Unlock()
	view = b.view
	switch b.state {
	case stDone:
		b.release()
	case stPrepared:
		b.detach()
	case stActive:
		b.drop()
		b.state, b.out = stDone, outRolledBack
	}
	return nil
}

func (o outcome) String() string {
	switch o {
	case outCommitted:
		return "committed"
	case outRolledBack:
		return "rolled back"
	case outReadOnly:
		return "finished (read-only)"
	case outInDoubt:
		return "in doubt"
	}
	return "unknown"
}

// Branch is the application's handle on a branch: it runs statements on the
// branch's pinned session, inside the XA transaction. The protocol (prepare,
// commit, rollback) belongs to the global transaction and is not offered
// here.
//
// Statements that would end or commit the branch are refused before they
// are sent: ExecContext, QueryContext, QueryRowContext and PrepareContext
// (and the database/sql view) read the text with the MySQL lexer of
// package sqlguard, every statement of a multi-statement text, and refuse
// COMMIT, ROLLBACK (but ROLLBACK TO SAVEPOINT), BEGIN, START TRANSACTION,
// XA … (XA END and XA COMMIT … ONE PHASE on the branch's own XID would
// commit it apart from the global transaction), SET autocommit, the
// statements that commit implicitly (DDL but CREATE/DROP TEMPORARY TABLE,
// LOCK/UNLOCK TABLES, FLUSH, GRANT, ANALYZE/OPTIMIZE TABLE, …) and those
// whose effect the guard cannot see (CALL, PREPARE/EXECUTE, compound
// statements). The refusal is an ErrFailed *drivers.Error that also
// matches sqlguard.ErrTransactionControl (or sqlguard.ErrUnreadable) and
// names the statement; nothing was sent, so the branch stays usable and
// commits with the global transaction. SAVEPOINT, RELEASE SAVEPOINT and
// ROLLBACK TO SAVEPOINT run.
//
// Statement errors are returned as database/sql returns them, except a
// deadlock (1213) or lock wait timeout (1205), which come back as
// drivers.ErrConflict (a kind of ErrRetryable) with the *mysql.MySQLError still reachable through
// errors.As. After a deadlock the server has rolled back the whole branch:
// its Prepare will be refused. Close Rows before the transaction commits: an
// open result set holds the session.
//
// On a decision keeper's branch (BeginKept: a local transaction, not XA) a
// deadlock ends the transaction at once, so every later statement on the
// handle fails with ErrFailed and the decision is refused; that includes a
// deadlock reported only while reading rows (Rows.Next, Rows.Err, Row.Scan),
// which the adapter asks the server about, in one round trip, before the
// next statement after a query. The guard matters most there: statements
// that commit implicitly (START TRANSACTION or BEGIN, which also start a new
// transaction no check can tell from the branch's; DDL; LOCK TABLES;
// ANALYZE or OPTIMIZE TABLE; SET autocommit) would commit the keeper's
// earlier work at once, which no later check could undo (an XA branch's
// server refuses most of them; a keeper's local transaction cannot). Should
// one get past the guard, the checks of @@in_transaction still keep
// anything after it, and the decision, from committing.
type Branch struct {
	b *branch
}

// XID returns the branch's XID.
func (h *Branch) XID() drivers.XID { return h.b.xid }

// errNotActive is returned for statements on a branch that is no longer
// active.
func (b *branch) errNotActive(op string) error {
	what := "finished"
	switch {
	case b.state == stPrepared || b.state == stDetached:
		what = "prepared"
	case b.state == stActive && b.conn != nil:
		what = "rolled back by the server (a decision keeper's local transaction cannot go on: MariaDB would run the next statements outside it)"
	case b.state == stActive:
		what = "broken (its session was lost)"
	}
	return b.errorf(op, drivers.ErrFailed, fmt.Errorf("the branch is %s: no more statements", what))
}

// active reports whether a user statement may run, and marks the branch used.
// A keeper's branch first checks that its transaction outlived the result
// set it last handed out (verify).
func (b *branch) active() bool {
	b.verify()
	if b.state != stActive || b.conn == nil || b.local && b.rbCause != nil {
		return false
	}
	b.used = true
	return true
}

// userErr classifies a user statement's error.
func (b *branch) userErr(op string, err error) error {
	if err == nil {
		return nil
	}
	if me, ok := serverError(err); ok {
		switch me.Number {
		case erLockDeadlock, erXARBDeadlock, erXARBTimeout, erXARBRollback:
			// The server rolled the whole XA transaction back (state
			// ROLLBACK ONLY); remember why for Prepare.
			b.rbCause = err
			return b.errorf(op, drivers.ErrConflict, err)
		case erLockWaitTimeout:
			// Only the statement was rolled back (unless the server runs
			// with innodb_rollback_on_timeout=ON, which XA END reveals,
			// and endedUnder for a keeper's local branch).
			b.endedUnder(err)
			return b.errorf(op, drivers.ErrConflict, err)
		}
		b.endedUnder(err)
		return err
	}
	// Not a server answer: the connection broke, or the context ended
	// (go-sql-driver closes the connection when a context ends
	// mid-statement). The session's state is unknown, so it goes; the
	// unprepared branch dies with it and Prepare will refuse.
	b.drop()
	return err
}

// ended reports whether MariaDB has ended, under a decision keeper's local
// branch, the transaction BEGIN started (@@in_transaction is 0): the
// session would then run the next statements in autocommit, outside the
// branch, so the caller sets rbCause and the branch refuses them and its
// decision. If the question fails, the session's state is unknown: it is
// dropped, which ends the transaction too (the branch is then refused as
// broken), and ended reports false. An XA branch is never asked: its server
// refuses what would end it. b.mu is held.
func (b *branch) ended() bool {
	if !b.local || b.rbCause != nil || b.conn == nil {
		return false
	}
	ctx, cancel := context.WithTimeout(context.Background(), cleanupTimeout)
	defer cancel()
	var in int
	if err := b.conn.QueryRowContext(ctx, "SELECT @@in_transaction").Scan(&in); err != nil {
		b.drop()
		return false
	}
	return in == 0
}

// endedUnder checks, after a server error on a keeper's branch, whether
// the statement ended the transaction (a lock wait timeout with
// innodb_rollback_on_timeout=ON; a failing DDL statement, which commits
// implicitly before it fails). b.mu is held.
func (b *branch) endedUnder(cause error) {
	if b.ended() {
		b.rbCause = fmt.Errorf("the transaction ended under the statement that failed: %w", cause)
	}
}

// verify checks, on a keeper's branch that has handed a result set to the
// application since its last check, that the transaction is still open.
// MariaDB may send a result set's header before InnoDB waits for a lock
// (a range locking read: SELECT … WHERE id BETWEEN … FOR UPDATE), so a
// deadlock there reaches only the application, at Rows.Next, Rows.Err or
// Row.Scan, yet ends the transaction all the same. It runs before the next
// statement or the commit, by which time the application has closed its
// rows; if it has not, database/sql holds the session until they close (or
// their context ends), then the check fails and the session is dropped,
// just as the application's own statement would have been. b.mu is held.
func (b *branch) verify() {
	if !b.unverified {
		return
	}
	b.unverified = false
	if b.ended() {
		b.rbCause = errEndedReading
	}
}

// errEndedReading is the rbCause verify finds.
var errEndedReading = errors.New("the transaction ended while the application read a result set (a deadlock reported by Rows.Next, Rows.Err or Row.Scan)")

// check refuses, before anything is sent, an application text that is (or
// may be) transaction control or a statement that commits implicitly: see
// package sqlguard. nargs is the number of arguments sent with it. The
// refusal is an ErrFailed *drivers.Error that also matches
// sqlguard.ErrTransactionControl or sqlguard.ErrUnreadable. Nothing is
// sent and nothing changes on the branch (it is not even marked used): it
// stays usable and may still prepare and commit.
func (b *branch) check(op, query string, nargs int) error {
	if b.unguarded {
		return nil
	}
	if err := sqlguard.CheckArgs(sqlguard.MySQL, query, nargs); err != nil {
		return b.errorf(op, drivers.ErrFailed, err)
	}
	return nil
}

// ExecContext executes a statement inside the branch (database/sql's
// (*sql.Conn).ExecContext).
func (h *Branch) ExecContext(ctx context.Context, query string, args ...any) (sql.Result, error) {
	b := h.b
	b.mu.Lock()
	defer b.mu.Unlock()
	if err := b.check("exec", query, len(args)); err != nil {
		return nil, err
	}
	if !b.active() {
		return nil, b.errNotActive("exec")
	}
	res, err := b.conn.ExecContext(ctx, query, args...)
	return res, b.userErr("exec", err)
}

// QueryContext runs a query inside the branch (database/sql's
// (*sql.Conn).QueryContext). Close the Rows before the transaction commits.
func (h *Branch) QueryContext(ctx context.Context, query string, args ...any) (*sql.Rows, error) {
	b := h.b
	b.mu.Lock()
	defer b.mu.Unlock()
	if err := b.check("query", query, len(args)); err != nil {
		return nil, err
	}
	if !b.active() {
		return nil, b.errNotActive("query")
	}
	rows, err := b.conn.QueryContext(ctx, query, args...)
	if err == nil && b.local {
		b.unverified = true // the rows may still report a deadlock: see verify
	}
	return rows, b.userErr("query", err)
}

// QueryRowContext runs a query expected to return at most one row inside the
// branch (database/sql's (*sql.Conn).QueryRowContext). Its errors are
// deferred to Scan, so the adapter does not see them: a deadlock reported
// there still makes Prepare refuse the branch, but the error is not marked
// retryable (on a keeper's branch, the next statement or commit checks for
// it: see verify).
func (h *Branch) QueryRowContext(ctx context.Context, query string, args ...any) *sql.Row {
	b := h.b
	b.mu.Lock()
	defer b.mu.Unlock()
	if err := b.check("query", query, len(args)); err != nil {
		return errRow(ctx, err)
	}
	if !b.active() {
		return errRow(ctx, b.errNotActive("query"))
	}
	row := b.conn.QueryRowContext(ctx, query, args...)
	if b.local {
		// A keeper's branch must learn of a deadlock now: MariaDB has
		// ended its local transaction. (Err does not consume the row.)
		// One that only Scan will report is checked for later.
		if err := row.Err(); err != nil {
			_ = b.userErr("query", err)
		} else {
			b.unverified = true
		}
	}
	return row
}
