// Code in the shape sqlc v1.x generates for PostgreSQL with the default
// sql_package (database/sql), written by hand here.

// Package ledgersql is sqlc-generated-style code for the PostgreSQL
// ledger, database/sql flavour.
package ledgersql

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

// Queries holds the generated query methods.
type Queries struct {
	db DBTX
}

// WithTx returns the queries on tx.
func (q *Queries) WithTx(tx *sql.Tx) *Queries {
	return &Queries{
		db: tx,
	}
}
