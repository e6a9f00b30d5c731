// Package postgres is the xabridge adapter for PostgreSQL, on
// github.com/jackc/pgx/v5 and its pgxpool.
//
// A branch pins one pooled connection, runs BEGIN on it, and at phase 1
// sends PREPARE TRANSACTION '<gid>', where the gid is drivers.XID.GID(): only
// [a-z0-9.:-] plus the label alphabet [A-Za-z0-9._:/#@+-] (no quote, no
// backslash), so it is always a safe literal (PostgreSQL does not accept a
// bind parameter there). Phase 2 runs COMMIT PREPARED / ROLLBACK PREPARED on
// the same connection while it is alive, or from any pool connection by XID.
// The server must run with max_prepared_transactions > 0.
//
// Application code gets a typed handle from Resource.Enlist and runs its
// statements through it with the usual pgx signatures:
//
//	err := coord.Run(ctx, func(ctx context.Context, tx *xa.Tx) error {
//		b, err := ledger.Enlist(ctx, tx) // ledger is a *postgres.Resource
//		if err != nil {
//			return err
//		}
//		_, err = b.Exec(ctx, "UPDATE accounts SET balance = balance - $1 WHERE id = $2", amount, from)
//		return err
//	})
//
// # Using your data layer
//
// The handle fits the interfaces Go data layers take, so existing code runs
// inside the branch unchanged:
//
//   - pgx: the handle is a pgx.Tx. Repository functions taking a pgx.Tx,
//     sqlc's pgx/v5 queries (New(b), or WithTx(b)) and pgx.BeginFunc(ctx, b,
//     fn) work on it; its Begin is a savepoint, and Commit or Rollback of
//     the handle itself are refused (ErrTxControl): the coordinator ends
//     the transaction.
//   - database/sql: Branch.DB is a *sql.DB view of the same pinned session,
//     and ExecContext, QueryContext, QueryRowContext, PrepareContext and
//     BeginTx are on the handle too. sqlc's database/sql queries take the
//     handle; GORM takes it as a ConnPool (gorm.Session with
//     Statement.ConnPool, or postgres.Config{Conn: b.DB()}); sqlx takes
//     sqlx.NewDb(b.DB(), "pgx"). BeginTx there is a savepoint too, so GORM's
//     Transaction nests.
//
// SAVEPOINT, ROLLBACK TO [SAVEPOINT] and RELEASE [SAVEPOINT] are allowed in
// a branch; COMMIT, ROLLBACK, END, BEGIN, PREPARE TRANSACTION and their AND
// CHAIN forms are not: the handle refuses them before they are sent, also
// inside a multi-statement string or a batch (package drivers/sqlguard). The module github.com/xabridge/xabridge/examples has a recipe
// for each (sqlc, GORM, sqlx, pgx.Tx), run against real servers.
//
// A Resource is also a decisionlog.Keeper: named as a coordinator's
// xa.Config.DecisionResource, it keeps commit decisions as rows of
// DecisionTable, committed in its own branch's transaction (which then never
// prepares). The branch's BEGIN is sent together with its first Exec, and the
// decision INSERT together with its COMMIT, each in one round trip.
//
// Importing the package registers the URL schemes "postgres" and
// "postgresql" with drivers.Open.
package postgres

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/xabridge/xabridge/drivers"
)

// Resource is one PostgreSQL database taking part in global transactions,
// reached through a pgxpool.Pool the application owns. It implements
// drivers.Resource and is safe for concurrent use.
//
// Each active branch holds one pool connection until it ends, so size the
// pool for the number of concurrent global transactions plus a few
// connections for phase 2 and recovery.
//
// COMMIT PREPARED only works in the database the branch was prepared in and
// as the role that prepared it (or a superuser), so recovery must use a pool
// on the same database with the same role.
type Resource struct {
	name     string
	pool     *pgxpool.Pool
	beginSQL string
	optErr   error // a bad option, reported by Begin

	decisions decisionTable         // see DecisionKeeper methods in decision.go
	ident     drivers.IdentityCache // see identity.go
}

// Option configures a Resource.
type Option func(*Resource)

// WithTxOptions sets the isolation level, access mode and deferrable mode
// of every branch's BEGIN (the default is the server's default, usually
// READ COMMITTED). BeginQuery and CommitQuery must be empty: the adapter
// owns the transaction's begin and end.
func WithTxOptions(o pgx.TxOptions) Option {
	return func(r *Resource) {
		sql, err := beginSQL(o)
		if err != nil {
			r.optErr = err
			return
		}
		r.beginSQL = sql
	}
}

// beginSQL builds BEGIN from o, accepting only pgx's own constants so that
// nothing but keywords reaches the SQL text.
func beginSQL(o pgx.TxOptions) (string, error) {
	if o.BeginQuery != "" || o.CommitQuery != "" {
		return "", errors.New("pgx.TxOptions.BeginQuery and CommitQuery are not supported: the adapter runs BEGIN, PREPARE TRANSACTION and COMMIT itself")
	}
	sql := "BEGIN"
	switch o.IsoLevel {
	case "":
	case pgx.Serializable, pgx.RepeatableRead, pgx.ReadCommitted, pgx.ReadUncommitted:
		sql += " ISOLATION LEVEL " + string(o.IsoLevel)
	default:
		return "", fmt.Errorf("unknown isolation level %q", o.IsoLevel)
	}
	switch o.AccessMode {
	case "":
	case pgx.ReadWrite, pgx.ReadOnly:
		sql += " " + string(o.AccessMode)
	default:
		return "", fmt.Errorf("unknown access mode %q", o.AccessMode)
	}
	switch o.DeferrableMode {
	case "":
	case pgx.Deferrable, pgx.NotDeferrable:
		sql += " " + string(o.DeferrableMode)
	default:
		return "", fmt.Errorf("unknown deferrable mode %q", o.DeferrableMode)
	}
	return sql, nil
}

// New returns a resource named name on pool. The name is written into the
// decision log, so it must stay the same across restarts. The pool stays
// the caller's: New does not close it. New panics if pool is nil.
func New(name string, pool *pgxpool.Pool, opts ...Option) *Resource {
	if pool == nil {
		panic("postgres.New: pool is nil")
	}
	r := &Resource{name: name, pool: pool, beginSQL: "BEGIN"}
	for _, o := range opts {
		o(r)
	}
	return r
}

// Name returns the resource's name.
func (r *Resource) Name() string { return r.name }

// Pool returns the pool the resource uses.
func (r *Resource) Pool() *pgxpool.Pool { return r.pool }

// Enlist enlists the resource in the global transaction tx (beginning its
// branch on first use, see drivers.Enlister) and returns the typed handle
// application code runs statements through.
func (r *Resource) Enlist(ctx context.Context, tx drivers.Enlister) (*Branch, error) {
	db, err := tx.Enlist(ctx, r)
	if err != nil {
		return nil, err
	}
	b, ok := db.(*branch)
	if !ok || b.r != r {
		return nil, drivers.NewError(r.name, "enlist", db.XID(), drivers.ErrFailed,
			fmt.Errorf("the transaction returned a %T, not a branch of this resource", db))
	}
	return &Branch{b: b}, nil
}

// Begin starts a branch: it pins a pool connection and runs BEGIN on it.
// An invalid XID is refused before any SQL is sent.
func (r *Resource) Begin(ctx context.Context, xid drivers.XID) (drivers.Branch, error) {
	gid, err := checkXID(xid)
	if err != nil {
		return nil, drivers.NewError(r.name, "begin", xid, drivers.ErrFailed, err)
	}
	if r.optErr != nil {
		return nil, drivers.NewError(r.name, "begin", xid, drivers.ErrFailed, fmt.Errorf("resource options: %w", r.optErr))
	}
	// BEGIN is not sent here: it goes to the server together with the
	// branch's first statement (see branch.execBegin), saving a round trip.
	// A branch that runs nothing never opens a transaction at all.
	conn, err := r.pool.Acquire(ctx)
	if err != nil {
		return nil, drivers.NewError(r.name, "begin", xid, noEffectKind(err), fmt.Errorf("acquire connection: %w", err))
	}
	return &branch{r: r, xid: xid, gid: gid, conn: conn, pid: conn.Conn().PgConn().PID(), state: stActive}, nil
}

// CommitPrepared commits the prepared branch xid from a pool connection.
// It returns ErrNotFound when no such branch is prepared in this database,
// ErrBusy when another session is finishing it, ErrFailed when it belongs
// to another role, and ErrInDoubt when the connection broke mid-way.
func (r *Resource) CommitPrepared(ctx context.Context, xid drivers.XID) error {
	_, err := r.finishByXID(ctx, xid, true, nil)
	return err
}

// RollbackPrepared rolls back the prepared branch xid from a pool
// connection, with the same error classes as CommitPrepared.
func (r *Resource) RollbackPrepared(ctx context.Context, xid drivers.XID) error {
	_, err := r.finishByXID(ctx, xid, false, nil)
	return err
}

// lostSession is the backend of a connection the adapter dropped while a
// PREPARE TRANSACTION, COMMIT PREPARED or ROLLBACK PREPARED was in flight.
// Dropping the connection does not stop that statement: the backend
// finishes it before it notices the disconnect. Until the backend is gone,
// "does not exist" may only mean "not prepared yet".
type lostSession struct {
	pid uint32
	sql string
}

// finishByXID runs COMMIT PREPARED or ROLLBACK PREPARED for xid on a pool
// connection. If lost is set it first checks whether that backend is still
// running the statement; the check comes first so that a "does not exist"
// answer after it can be trusted when the backend was gone. It reports
// whether the lost backend was still alive.
func (r *Resource) finishByXID(ctx context.Context, xid drivers.XID, commit bool, lost *lostSession) (lostAlive bool, err error) {
	op := opName(commit)
	gid, err := checkXID(xid)
	if err != nil {
		return false, drivers.NewError(r.name, op, xid, drivers.ErrFailed, err)
	}
	conn, err := r.pool.Acquire(ctx)
	if err != nil {
		return false, drivers.NewError(r.name, op, xid, noEffectKind(err), fmt.Errorf("acquire connection: %w", err))
	}
	if lost != nil {
		err := conn.QueryRow(ctx,
			`SELECT EXISTS (SELECT 1 FROM pg_stat_activity WHERE pid = $1 AND (query = $2 OR state = 'disabled'))`,
			int64(lost.pid), lost.sql).Scan(&lostAlive)
		if err != nil {
			finishConn(conn, err)
			return false, drivers.NewError(r.name, op, xid, noEffectKind(err),
				fmt.Errorf("check whether backend %d still runs %q: %w", lost.pid, lost.sql, err))
		}
	}
	stmt := finishSQL(commit, gid)
	tag, err := execSimple(ctx, conn, stmt)
	if err == nil {
		err = checkTag(tag, stmtTag(commit))
	}
	finishConn(conn, err)
	if err == nil {
		return lostAlive, nil
	}
	return lostAlive, r.finishErr(op, xid, err)
}

// finishErr classifies a failed COMMIT PREPARED / ROLLBACK PREPARED.
func (r *Resource) finishErr(op string, xid drivers.XID, err error) error {
	f, pe := fateOf(err)
	switch {
	case errors.Is(err, errBadTag):
		return drivers.NewError(r.name, op, xid, drivers.ErrInDoubt, err)
	case f == notSent:
		return drivers.NewError(r.name, op, xid, drivers.ErrRetryable, err)
	case f == unknown:
		return drivers.NewError(r.name, op, xid, drivers.ErrInDoubt, err)
	case pe.Code == codeUndefinedObject:
		return drivers.NewError(r.name, op, xid, drivers.ErrNotFound, err)
	case pe.Code == codeObjectNotInPrereqState:
		return drivers.NewError(r.name, op, xid, drivers.ErrBusy, err)
	case unavailableCode(pe.Code):
		return drivers.NewError(r.name, op, xid, drivers.ErrRetryable, err)
	default:
		// 42501 (another role's branch), 0A000 (another database's), ...
		return drivers.NewError(r.name, op, xid, drivers.ErrFailed, err)
	}
}

// Recover lists the prepared transactions of the whole server
// (pg_prepared_xacts shows every database). One is Ours only if its gid
// decodes as an xabridge XID, it lives in this resource's database, and this
// resource's role may finish it (it prepared it, or is a superuser);
// otherwise it is foreign, with a Note when its gid decodes.
func (r *Resource) Recover(ctx context.Context) ([]drivers.Prepared, error) {
	rows, err := r.pool.Query(ctx, `
		SELECT gid, prepared, owner::text, database::text,
		       database = current_database(),
		       owner = current_user OR current_setting('is_superuser')::bool
		  FROM pg_prepared_xacts
		 ORDER BY prepared, gid`)
	if err != nil {
		return nil, drivers.NewError(r.name, "recover", drivers.XID{}, noEffectKind(err), err)
	}
	var out []drivers.Prepared
	for rows.Next() {
		var (
			p               drivers.Prepared
			sameDB, mayDoIt bool
		)
		if err := rows.Scan(&p.ID, &p.PreparedAt, &p.Owner, &p.Database, &sameDB, &mayDoIt); err != nil {
			rows.Close()
			return nil, drivers.NewError(r.name, "recover", drivers.XID{}, drivers.ErrFailed, err)
		}
		if xid, ok := drivers.ParseGID(p.ID); ok {
			// Ours or not to finish, the XID is reported: recovery keeps
			// the transaction's decision while any branch of it is listed.
			p.XID = xid
			switch {
			case !sameDB:
				p.Note = "other database (finish it from a resource on database " + p.Database + ")"
			case !mayDoIt:
				p.Note = "prepared by role " + p.Owner + " (finish it as that role or a superuser)"
			default:
				p.Ours = true
			}
		}
		out = append(out, p)
	}
	if err := rows.Err(); err != nil {
		return nil, drivers.NewError(r.name, "recover", drivers.XID{}, noEffectKind(err), err)
	}
	return out, nil
}

// Check verifies that the server can take part in two-phase commit: it
// connects and reads max_prepared_transactions. It returns an ErrUnsupported
// error that says how to fix it when the setting is 0.
func (r *Resource) Check(ctx context.Context) error {
	var n int64
	err := r.pool.QueryRow(ctx, "SELECT current_setting('max_prepared_transactions')::bigint").Scan(&n)
	if err != nil {
		return drivers.NewError(r.name, "check", drivers.XID{}, noEffectKind(err), err)
	}
	if n <= 0 {
		return drivers.NewError(r.name, "check", drivers.XID{}, drivers.ErrUnsupported, errDisabled(errors.New("the server reports max_prepared_transactions = 0")))
	}
	return nil
}

// checkXID validates xid before it reaches any SQL and returns its gid. The
// gid alphabet check repeats what XID.Validate guarantees, because quoting
// safety must not depend on a distant invariant.
func checkXID(xid drivers.XID) (string, error) {
	if err := xid.Validate(); err != nil {
		return "", err
	}
	gid := xid.GID()
	if len(gid) >= 200 {
		return "", fmt.Errorf("gid %q is longer than PostgreSQL's 199 bytes", gid)
	}
	// The label part of the bqual adds [A-Z_/#@+]; no quote, no backslash.
	for i := 0; i < len(gid); i++ {
		c := gid[i]
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || strings.IndexByte(".:-_/#@+", c) >= 0) {
			return "", fmt.Errorf("gid %q contains a character outside [A-Za-z0-9.:_/#@+-]", gid)
		}
	}
	return gid, nil
}

func opName(commit bool) string {
	if commit {
		return "commit"
	}
	return "rollback"
}

func finishSQL(commit bool, gid string) string {
	if commit {
		return "COMMIT PREPARED '" + gid + "'"
	}
	return "ROLLBACK PREPARED '" + gid + "'"
}

func stmtTag(commit bool) string {
	if commit {
		return "COMMIT PREPARED"
	}
	return "ROLLBACK PREPARED"
}

// cleanupTimeout bounds the statements the adapter runs on its own behalf
// where the caller gave no context (Close) and closing a connection.
const cleanupTimeout = 5 * time.Second
