package mysql

import (
	"context"
	"database/sql"
	"database/sql/driver"
	"io"

	"github.com/xabridge/xabridge/internal/sqlview"
)

// DB returns a database/sql view of the branch: a *sql.DB whose every
// statement runs through this handle (ExecContext, QueryContext and
// prepared statements), on the branch's pinned session, inside its XA
// transaction. Use it where code wants a *sql.DB: sqlx
// (sqlx.NewDb(h.DB(), "mysql")), GORM's mysql driver
// (mysql.Config{Conn: h.DB()}, which also allows PrepareStmt). Nothing
// through it can end the branch's transaction: BeginTx opens a savepoint
// (xab_sqlsp_N), the *sql.Tx's Commit releases it and its Rollback rolls
// back to it (isolation and read-only options are refused), and
// transaction control or implicit-commit SQL sent through it meets the
// handle's guard (see Branch), prepared statements included.
//
// The view opens on first use and closes with the branch; Close on it
// affects only the view.
func (h *Branch) DB() *sql.DB {
	b := h.b
	b.mu.Lock()
	if b.view == nil {
		b.view = sqlview.New(sqlBackend{h: h}, "xab_sqlsp_")
		if b.conn == nil {
			b.view.Close()
		}
	}
	v := b.view
	b.mu.Unlock()
	return v.DB()
}

// PrepareContext prepares a statement on the branch's pinned session
// (database/sql's (*sql.Conn).PrepareContext). The statement runs only
// while the branch is active, with the handle's checks, and is closed
// with the branch (when its session leaves it), if not before.
func (h *Branch) PrepareContext(ctx context.Context, query string) (*sql.Stmt, error) {
	return h.DB().PrepareContext(ctx, query)
}

// BeginTx opens a savepoint and returns it as a *sql.Tx (see DB): its
// Commit releases the savepoint, its Rollback rolls back to it. With it the
// handle is what GORM calls a TxBeginner, so GORM's Transaction nests as
// savepoints on it.
func (h *Branch) BeginTx(ctx context.Context, opts *sql.TxOptions) (*sql.Tx, error) {
	return h.DB().BeginTx(ctx, opts)
}

// sqlBackend runs the view's statements through the handle.
type sqlBackend struct{ h *Branch }

func (s sqlBackend) Exec(ctx context.Context, query string, args []any) (driver.Result, error) {
	return s.h.ExecContext(ctx, query, args...)
}

func (s sqlBackend) Query(ctx context.Context, query string, args []any) (driver.Rows, error) {
	rows, err := s.h.QueryContext(ctx, query, args...)
	if err != nil {
		return nil, err
	}
	return newSQLRows(rows)
}

// Prepare prepares query on the pinned session and keeps the statement
// with the branch, which closes it when its session goes.
func (s sqlBackend) Prepare(ctx context.Context, query string) (sqlview.Stmt, error) {
	b := s.h.b
	b.mu.Lock()
	defer b.mu.Unlock()
	// The server prepares exactly this text (placeholders are the
	// server's), so it is checked as run without arguments.
	if err := b.check("prepare-statement", query, 0); err != nil {
		return nil, err
	}
	if !b.active() {
		return nil, b.errNotActive("prepare-statement")
	}
	st, err := b.conn.PrepareContext(ctx, query)
	if err != nil {
		return nil, b.userErr("prepare-statement", err)
	}
	ps := &preparedStmt{b: b, st: st}
	b.stmts = append(b.stmts, ps)
	return ps, nil
}

// preparedStmt is a statement prepared on a branch's session.
type preparedStmt struct {
	b  *branch
	st *sql.Stmt // nil once closed
}

func (p *preparedStmt) Exec(ctx context.Context, args []any) (driver.Result, error) {
	b := p.b
	b.mu.Lock()
	defer b.mu.Unlock()
	if p.st == nil || !b.active() {
		return nil, b.errNotActive("exec")
	}
	res, err := p.st.ExecContext(ctx, args...)
	return res, b.userErr("exec", err)
}

func (p *preparedStmt) Query(ctx context.Context, args []any) (driver.Rows, error) {
	b := p.b
	b.mu.Lock()
	if p.st == nil || !b.active() {
		b.mu.Unlock()
		return nil, b.errNotActive("query")
	}
	rows, err := p.st.QueryContext(ctx, args...)
	if err == nil && b.local {
		b.unverified = true // the rows may still report a deadlock: see verify
	}
	err = b.userErr("query", err)
	b.mu.Unlock()
	if err != nil {
		return nil, err
	}
	return newSQLRows(rows)
}

func (p *preparedStmt) Close() error {
	b := p.b
	b.mu.Lock()
	defer b.mu.Unlock()
	for i, ps := range b.stmts {
		if ps == p {
			b.stmts = append(b.stmts[:i], b.stmts[i+1:]...)
			break
		}
	}
	return p.close()
}

// close closes the server statement; b.mu is held.
func (p *preparedStmt) close() error {
	if p.st == nil {
		return nil
	}
	err := p.st.Close()
	p.st = nil
	return err
}

// closeStmts closes the statements prepared on the branch's session,
// before the session leaves the branch; b.mu is held.
func (b *branch) closeStmts() {
	for _, ps := range b.stmts {
		_ = ps.close()
	}
	b.stmts = nil
}

// forgetStmts lets go of the statements prepared on a session that is
// being discarded: they die with it (database/sql closes them with the
// connection), and nothing is sent on a session in an unknown state; b.mu
// is held.
func (b *branch) forgetStmts() {
	for _, ps := range b.stmts {
		ps.st = nil
	}
	b.stmts = nil
}

// sqlRows hands database/sql the values of *sql.Rows from the pinned
// session, as go-sql-driver produced them.
type sqlRows struct {
	rows  *sql.Rows
	names []string
	types []*sql.ColumnType
	vals  []any
	ptrs  []any
}

func newSQLRows(rows *sql.Rows) (*sqlRows, error) {
	names, err := rows.Columns()
	if err != nil {
		_ = rows.Close()
		return nil, err
	}
	types, _ := rows.ColumnTypes()
	r := &sqlRows{rows: rows, names: names, types: types, vals: make([]any, len(names)), ptrs: make([]any, len(names))}
	for i := range r.vals {
		r.ptrs[i] = &r.vals[i]
	}
	return r, nil
}

func (r *sqlRows) Columns() []string { return r.names }

func (r *sqlRows) Close() error { return r.rows.Close() }

// ColumnTypeDatabaseTypeName returns go-sql-driver's type name.
func (r *sqlRows) ColumnTypeDatabaseTypeName(i int) string {
	if i < len(r.types) {
		return r.types[i].DatabaseTypeName()
	}
	return ""
}

func (r *sqlRows) Next(dest []driver.Value) error {
	if !r.rows.Next() {
		if err := r.rows.Err(); err != nil {
			return err
		}
		return io.EOF
	}
	if err := r.rows.Scan(r.ptrs...); err != nil {
		return err
	}
	for i, v := range r.vals {
		dest[i] = v
	}
	return nil
}
