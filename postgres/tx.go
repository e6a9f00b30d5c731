package postgres

import (
	"context"
	"errors"
	"strconv"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/xabridge/xabridge/drivers"
)

// The handle is a pgx.Tx, so that code written against one (repository
// functions taking a pgx.Tx, sqlc's WithTx, pgx.BeginFunc) runs inside
// the branch. Its nested transactions are savepoints; the outermost level
// belongs to the coordinator.
var (
	_ pgx.Tx = (*Branch)(nil)
	_ pgx.Tx = (*savepointTx)(nil)
)

// ErrTxControl is the cause of the ErrFailed error that Commit and Rollback
// on the handle itself return: the branch's transaction is ended by the
// coordinator, on every resource at once.
var ErrTxControl = errors.New("the branch's transaction belongs to the global transaction: it commits or rolls back with it (return an error from the callback, or call Tx.Rollback, to roll back)")

// Begin opens a savepoint (SAVEPOINT xab_sp_N) and returns it as a pgx.Tx,
// like Begin on a pgx.Tx: its Commit releases the savepoint, its Rollback
// rolls back to it, and nothing it does can end the branch's transaction.
// pgx.BeginFunc(ctx, h, fn) runs fn in a savepoint this way.
func (h *Branch) Begin(ctx context.Context) (pgx.Tx, error) {
	return h.savepoint(ctx)
}

// Commit does not commit: it returns an ErrFailed *drivers.Error wrapping
// ErrTxControl and leaves the branch as it is. The coordinator commits.
func (h *Branch) Commit(context.Context) error {
	return h.b.wrap("commit", drivers.ErrFailed, ErrTxControl)
}

// Rollback does not roll back: it returns an ErrFailed *drivers.Error
// wrapping ErrTxControl and leaves the branch as it is. To roll back,
// return an error from the transaction's callback (or call xa.Tx.Rollback);
// to undo part of the work, use Begin (a savepoint).
func (h *Branch) Rollback(context.Context) error {
	return h.b.wrap("rollback", drivers.ErrFailed, ErrTxControl)
}

// LargeObjects is not supported in a branch: it returns the zero
// pgx.LargeObjects, whose methods must not be called (pgx offers no way
// to build one over a handle).
func (h *Branch) LargeObjects() pgx.LargeObjects { return pgx.LargeObjects{} }

// Prepare creates a prepared statement on the branch's session, like
// pgx.Tx.Prepare. It stays on the session (a pooled connection) after the
// branch, as pgx's own prepared statements do. Its text meets the guard
// (see Branch): transaction control is refused and not prepared.
func (h *Branch) Prepare(ctx context.Context, name, sql string) (*pgconn.StatementDescription, error) {
	b := h.b
	b.mu.Lock()
	defer b.mu.Unlock()
	if err := b.usable("prepare-statement"); err != nil {
		return nil, err
	}
	if err := b.check("prepare-statement", sql, 0); err != nil {
		return nil, err
	}
	sd, err := b.conn.Conn().Prepare(ctx, name, sql)
	return sd, b.userErr("prepare-statement", err)
}

// Conn returns nil: statements outside the handle would escape the
// branch's bookkeeping and guards (pgx.Tx allows nil here, as after a
// failed Begin).
func (h *Branch) Conn() *pgx.Conn { return nil }

// savepoint opens the next savepoint of the branch.
func (h *Branch) savepoint(ctx context.Context) (*savepointTx, error) {
	b := h.b
	b.mu.Lock()
	b.spSeq++
	name := "xab_sp_" + strconv.Itoa(b.spSeq)
	b.mu.Unlock()
	if _, err := h.Exec(ctx, "SAVEPOINT "+name); err != nil {
		return nil, err
	}
	return &savepointTx{h: h, name: name}, nil
}

// savepointTx is a nested transaction of a branch: a savepoint.
type savepointTx struct {
	h      *Branch
	name   string
	closed bool
}

func (s *savepointTx) Begin(ctx context.Context) (pgx.Tx, error) {
	if s.closed {
		return nil, pgx.ErrTxClosed
	}
	return s.h.savepoint(ctx)
}

// Commit releases the savepoint.
func (s *savepointTx) Commit(ctx context.Context) error {
	if s.closed {
		return pgx.ErrTxClosed
	}
	s.closed = true
	_, err := s.h.Exec(ctx, "RELEASE SAVEPOINT "+s.name)
	return err
}

// Rollback rolls back to the savepoint; after Commit or Rollback it
// returns pgx.ErrTxClosed, as pgx's transactions do.
func (s *savepointTx) Rollback(ctx context.Context) error {
	if s.closed {
		return pgx.ErrTxClosed
	}
	s.closed = true
	_, err := s.h.Exec(ctx, "ROLLBACK TO SAVEPOINT "+s.name)
	return err
}

func (s *savepointTx) CopyFrom(ctx context.Context, tableName pgx.Identifier, columnNames []string, rowSrc pgx.CopyFromSource) (int64, error) {
	if s.closed {
		return 0, pgx.ErrTxClosed
	}
	return s.h.CopyFrom(ctx, tableName, columnNames, rowSrc)
}

func (s *savepointTx) SendBatch(ctx context.Context, b *pgx.Batch) pgx.BatchResults {
	if s.closed {
		return pgx.FailedBatchResults(b, pgx.ErrTxClosed)
	}
	return s.h.SendBatch(ctx, b)
}

func (s *savepointTx) LargeObjects() pgx.LargeObjects { return s.h.LargeObjects() }

func (s *savepointTx) Prepare(ctx context.Context, name, sql string) (*pgconn.StatementDescription, error) {
	if s.closed {
		return nil, pgx.ErrTxClosed
	}
	return s.h.Prepare(ctx, name, sql)
}

func (s *savepointTx) Exec(ctx context.Context, sql string, args ...any) (pgconn.CommandTag, error) {
	if s.closed {
		return pgconn.CommandTag{}, pgx.ErrTxClosed
	}
	return s.h.Exec(ctx, sql, args...)
}

func (s *savepointTx) Query(ctx context.Context, sql string, args ...any) (pgx.Rows, error) {
	if s.closed {
		return nil, pgx.ErrTxClosed
	}
	return s.h.Query(ctx, sql, args...)
}

func (s *savepointTx) QueryRow(ctx context.Context, sql string, args ...any) pgx.Row {
	if s.closed {
		return errRow{pgx.ErrTxClosed}
	}
	return s.h.QueryRow(ctx, sql, args...)
}

func (s *savepointTx) Conn() *pgx.Conn { return nil }
