// Code in the shape sqlc v1.x generates for MySQL (database/sql), written
// by hand here.

// Package stock is sqlc-generated-style code for the MariaDB stock
// tables, database/sql flavour.
package stock

import (
	"context"
	"database/sql"
)

// DBTX is what sqlc's database/sql queries run on.
type DBTX interface {
	ExecContext(context.Context, string, ...interface{}) (sql.Result, error)
	PrepareContext(context.Context, string) (*sql.Stmt, error)
	QueryContext(context.Context, string, ...interface{}) (*sql.Rows, error)
	QueryRowContext(context.Context, string, ...interface{}) *sql.Row
}

// New returns the queries on db.
func New(db DBTX) *Queries {
	return &Queries{db: db}
}

// Prepare prepares every query on db, as sqlc's emit_prepared_queries does.
func Prepare(ctx context.Context, db DBTX) (*Queries, error) {
	q := Queries{db: db}
	var err error
	if q.reserveStmt, err = db.PrepareContext(ctx, reserve); err != nil {
		return nil, err
	}
	return &q, nil
}

// Close closes the prepared statements.
func (q *Queries) Close() error {
	if q.reserveStmt != nil {
		return q.reserveStmt.Close()
	}
	return nil
}

// Queries holds the generated query methods.
type Queries struct {
	db          DBTX
	reserveStmt *sql.Stmt
}

// WithTx returns the queries on tx.
func (q *Queries) WithTx(tx *sql.Tx) *Queries {
	return &Queries{
		db: tx,
	}
}
