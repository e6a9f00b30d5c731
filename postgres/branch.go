package postgres

import (
	"context"
	"errors"
	"fmt"
	"math"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/xabridge/xabridge/drivers"
	"github.com/xabridge/xabridge/internal/sqlview"
)

// state is where a branch is in its life.
type state int

const (
	stActive          state = iota // BEGIN done; statements may run; conn is pinned
	stPrepared                     // PREPARE TRANSACTION confirmed by its command tag
	stPrepareInDoubt               // PREPARE TRANSACTION sent, outcome unknown
	stCommitted                    // committed (two-phase or one-phase)
	stRolledBack                   // rolled back, refused, or closed before preparing
	stReadOnly                     // voted read-only and committed locally
	stOnePhaseInDoubt              // one-phase COMMIT sent, outcome unknown
	stEscaped                      // application SQL ended the transaction (COMMIT, ROLLBACK, PREPARE TRANSACTION)
)

func (s state) String() string {
	switch s {
	case stActive:
		return "active"
	case stPrepared:
		return "prepared"
	case stPrepareInDoubt:
		return "in doubt after PREPARE"
	case stCommitted:
		return "committed"
	case stRolledBack:
		return "rolled back"
	case stReadOnly:
		return "finished (read-only)"
	case stOnePhaseInDoubt:
		return "in doubt after a one-phase COMMIT"
	case stEscaped:
		return "ended by application SQL"
	}
	return "invalid"
}

// branch is the drivers.Branch of a PostgreSQL resource. Applications never
// see it: they get a *Branch handle, which can run statements but not end
// the transaction.
//
// mu serialises everything that touches the pinned connection (a pgx
// connection is not safe for concurrent use) and the state, so that a
// statement from the handle can never run on a connection that has already
// gone back to the pool.
type branch struct {
	r   *Resource
	xid drivers.XID
	gid string // xid.GID(), validated once at Begin

	mu     sync.Mutex
	conn   *pgxpool.Conn // pinned; nil once released or dropped
	pid    uint32        // backend pid of conn
	state  state
	begun  bool // BEGIN was sent (it goes with the first statement)
	ran    bool // some statement ran through the handle
	wrote  bool // some Exec, SendBatch or CopyFrom ran (they may write)
	closed bool
	lost   *lostSession  // the backend of an in-doubt PREPARE, until it is known gone
	spSeq  int           // savepoints opened by the handle's Begin (xab_sp_N)
	view   *sqlview.View // the handle's database/sql view, once asked for

	// unguarded turns the statement guard off (tests only: they show what
	// the second line of defence does with SQL the guard would refuse).
	unguarded bool
}

// XID returns the branch's XID.
func (b *branch) XID() drivers.XID { return b.xid }

func (b *branch) errorf(op string, kind error, format string, args ...any) error {
	return drivers.NewError(b.r.name, op, b.xid, kind, fmt.Errorf(format, args...))
}

func (b *branch) wrap(op string, kind, err error) error {
	return drivers.NewError(b.r.name, op, b.xid, kind, err)
}

// takeConn detaches the pinned connection from the branch.
func (b *branch) takeConn() *pgxpool.Conn {
	c := b.conn
	b.conn = nil
	return c
}

// cleanupCtx gives statements the adapter runs to clean up a context that
// the caller's cancellation does not cut short (an abandoned ROLLBACK would
// cost a reconnect) but that is still bounded.
func cleanupCtx(ctx context.Context) (context.Context, context.CancelFunc) {
	return context.WithTimeout(context.WithoutCancel(ctx), cleanupTimeout)
}

// Prepare ends the branch's work (phase 1). A branch that ran no statement,
// or (on PostgreSQL 13+) ran only queries that left no transaction id
// assigned, commits locally and votes read-only. Otherwise it sends
// PREPARE TRANSACTION and trusts only the command tag: in an aborted block
// PostgreSQL answers ROLLBACK with a warning instead of an error.
func (b *branch) Prepare(ctx context.Context) (drivers.Vote, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	switch b.state {
	case stPrepared:
		return drivers.VoteCommit, nil
	case stReadOnly:
		return drivers.VoteReadOnly, nil
	case stActive:
	default:
		return 0, b.errorf("prepare", drivers.ErrFailed, "branch is %s", b.state)
	}
	if b.escaped() {
		return 0, b.errEscaped("prepare")
	}
	if !b.ran {
		return b.commitReadOnly(ctx)
	}
	if !b.wrote && serverMajor(b.conn) >= 13 {
		// Only queries ran. A query can still write (a volatile function,
		// a data-modifying CTE) or lock rows (FOR UPDATE); both assign a
		// transaction id, so the server's own answer decides.
		var unassigned bool
		err := b.conn.QueryRow(ctx, "SELECT pg_current_xact_id_if_assigned() IS NULL", pgx.QueryExecModeSimpleProtocol).Scan(&unassigned)
		if err != nil {
			// Nothing was prepared whatever happened; make sure nothing stays open.
			cctx, cancel := cleanupCtx(ctx)
			b.rollbackActive(cctx)
			cancel()
			_, pe := fateOf(err)
			return 0, b.wrap("prepare", drivers.ErrRefused, withTransient(fmt.Errorf("read-only check: %w", err), pe))
		}
		if unassigned {
			return b.commitReadOnly(ctx)
		}
	}

	stmt := "PREPARE TRANSACTION '" + b.gid + "'"
	tag, err := execSimple(ctx, b.conn, stmt)
	if err == nil {
		switch tag.String() {
		case "PREPARE TRANSACTION":
			b.state = stPrepared // the connection stays pinned for phase 2
			return drivers.VoteCommit, nil
		case "ROLLBACK":
			release(b.takeConn())
			b.state = stRolledBack
			return 0, b.errorf("prepare", drivers.ErrRefused,
				"the transaction block was aborted by an earlier error, so PostgreSQL rolled it back instead of preparing it")
		}
		err = checkTag(tag, "PREPARE TRANSACTION")
	}
	f, pe := fateOf(err)
	switch {
	case errors.Is(err, errBadTag) || f == unknown:
		// The server may have prepared it, or may still be preparing it:
		// dropping the connection does not stop a running statement.
		// Remember the backend, so that a later "does not exist" is
		// trusted only once that backend is gone.
		b.lost = &lostSession{pid: b.pid, sql: stmt}
		discard(b.takeConn())
		b.state = stPrepareInDoubt
		return 0, b.wrap("prepare", drivers.ErrInDoubt, err)
	case f == notSent:
		// PREPARE never left the client; dropping the session makes the
		// server roll the transaction back.
		discard(b.takeConn())
		b.state = stRolledBack
		return 0, b.wrap("prepare", drivers.ErrRefused, fmt.Errorf("PREPARE TRANSACTION not sent, transaction rolled back: %w", err))
	default:
		// An ERROR: PREPARE TRANSACTION turned into a ROLLBACK.
		release(b.takeConn())
		b.state = stRolledBack
		if isDisabled(pe) {
			return 0, b.wrap("prepare", drivers.ErrUnsupported, errDisabled(err))
		}
		return 0, b.wrap("prepare", drivers.ErrRefused, withTransient(err, pe))
	}
}

// commitReadOnly ends a branch that changed nothing with a local COMMIT.
// If that COMMIT fails the branch refuses rather than voting read-only: its
// reads might not have been serializable, and aborting the global
// transaction is always safe.
func (b *branch) commitReadOnly(ctx context.Context) (drivers.Vote, error) {
	c := b.takeConn()
	if !b.begun {
		release(c) // no transaction was ever opened
		b.state = stReadOnly
		return drivers.VoteReadOnly, nil
	}
	tag, err := execSimple(ctx, c, "COMMIT")
	if err == nil && tag.String() == "COMMIT" {
		release(c)
		b.state = stReadOnly
		return drivers.VoteReadOnly, nil
	}
	b.state = stRolledBack
	if err == nil && tag.String() == "ROLLBACK" {
		release(c)
		return 0, b.errorf("prepare", drivers.ErrRefused, "the transaction block was aborted by an earlier error")
	}
	if err == nil {
		err = checkTag(tag, "COMMIT")
	}
	finishConn(c, err)
	_, pe := fateOf(err)
	return 0, b.wrap("prepare", drivers.ErrRefused, withTransient(err, pe))
}

// rollbackActive rolls back an unprepared branch and gives its connection
// back. It cannot fail: if ROLLBACK does not go through, the connection is
// dropped, and the server rolls back the transaction of a session that
// ends.
func (b *branch) rollbackActive(ctx context.Context) {
	c := b.takeConn()
	b.state = stRolledBack
	if c == nil {
		return
	}
	if !b.begun {
		release(c)
		return
	}
	tag, err := execSimple(ctx, c, "ROLLBACK")
	if err == nil {
		err = checkTag(tag, "ROLLBACK")
	}
	finishConn(c, err)
}

// Commit commits the prepared branch: COMMIT PREPARED on the pinned
// connection while it is alive, otherwise from a pool connection by XID.
// "Does not exist" means it is already committed (phase 2 is idempotent).
func (b *branch) Commit(ctx context.Context) error {
	b.mu.Lock()
	defer b.mu.Unlock()
	switch b.state {
	case stCommitted, stReadOnly:
		return nil
	case stPrepared, stPrepareInDoubt:
		return b.finish(ctx, true)
	case stActive:
		return b.errorf("commit", drivers.ErrFailed, "branch is not prepared (use Prepare first, or CommitOnePhase)")
	case stOnePhaseInDoubt:
		return b.errorf("commit", drivers.ErrFailed, "the one-phase COMMIT's outcome is unknown; nothing can be done by XID")
	default:
		return b.errorf("commit", drivers.ErrFailed, "branch is %s; it cannot commit", b.state)
	}
}

// Rollback rolls back the branch in any state: ROLLBACK if active (which
// cannot fail: at worst the connection is dropped, which rolls back too),
// ROLLBACK PREPARED if prepared or in doubt. It is idempotent.
func (b *branch) Rollback(ctx context.Context) error {
	b.mu.Lock()
	defer b.mu.Unlock()
	switch b.state {
	case stRolledBack, stReadOnly:
		return nil
	case stEscaped:
		// Nothing of the branch is left to roll back; the error that
		// reported the escape already told the application.
		return nil
	case stActive:
		b.rollbackActive(ctx)
		return nil
	case stPrepared, stPrepareInDoubt:
		return b.finish(ctx, false)
	case stOnePhaseInDoubt:
		return b.errorf("rollback", drivers.ErrFailed, "the one-phase COMMIT's outcome is unknown; it cannot be rolled back")
	default:
		return b.errorf("rollback", drivers.ErrFailed, "branch is %s; it cannot roll back", b.state)
	}
}

// finish runs COMMIT PREPARED or ROLLBACK PREPARED, first on the pinned
// connection, then, if that connection turns out to be dead, at once from a
// pool connection.
func (b *branch) finish(ctx context.Context, commit bool) error {
	op := opName(commit)
	var pinnedErr error // the pinned attempt's effect is unknown
	if c := b.conn; c != nil {
		stmt := finishSQL(commit, b.gid)
		tag, err := execSimple(ctx, c, stmt)
		if err == nil {
			err = checkTag(tag, stmtTag(commit))
		}
		f, pe := fateOf(err)
		switch {
		case err == nil:
			release(b.takeConn())
			b.done(commit)
			return nil
		case f == answered && !errors.Is(err, errBadTag):
			release(b.takeConn())
			if pe.Code == codeUndefinedObject {
				b.done(commit) // finished already
				return nil
			}
			return b.r.finishErr(op, b.xid, err)
		case f == notSent:
			discard(b.takeConn())
		default:
			// Another session finishing the same gid would get "busy"
			// while this statement still runs, so no lost-session
			// tracking is needed here, unlike PREPARE.
			discard(b.takeConn())
			pinnedErr = err
		}
	}

	lostAlive, err := b.r.finishByXID(ctx, b.xid, commit, b.lost)
	checked := err == nil || errors.Is(err, drivers.ErrNotFound) || errors.Is(err, drivers.ErrBusy)
	if checked && !lostAlive {
		b.lost = nil
	}
	switch {
	case err == nil:
		b.done(commit)
		return nil
	case errors.Is(err, drivers.ErrNotFound):
		if lostAlive {
			return b.wrap(op, drivers.ErrBusy, fmt.Errorf("the session that sent PREPARE TRANSACTION is still running it: %w", cause(err)))
		}
		if commit && b.state == stPrepareInDoubt {
			// The in-doubt PREPARE did not take effect: there is nothing
			// to commit, and saying "committed" would be a lie.
			return err
		}
		b.done(commit)
		return nil
	case pinnedErr != nil && !errors.Is(err, drivers.ErrBusy):
		return b.wrap(op, drivers.ErrInDoubt, errors.Join(pinnedErr, cause(err)))
	default:
		return err
	}
}

// cause returns the driver error inside an adapter error, so that a new
// *drivers.Error can wrap it without carrying the old class along (which
// drivers.Classify might pick instead of the new one).
func cause(err error) error {
	var de *drivers.Error
	if errors.As(err, &de) && de.Err != nil {
		return de.Err
	}
	return err
}

func (b *branch) done(commit bool) {
	if commit {
		b.state = stCommitted
	} else {
		b.state = stRolledBack
	}
	b.lost = nil
}

// CommitOnePhase commits the unprepared branch with COMMIT. A deferred
// constraint failing or an aborted block (tag ROLLBACK) is ErrRefused; a
// connection lost during COMMIT is ErrInDoubt, and then nothing more can be
// done about the branch.
func (b *branch) CommitOnePhase(ctx context.Context) error {
	b.mu.Lock()
	defer b.mu.Unlock()
	switch b.state {
	case stActive:
	case stCommitted:
		return nil
	default:
		return b.errorf("commit-one-phase", drivers.ErrFailed, "branch is %s", b.state)
	}
	if b.escaped() {
		return b.errEscaped("commit-one-phase")
	}
	if !b.begun {
		release(b.takeConn()) // nothing ran: nothing to commit
		b.state = stCommitted
		return nil
	}
	tag, err := execSimple(ctx, b.conn, "COMMIT")
	if err == nil {
		if done, err := b.endByCommitTag("commit-one-phase", tag); done {
			return err
		}
		err = checkTag(tag, "COMMIT")
	}
	f, pe := fateOf(err)
	switch {
	case errors.Is(err, errBadTag) || f == unknown:
		discard(b.takeConn())
		b.state = stOnePhaseInDoubt
		return b.wrap("commit-one-phase", drivers.ErrInDoubt, err)
	case f == notSent:
		discard(b.takeConn())
		b.state = stRolledBack
		return b.wrap("commit-one-phase", drivers.ErrRefused, fmt.Errorf("COMMIT not sent, transaction rolled back: %w", err))
	default:
		release(b.takeConn())
		b.state = stRolledBack
		return b.wrap("commit-one-phase", drivers.ErrRefused, withTransient(err, pe))
	}
}

// Close releases the pinned connection. An active branch is rolled back
// first. A prepared branch's connection goes back to the pool: in
// PostgreSQL a prepared transaction is detached from its session at once,
// so the session is clean and reusable, and the branch can be finished by
// XID from any connection.
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
	b.closed = true
	if b.conn == nil {
		return nil
	}
	if b.state == stActive {
		ctx, cancel := cleanupCtx(context.Background())
		defer cancel()
		b.rollbackActive(ctx)
		return nil
	}
	release(b.takeConn())
	return nil
}

// usable reports why the handle cannot run a statement now, if it cannot.
func (b *branch) usable(op string) error {
	if b.closed {
		return b.errorf(op, drivers.ErrFailed, "branch is closed")
	}
	if b.escaped() {
		return b.errEscaped(op)
	}
	if b.state != stActive {
		return b.errorf(op, drivers.ErrFailed, "branch is %s; statements can only run before it is prepared", b.state)
	}
	return nil
}

// escaped reports whether application SQL ended the branch's transaction:
// an active branch's session is idle outside a transaction only after a
// COMMIT, ROLLBACK or PREPARE TRANSACTION sent through the handle. Its
// effects then happened outside the global transaction, and nothing may run
// on the session any more (each statement would commit on its own). The
// session itself is clean, so it goes back to the pool.
func (b *branch) escaped() bool {
	if b.state == stEscaped {
		return true
	}
	if b.state != stActive || b.conn == nil || !b.begun {
		return false
	}
	pc := b.conn.Conn().PgConn()
	if pc.IsClosed() || pc.IsBusy() || pc.TxStatus() != 'I' {
		return false
	}
	release(b.takeConn())
	b.state = stEscaped
	return true
}

// escapedByTag reports whether the statement sql, which answered tag, was
// application transaction control that left the session inside a new
// transaction (COMMIT AND CHAIN, ROLLBACK AND CHAIN, "COMMIT; BEGIN": the
// session is not idle, so escaped cannot tell); endsTransaction decides,
// and lets savepoint rollbacks through. That new transaction is rolled
// back and the connection goes back to the pool; the branch is escaped. (A
// BEGIN inside the branch's own transaction, which PostgreSQL only warns
// about, is refused the same way: ending transactions is the coordinator's
// job.) b.mu is held.
func (b *branch) escapedByTag(ctx context.Context, sql string, tag pgconn.CommandTag) bool {
	if !endsTransaction(sql, tag) {
		return false
	}
	if b.state != stActive || b.conn == nil {
		return false
	}
	b.rollbackActive(ctx)
	b.state = stEscaped
	return true
}

func (b *branch) errEscaped(op string) error {
	return b.errorf(op, drivers.ErrFailed, "application SQL (COMMIT, ROLLBACK or PREPARE TRANSACTION) ended the branch's "+
		"transaction, so its effects are outside the global transaction; let the coordinator end transactions")
}

// serverMajor returns the server's major version, or 0 if unknown.
func serverMajor(c *pgxpool.Conn) int {
	v := c.Conn().PgConn().ParameterStatus("server_version")
	end := strings.IndexFunc(v, func(r rune) bool { return r < '0' || r > '9' })
	if end >= 0 {
		v = v[:end]
	}
	n, _ := strconv.Atoi(v)
	return n
}

// begin sends BEGIN on its own, before a statement that cannot carry it
// (see execBegin).
func (b *branch) begin(ctx context.Context) error {
	if b.begun {
		return nil
	}
	results, err := b.conn.Conn().PgConn().Exec(ctx,
		b.r.beginSQL+"; SET LOCAL idle_in_transaction_session_timeout = "+strconv.FormatInt(idleTimeoutMS(b.xid), 10)).ReadAll()
	if err == nil && (len(results) != 2 || results[0].CommandTag.String() != "BEGIN" || results[1].CommandTag.String() != "SET") {
		err = fmt.Errorf("%w: %d results for BEGIN and SET", errBadTag, len(results))
	}
	if err != nil {
		return b.wrap("begin", noEffectKind(err), err)
	}
	b.begun = true
	return nil
}

// setIdleTimeoutSQL sets, for the branch's transaction only, how long its
// session may sit idle inside it (see idleTimeoutMS). A constant text with
// a parameter, so a connection's statement cache prepares it once.
const setIdleTimeoutSQL = "SELECT set_config('idle_in_transaction_session_timeout', $1, true)"

// idleTimeoutMS is how long a branch's session may sit idle inside its
// transaction: until the global transaction's deadline, and a second more.
// Past it the coordinator refuses to decide, so no legitimate statement is
// still to come; but bytes held in the network (a partition that heals
// after many minutes, TCP still retransmitting) could otherwise reach the
// server then and act on a transaction recovery has long settled: a late
// PREPARE TRANSACTION after its rollback, or a decision keeper's INSERT and
// COMMIT after recovery fenced the transaction and, 10 minutes on, deleted
// its abort marker. PostgreSQL ends such a session instead, rolling the
// transaction back.
func idleTimeoutMS(xid drivers.XID) int64 {
	d := time.Until(xid.Global.Deadline()) + time.Second
	return min(max(d.Milliseconds(), 1000), math.MaxInt32)
}

// execBegin runs the branch's first statement, if it is an Exec with
// arguments, pipelined behind BEGIN: both go in one round trip (one batch,
// one Sync), which saves the round trip a separate BEGIN would cost. If
// nothing reached the server because the pooled connection had died, it
// retries once on a fresh connection, as Begin used to for BEGIN alone.
func (b *branch) execBegin(ctx context.Context, sql string, args []any) (pgconn.CommandTag, error) {
	for attempt := 0; ; attempt++ {
		batch := &pgx.Batch{}
		batch.Queue(b.r.beginSQL)
		batch.Queue(setIdleTimeoutSQL, strconv.FormatInt(idleTimeoutMS(b.xid), 10))
		batch.Queue(sql, args...)
		br := b.conn.SendBatch(ctx, batch)
		btag, berr := br.Exec()
		if _, serr := br.Exec(); berr == nil && serr != nil {
			berr = serr
		}
		tag, err := br.Exec()
		cerr := br.Close()
		if berr == nil && btag.String() == "BEGIN" {
			b.begun = true
			if err == nil {
				err = cerr
			}
			return tag, err
		}
		if berr == nil {
			berr = checkTag(btag, "BEGIN")
		}
		if f, _ := fateOf(berr); f == notSent && attempt == 0 && ctx.Err() == nil {
			discard(b.takeConn())
			conn, aerr := b.r.pool.Acquire(ctx)
			if aerr != nil {
				b.state = stRolledBack
				return pgconn.CommandTag{}, b.wrap("begin", noEffectKind(aerr), fmt.Errorf("acquire connection: %w", aerr))
			}
			b.conn, b.pid = conn, conn.Conn().PgConn().PID()
			continue
		}
		return pgconn.CommandTag{}, b.wrap("begin", noEffectKind(berr), berr)
	}
}

// pipelinable reports whether Exec's arguments can go into a batch: a
// pgx.QueryExecMode given as the first argument applies to Exec only.
func pipelinable(args []any) bool {
	if len(args) == 0 {
		return false // pgx runs these with the simple protocol, which a batch cannot
	}
	_, mode := args[0].(pgx.QueryExecMode)
	return !mode
}

// endByCommitTag finishes the branch by the command tag of its local
// COMMIT: "COMMIT" committed it; "ROLLBACK" means the transaction block had
// failed and was rolled back (refused). done is false for any other tag,
// which the caller treats as an unknown answer.
func (b *branch) endByCommitTag(op string, tag pgconn.CommandTag) (done bool, err error) {
	switch tag.String() {
	case "COMMIT":
		release(b.takeConn())
		b.state = stCommitted
		return true, nil
	case "ROLLBACK":
		release(b.takeConn())
		b.state = stRolledBack
		return true, b.errorf(op, drivers.ErrRefused,
			"the transaction block was aborted by an earlier error, so COMMIT rolled it back")
	}
	return false, nil
}
