// Package sqlview gives a branch handle a database/sql face: a *sql.DB
// whose connections run every statement through the handle, so that
// database/sql code (GORM, sqlx, sqlc's database/sql flavour) works inside
// the branch while the handle's guards still apply. Nothing in the view can
// end the branch's transaction: BeginTx opens a savepoint, the *sql.Tx's
// Commit releases it and its Rollback rolls back to it, and transaction
// control sent as SQL meets the handle's own guard.
//
// The view has no connection of its own. Each *sql.DB connection is a
// cheap object that calls the backend, which serialises on the branch, so
// the *sql.DB may open several (a *sql.Tx holds one, and a statement on
// the *sql.DB meanwhile runs on the same session, inside the savepoint,
// rather than waiting for ever).
package sqlview

import (
	"context"
	"database/sql"
	"database/sql/driver"
	"errors"
	"fmt"
	"strconv"
	"sync"
	"time"
)

// Backend runs statements on a branch, through its guarded handle.
type Backend interface {
	// Exec runs a statement that returns no rows.
	Exec(ctx context.Context, query string, args []any) (driver.Result, error)
	// Query runs a query; errors the server answers before the first row
	// are returned by Query itself, not by the rows.
	Query(ctx context.Context, query string, args []any) (driver.Rows, error)
}

// Preparer is a Backend that prepares statements on the branch's session
// itself; without it the view keeps a statement's text and runs it through
// Exec and Query.
type Preparer interface {
	Prepare(ctx context.Context, query string) (Stmt, error)
}

// Checker is a Backend that vets a statement's text (its statement guard)
// without running it; without a Preparer, the view asks it at
// PrepareContext, so that a text the backend would refuse is refused when
// it is prepared, not only when it runs.
type Checker interface {
	Check(query string) error
}

// Stmt is a statement prepared by a Preparer.
type Stmt interface {
	Exec(ctx context.Context, args []any) (driver.Result, error)
	Query(ctx context.Context, args []any) (driver.Rows, error)
	Close() error
}

// View is the database/sql face of one branch.
type View struct {
	be     Backend
	prefix string // savepoint names: prefix + sequence number

	mu     sync.Mutex
	db     *sql.DB
	closed bool
	seq    int
	open   []string // open savepoints, outermost first
}

// New returns a view over be; savepoints it opens are named prefix1,
// prefix2, … (prefix must be a plain SQL identifier).
func New(be Backend, prefix string) *View { return &View{be: be, prefix: prefix} }

// DB returns the view's *sql.DB, opening it on first use. Closing it is
// harmless (the branch is not affected); Close closes it.
func (v *View) DB() *sql.DB {
	v.mu.Lock()
	defer v.mu.Unlock()
	if v.db == nil {
		v.db = sql.OpenDB(connector{v})
		if v.closed {
			_ = v.db.Close()
		}
	}
	return v.db
}

// Close closes the view's *sql.DB, if it was opened. Statements through it
// fail afterwards.
func (v *View) Close() {
	v.mu.Lock()
	db := v.db
	v.closed = true
	v.mu.Unlock()
	if db != nil {
		_ = db.Close()
	}
}

// ErrSavepoint is returned when a *sql.Tx of the view cannot end its
// savepoint (an enclosing savepoint ended first, or the options ask for
// what a savepoint cannot do).
var ErrSavepoint = errors.New("savepoint")

func (v *View) beginSavepoint(ctx context.Context, opts driver.TxOptions) (driver.Tx, error) {
	if opts.Isolation != driver.IsolationLevel(sql.LevelDefault) || opts.ReadOnly {
		return nil, fmt.Errorf("%w: a nested transaction inside a branch is a savepoint; it cannot set its isolation level or read-only mode", ErrSavepoint)
	}
	v.mu.Lock()
	v.seq++
	name := v.prefix + strconv.Itoa(v.seq)
	v.mu.Unlock()
	if _, err := v.be.Exec(ctx, "SAVEPOINT "+name, nil); err != nil {
		return nil, err
	}
	v.mu.Lock()
	v.open = append(v.open, name)
	v.mu.Unlock()
	return &savepoint{v: v, ctx: context.WithoutCancel(ctx), name: name}, nil
}

// endTimeout bounds the RELEASE or ROLLBACK TO that ends a savepoint:
// database/sql's Commit and Rollback take no context, and rolls back on its
// own when BeginTx's context ends.
const endTimeout = 30 * time.Second

// endStmt runs the statement that ends the savepoint.
func (s *savepoint) endStmt(verb string) error {
	if !s.v.end(s.name) {
		return fmt.Errorf("%w %s was already released or rolled back (an enclosing one ended first)", ErrSavepoint, s.name)
	}
	ctx, cancel := context.WithTimeout(s.ctx, endTimeout)
	defer cancel()
	_, err := s.v.be.Exec(ctx, verb+s.name, nil)
	return err
}

// end removes name and every savepoint opened after it from the open list
// (RELEASE and ROLLBACK TO do that on the server too), reporting whether it
// was open.
func (v *View) end(name string) bool {
	v.mu.Lock()
	defer v.mu.Unlock()
	for i := len(v.open) - 1; i >= 0; i-- {
		if v.open[i] == name {
			v.open = v.open[:i]
			return true
		}
	}
	return false
}

// savepoint is a *sql.Tx of the view.
type savepoint struct {
	v    *View
	ctx  context.Context // database/sql's Commit and Rollback take none
	name string
}

// Commit releases the savepoint.
func (s *savepoint) Commit() error { return s.endStmt("RELEASE SAVEPOINT ") }

// Rollback rolls back to the savepoint.
func (s *savepoint) Rollback() error { return s.endStmt("ROLLBACK TO SAVEPOINT ") }

type connector struct{ v *View }

func (c connector) Connect(context.Context) (driver.Conn, error) { return &conn{v: c.v}, nil }

func (c connector) Driver() driver.Driver { return drv{} }

type drv struct{}

func (drv) Open(string) (driver.Conn, error) {
	return nil, errors.New("sqlview: open a branch's *sql.DB with its handle's DB method")
}

// conn is one database/sql connection of the view.
type conn struct{ v *View }

var (
	_ driver.Conn               = (*conn)(nil)
	_ driver.ConnBeginTx        = (*conn)(nil)
	_ driver.ConnPrepareContext = (*conn)(nil)
	_ driver.ExecerContext      = (*conn)(nil)
	_ driver.QueryerContext     = (*conn)(nil)
	_ driver.NamedValueChecker  = (*conn)(nil)
)

func (c *conn) Prepare(query string) (driver.Stmt, error) {
	return c.PrepareContext(context.Background(), query)
}

// PrepareContext prepares the statement on the branch's session if the
// backend is a Preparer; otherwise it checks the text if the backend is a
// Checker and keeps it, and the backend's own statement handling prepares
// it when it runs (pgx caches prepared statements per connection).
func (c *conn) PrepareContext(ctx context.Context, query string) (driver.Stmt, error) {
	if p, ok := c.v.be.(Preparer); ok {
		st, err := p.Prepare(ctx, query)
		if err != nil {
			return nil, err
		}
		return &stmt{c: c, query: query, st: st}, nil
	}
	if ch, ok := c.v.be.(Checker); ok {
		if err := ch.Check(query); err != nil {
			return nil, err
		}
	}
	return &stmt{c: c, query: query}, nil
}

func (c *conn) Close() error { return nil }

func (c *conn) Begin() (driver.Tx, error) { return c.BeginTx(context.Background(), driver.TxOptions{}) }

func (c *conn) BeginTx(ctx context.Context, opts driver.TxOptions) (driver.Tx, error) {
	return c.v.beginSavepoint(ctx, opts)
}

func (c *conn) ExecContext(ctx context.Context, query string, args []driver.NamedValue) (driver.Result, error) {
	a, err := positional(args)
	if err != nil {
		return nil, err
	}
	return c.v.be.Exec(ctx, query, a)
}

func (c *conn) QueryContext(ctx context.Context, query string, args []driver.NamedValue) (driver.Rows, error) {
	a, err := positional(args)
	if err != nil {
		return nil, err
	}
	return c.v.be.Query(ctx, query, a)
}

// CheckNamedValue passes every argument through unchanged: the backend's
// own driver converts it (pgx takes any Go value, database/sql converts
// again for go-sql-driver).
func (c *conn) CheckNamedValue(*driver.NamedValue) error { return nil }

func positional(args []driver.NamedValue) ([]any, error) {
	a := make([]any, len(args))
	for i, nv := range args {
		if nv.Name != "" {
			return nil, fmt.Errorf("sqlview: named argument %q: only positional arguments are supported", nv.Name)
		}
		a[i] = nv.Value
	}
	return a, nil
}

type stmt struct {
	c     *conn
	query string
	st    Stmt // nil: run the text through the backend
}

var (
	_ driver.StmtExecContext  = (*stmt)(nil)
	_ driver.StmtQueryContext = (*stmt)(nil)
)

func (s *stmt) Close() error {
	if s.st != nil {
		return s.st.Close()
	}
	return nil
}

func (s *stmt) NumInput() int { return -1 }

func (s *stmt) Exec(args []driver.Value) (driver.Result, error) {
	return s.exec(context.Background(), values(args))
}

func (s *stmt) Query(args []driver.Value) (driver.Rows, error) {
	return s.run(context.Background(), values(args))
}

func (s *stmt) ExecContext(ctx context.Context, args []driver.NamedValue) (driver.Result, error) {
	a, err := positional(args)
	if err != nil {
		return nil, err
	}
	return s.exec(ctx, a)
}

func (s *stmt) QueryContext(ctx context.Context, args []driver.NamedValue) (driver.Rows, error) {
	a, err := positional(args)
	if err != nil {
		return nil, err
	}
	return s.run(ctx, a)
}

func (s *stmt) exec(ctx context.Context, args []any) (driver.Result, error) {
	if s.st != nil {
		return s.st.Exec(ctx, args)
	}
	return s.c.v.be.Exec(ctx, s.query, args)
}

func (s *stmt) run(ctx context.Context, args []any) (driver.Rows, error) {
	if s.st != nil {
		return s.st.Query(ctx, args)
	}
	return s.c.v.be.Query(ctx, s.query, args)
}

func values(args []driver.Value) []any {
	a := make([]any, len(args))
	for i, v := range args {
		a[i] = v
	}
	return a
}
