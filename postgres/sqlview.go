package postgres

import (
	"context"
	"database/sql"
	"database/sql/driver"
	"fmt"
	"io"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgtype"
	"github.com/xabridge/xabridge/internal/sqlview"
)

// DB returns a database/sql view of the branch: a *sql.DB whose every
// statement runs through this handle, on the branch's pinned session,
// inside its transaction. Use it where code wants database/sql: GORM's
// postgres driver (postgres.Config{Conn: h.DB()}, or as a session's
// ConnPool), sqlx (sqlx.NewDb(h.DB(), "pgx")), sqlc's database/sql
// flavour. Nothing through it can end the branch's transaction: BeginTx
// opens a savepoint (xab_sqlsp_N), the *sql.Tx's Commit releases it and its
// Rollback rolls back to it (isolation and read-only options are refused);
// COMMIT or ROLLBACK sent as SQL is refused by the handle's guard before it
// is sent. Values come back
// as pgx's database/sql driver (stdlib) returns them. Only positional
// arguments ($1, $2, …) are supported.
//
// The view opens on first use and closes with the branch; Close on it
// affects only the view.
func (h *Branch) DB() *sql.DB {
	b := h.b
	b.mu.Lock()
	if b.view == nil {
		b.view = sqlview.New(sqlBackend{h: &Branch{b: b}}, "xab_sqlsp_")
		if b.closed {
			b.view.Close()
		}
	}
	v := b.view
	b.mu.Unlock()
	return v.DB()
}

// ExecContext runs a statement in the branch through its database/sql
// view, like (*sql.DB).ExecContext.
func (h *Branch) ExecContext(ctx context.Context, query string, args ...any) (sql.Result, error) {
	return h.DB().ExecContext(ctx, query, args...)
}

// QueryContext runs a query in the branch through its database/sql view,
// like (*sql.DB).QueryContext. Close the rows before the transaction
// commits.
func (h *Branch) QueryContext(ctx context.Context, query string, args ...any) (*sql.Rows, error) {
	return h.DB().QueryContext(ctx, query, args...)
}

// QueryRowContext runs a query returning at most one row in the branch
// through its database/sql view, like (*sql.DB).QueryRowContext.
func (h *Branch) QueryRowContext(ctx context.Context, query string, args ...any) *sql.Row {
	return h.DB().QueryRowContext(ctx, query, args...)
}

// PrepareContext prepares a statement for the branch through its
// database/sql view, like (*sql.DB).PrepareContext. pgx prepares it on the
// branch's session when it first runs (and caches it there).
func (h *Branch) PrepareContext(ctx context.Context, query string) (*sql.Stmt, error) {
	return h.DB().PrepareContext(ctx, query)
}

// sqlBackend runs the view's statements through the handle.
type sqlBackend struct{ h *Branch }

// Check refuses, at PrepareContext, a text the handle's guard would refuse
// when it runs (checked as without arguments; the run checks again with
// them).
func (s sqlBackend) Check(query string) error {
	b := s.h.b
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.check("prepare-statement", query, 0)
}

func (s sqlBackend) Exec(ctx context.Context, query string, args []any) (driver.Result, error) {
	tag, err := s.h.Exec(ctx, query, args...)
	if err != nil {
		return nil, err
	}
	return driver.RowsAffected(tag.RowsAffected()), nil
}

func (s sqlBackend) Query(ctx context.Context, query string, args []any) (driver.Rows, error) {
	rows, m, err := s.h.query(ctx, query, args)
	if err != nil {
		return nil, err
	}
	// Read the first row now, so that an error the server answers at
	// once (a syntax error, a constraint) is the query's error, as
	// database/sql callers expect, not the rows'.
	more := rows.Next()
	if !more {
		if err := rows.Err(); err != nil {
			rows.Close()
			return nil, err
		}
	}
	return &sqlRows{rows: rows, m: m, skip: true, more: more}, nil
}

// sqlRows turns pgx rows into database/sql driver rows, converting values
// the way pgx's stdlib driver does (see stdlib.Rows.Next).
type sqlRows struct {
	rows  pgx.Rows
	m     *pgtype.Map
	conv  []func([]byte) (driver.Value, error)
	skip  bool // the first row was read by Query
	more  bool
	names []string
}

func (r *sqlRows) Columns() []string {
	if r.names == nil {
		fds := r.rows.FieldDescriptions()
		r.names = make([]string, len(fds))
		for i, fd := range fds {
			r.names[i] = fd.Name
		}
	}
	return r.names
}

// ColumnTypeDatabaseTypeName returns the column's type name, upper case,
// like stdlib.
func (r *sqlRows) ColumnTypeDatabaseTypeName(index int) string {
	if t, ok := r.m.TypeForOID(r.rows.FieldDescriptions()[index].DataTypeOID); ok {
		return upper(t.Name)
	}
	return fmt.Sprint(r.rows.FieldDescriptions()[index].DataTypeOID)
}

func upper(s string) string {
	b := []byte(s)
	for i, c := range b {
		if c >= 'a' && c <= 'z' {
			b[i] = c - 'a' + 'A'
		}
	}
	return string(b)
}

func (r *sqlRows) Close() error {
	r.rows.Close()
	return r.rows.Err()
}

func (r *sqlRows) Next(dest []driver.Value) error {
	if r.conv == nil {
		r.conv = converters(r.m, r.rows.FieldDescriptions())
	}
	more := r.more
	if r.skip {
		r.skip = false
	} else {
		more = r.rows.Next()
	}
	if !more {
		if err := r.rows.Err(); err != nil {
			return err
		}
		return io.EOF
	}
	for i, raw := range r.rows.RawValues() {
		if raw == nil {
			dest[i] = nil
			continue
		}
		v, err := r.conv[i](raw)
		if err != nil {
			return fmt.Errorf("convert field %d failed: %w", i, err)
		}
		dest[i] = v
	}
	return nil
}

// converters plans, per column, the conversion of its wire value to a
// database/sql driver value, as pgx's stdlib does.
func converters(m *pgtype.Map, fds []pgconn.FieldDescription) []func([]byte) (driver.Value, error) {
	conv := make([]func([]byte) (driver.Value, error), len(fds))
	for i, fd := range fds {
		oid, format := fd.DataTypeOID, fd.Format
		switch oid {
		case pgtype.BoolOID:
			conv[i] = scanTo[bool](m, oid, format, func(d bool) (driver.Value, error) { return d, nil })
		case pgtype.ByteaOID, pgtype.JSONOID, pgtype.JSONBOID, pgtype.XMLOID:
			conv[i] = scanTo[[]byte](m, oid, format, func(d []byte) (driver.Value, error) { return d, nil })
		case pgtype.CIDOID, pgtype.OIDOID, pgtype.XIDOID:
			conv[i] = scanTo[pgtype.Uint32](m, oid, format, func(d pgtype.Uint32) (driver.Value, error) { return d.Value() })
		case pgtype.DateOID:
			conv[i] = scanTo[pgtype.Date](m, oid, format, func(d pgtype.Date) (driver.Value, error) { return d.Value() })
		case pgtype.Float4OID:
			conv[i] = scanTo[float32](m, oid, format, func(d float32) (driver.Value, error) { return float64(d), nil })
		case pgtype.Float8OID:
			conv[i] = scanTo[float64](m, oid, format, func(d float64) (driver.Value, error) { return d, nil })
		case pgtype.Int2OID:
			conv[i] = scanTo[int16](m, oid, format, func(d int16) (driver.Value, error) { return int64(d), nil })
		case pgtype.Int4OID:
			conv[i] = scanTo[int32](m, oid, format, func(d int32) (driver.Value, error) { return int64(d), nil })
		case pgtype.Int8OID:
			conv[i] = scanTo[int64](m, oid, format, func(d int64) (driver.Value, error) { return d, nil })
		case pgtype.TimestampOID:
			conv[i] = scanTo[pgtype.Timestamp](m, oid, format, func(d pgtype.Timestamp) (driver.Value, error) { return d.Value() })
		case pgtype.TimestamptzOID:
			conv[i] = scanTo[pgtype.Timestamptz](m, oid, format, func(d pgtype.Timestamptz) (driver.Value, error) { return d.Value() })
		default:
			conv[i] = scanTo[string](m, oid, format, func(d string) (driver.Value, error) { return d, nil })
		}
	}
	return conv
}

func scanTo[T any](m *pgtype.Map, oid uint32, format int16, out func(T) (driver.Value, error)) func([]byte) (driver.Value, error) {
	var d T
	plan := m.PlanScan(oid, format, &d)
	return func(src []byte) (driver.Value, error) {
		if err := plan.Scan(src, &d); err != nil {
			return nil, err
		}
		return out(d)
	}
}

// BeginTx opens a savepoint through the branch's database/sql view and
// returns it as a *sql.Tx (see DB): its Commit releases the savepoint, its
// Rollback rolls back to it. With it the handle is what GORM calls a
// TxBeginner, so GORM's Transaction nests as savepoints on it.
func (h *Branch) BeginTx(ctx context.Context, opts *sql.TxOptions) (*sql.Tx, error) {
	return h.DB().BeginTx(ctx, opts)
}
