package postgres

import (
	"context"
	"errors"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgtype"
	"github.com/xabridge/xabridge/drivers"
)

// Branch is the application's handle on a branch: it runs statements inside
// the branch's transaction with the usual pgx signatures. It deliberately
// has no way to commit, roll back or prepare: the coordinator ends the
// transaction, on every resource at once (Commit and Rollback, there to make
// the handle a pgx.Tx, refuse; Begin opens a savepoint; DB is its
// database/sql view). Transaction control sent as SQL anyway (COMMIT,
// ROLLBACK, END, ABORT, their AND CHAIN forms, BEGIN, START TRANSACTION,
// PREPARE TRANSACTION; not SAVEPOINT, RELEASE or ROLLBACK TO SAVEPOINT) is
// refused before anything is sent, also inside a multi-statement string or
// a batch: Exec, Query, QueryRow, SendBatch and Prepare read the text with
// the lexer of package sqlguard and return an ErrFailed *drivers.Error
// that also matches sqlguard.ErrTransactionControl (or
// sqlguard.ErrUnreadable, for a text the guard cannot read with certainty)
// and names the statement. Nothing reached the server, so the branch is
// untouched and stays usable: the refusal is the caller's error to handle
// (returned from the transaction's callback it rolls the global
// transaction back). As a second line, should a statement get past the
// lexer, Exec still checks the session's state and the command tag
// afterwards, and that ends the branch with an ErrFailed error; what such
// a statement committed stays committed.
//
// Statements run only while the branch is active; afterwards every method
// returns an ErrFailed *drivers.Error, so a statement can never run on a
// connection that has gone back to the pool. Serialization failures,
// deadlocks and lock timeouts (SQLSTATE 40001, 40P01, 55P03) are returned as
// ErrConflict (a kind of ErrRetryable) *drivers.Error values that still wrap the *pgconn.PgError;
// other errors are pgx's own.
//
// After any statement fails, PostgreSQL refuses everything but the end of
// the transaction, and the branch will refuse to prepare: return the error
// so the global transaction rolls back. Close every Rows before the
// transaction commits.
//
// Which statements may write matters: a branch that ran only Query and
// QueryRow and has no transaction id assigned (no row written or locked)
// votes read-only and commits at once, releasing any
// pg_advisory_xact_lock it holds. Exec, SendBatch and CopyFrom always make
// the branch prepare, keeping its locks until the global commit.
type Branch struct {
	b *branch
}

// XID returns the branch's XID.
func (h *Branch) XID() drivers.XID { return h.b.xid }

// Exec runs a statement in the branch, like pgx.Conn.Exec.
func (h *Branch) Exec(ctx context.Context, sql string, args ...any) (pgconn.CommandTag, error) {
	b := h.b
	b.mu.Lock()
	defer b.mu.Unlock()
	if err := b.usable("exec"); err != nil {
		return pgconn.CommandTag{}, err
	}
	sql, args, err := b.guard(ctx, "exec", sql, args, false)
	if err != nil {
		return pgconn.CommandTag{}, err
	}
	b.ran, b.wrote = true, true
	var tag pgconn.CommandTag
	if !b.begun && pipelinable(args) {
		tag, err = b.execBegin(ctx, sql, args)
	} else {
		if err := b.begin(ctx); err != nil {
			return pgconn.CommandTag{}, err
		}
		tag, err = b.conn.Exec(ctx, sql, args...)
	}
	if err == nil && (b.escaped() || b.escapedByTag(ctx, sql, tag)) {
		return tag, b.errEscaped("exec")
	}
	return tag, b.userErr("exec", err)
}

// Query runs a query in the branch, like pgx.Conn.Query. The rows must be
// closed before anything else runs on the branch. Their Conn method returns
// nil: the connection belongs to the branch.
func (h *Branch) Query(ctx context.Context, sql string, args ...any) (pgx.Rows, error) {
	rows, _, err := h.query(ctx, sql, args)
	if rows == nil {
		return nil, err
	}
	return rows, err
}

// query is Query, also returning the session's type map (for the
// database/sql view's conversions).
func (h *Branch) query(ctx context.Context, sql string, args []any) (*handleRows, *pgtype.Map, error) {
	b := h.b
	b.mu.Lock()
	defer b.mu.Unlock()
	if err := b.usable("query"); err != nil {
		return nil, nil, err
	}
	sql, args, err := b.guard(ctx, "query", sql, args, true)
	if err != nil {
		return nil, nil, err
	}
	if err := b.begin(ctx); err != nil {
		return nil, nil, err
	}
	b.ran = true
	m := b.conn.Conn().TypeMap()
	rows, err := b.conn.Query(ctx, sql, args...)
	if rows == nil {
		return nil, nil, b.userErr("query", err)
	}
	return &handleRows{Rows: rows, b: b}, m, b.userErr("query", err)
}

// QueryRow runs a query expected to return at most one row, like
// pgx.Conn.QueryRow; errors are deferred to Scan.
func (h *Branch) QueryRow(ctx context.Context, sql string, args ...any) pgx.Row {
	b := h.b
	b.mu.Lock()
	defer b.mu.Unlock()
	if err := b.usable("query"); err != nil {
		return errRow{err}
	}
	sql, args, err := b.guard(ctx, "query", sql, args, true)
	if err != nil {
		return errRow{err}
	}
	if err := b.begin(ctx); err != nil {
		return errRow{err}
	}
	b.ran = true
	return handleRow{row: b.conn.QueryRow(ctx, sql, args...), b: b}
}

// SendBatch sends a batch of statements in the branch, like
// pgx.Conn.SendBatch. The results must be closed before anything else runs
// on the branch. Every queued statement is guarded first (its
// QueryRewriter, such as pgx.NamedArgs, applied): one refusal fails the
// whole batch and nothing of it is sent.
func (h *Branch) SendBatch(ctx context.Context, batch *pgx.Batch) pgx.BatchResults {
	b := h.b
	b.mu.Lock()
	defer b.mu.Unlock()
	if err := b.usable("batch"); err != nil {
		return pgx.FailedBatchResults(batch, err)
	}
	// FailedBatchResults reveals whether the batch was built with
	// Batch.BeginTx, whose transaction the application could commit.
	if pgx.FailedBatchResults(batch, errBeginTx).Tx() != nil {
		return pgx.FailedBatchResults(batch, b.wrap("batch", drivers.ErrFailed, errBeginTx))
	}
	if err := b.guardBatch(ctx, batch); err != nil {
		return pgx.FailedBatchResults(batch, err)
	}
	if err := b.begin(ctx); err != nil {
		return pgx.FailedBatchResults(batch, err)
	}
	b.ran, b.wrote = true, true
	return &handleBatch{br: b.conn.SendBatch(ctx, batch), b: b}
}

var errBeginTx = errors.New("a batch built with Batch.BeginTx cannot run in a branch: the global transaction owns the branch's transaction")

// CopyFrom bulk-loads rows with the COPY protocol, like pgx.Conn.CopyFrom.
// It needs no guard: pgx builds the COPY statement itself, from the
// identifiers it quotes.
func (h *Branch) CopyFrom(ctx context.Context, tableName pgx.Identifier, columnNames []string, rowSrc pgx.CopyFromSource) (int64, error) {
	b := h.b
	b.mu.Lock()
	defer b.mu.Unlock()
	if err := b.usable("copy"); err != nil {
		return 0, err
	}
	if err := b.begin(ctx); err != nil {
		return 0, err
	}
	b.ran, b.wrote = true, true
	n, err := b.conn.CopyFrom(ctx, tableName, columnNames, rowSrc)
	return n, b.userErr("copy", err)
}

// handleRows maps errors like the handle does and hides the connection.
type handleRows struct {
	pgx.Rows
	b *branch
}

func (r *handleRows) Err() error { return r.b.userErr("query", r.Rows.Err()) }

func (r *handleRows) Scan(dest ...any) error { return r.b.userErr("query", r.Rows.Scan(dest...)) }

// Conn returns nil: statements outside the handle would escape the
// branch's bookkeeping (pgx.Rows allows nil here).
func (r *handleRows) Conn() *pgx.Conn { return nil }

type handleRow struct {
	row pgx.Row
	b   *branch
}

func (r handleRow) Scan(dest ...any) error { return r.b.userErr("query", r.row.Scan(dest...)) }

type errRow struct{ err error }

func (r errRow) Scan(...any) error { return r.err }

type handleBatch struct {
	br pgx.BatchResults
	b  *branch
}

func (h *handleBatch) Exec() (pgconn.CommandTag, error) {
	tag, err := h.br.Exec()
	return tag, h.b.userErr("batch", err)
}

func (h *handleBatch) Query() (pgx.Rows, error) {
	rows, err := h.br.Query()
	if rows == nil {
		return nil, h.b.userErr("batch", err)
	}
	return &handleRows{Rows: rows, b: h.b}, h.b.userErr("batch", err)
}

func (h *handleBatch) QueryRow() pgx.Row { return handleRow{row: h.br.QueryRow(), b: h.b} }

// Tx returns nil: batches that begin a transaction are refused.
func (h *handleBatch) Tx() pgx.Tx { return nil }

func (h *handleBatch) Close() error { return h.b.userErr("batch", h.br.Close()) }
