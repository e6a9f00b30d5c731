package postgres_test

import (
	"context"
	"database/sql"
	"errors"

	"github.com/jackc/pgx/v5"
	"github.com/xabridge/xabridge/postgres"
	"github.com/xabridge/xabridge/xa"
)

var errInsufficientFunds = errors.New("insufficient funds")

// chargeLedger is a repository function of the kind services already
// have: it takes a pgx.Tx.
func chargeLedger(ctx context.Context, tx pgx.Tx, account, amount int64) error {
	tag, err := tx.Exec(ctx, "UPDATE ledger_accounts SET balance = balance - $2 WHERE id = $1 AND balance >= $2", account, amount)
	if err != nil {
		return err
	}
	if tag.RowsAffected() == 0 {
		return errInsufficientFunds
	}
	return nil
}

// The handle is a pgx.Tx: pass it to code that takes one. pgx.BeginFunc
// on it runs in a savepoint, so a failure inside undoes only that part.
func ExampleBranch_Begin() {
	ctx := context.Background()
	var coord *xa.Coordinator     // from xa.New
	var ledger *postgres.Resource // in coord's Config.Resources
	err := coord.Run(ctx, func(ctx context.Context, tx *xa.Tx) error {
		l, err := ledger.Enlist(ctx, tx)
		if err != nil {
			return err
		}
		if err := chargeLedger(ctx, l, 7, 100); err != nil {
			return err // rolls back every branch
		}
		// Best effort: a duplicate bonus rolls back to its savepoint only.
		_ = pgx.BeginFunc(ctx, l, func(sp pgx.Tx) error {
			_, err := sp.Exec(ctx, "INSERT INTO ledger_bonus (account_id) VALUES ($1)", 7)
			return err
		})
		return nil
	})
	_ = err
}

// Branch.DB is a database/sql view of the branch, for GORM
// (gormpostgres.Config{Conn: l.DB()}), sqlx (sqlx.NewDb(l.DB(), "pgx")) or
// any *sql.DB code; BeginTx on it is a savepoint.
func ExampleBranch_DB() {
	ctx := context.Background()
	var coord *xa.Coordinator     // from xa.New
	var ledger *postgres.Resource // in coord's Config.Resources
	err := coord.Run(ctx, func(ctx context.Context, tx *xa.Tx) error {
		l, err := ledger.Enlist(ctx, tx)
		if err != nil {
			return err
		}
		db := l.DB()
		var balance int64
		if err := db.QueryRowContext(ctx, "SELECT balance FROM ledger_accounts WHERE id = $1 FOR UPDATE", 7).Scan(&balance); err != nil {
			return err
		}
		sp, err := db.BeginTx(ctx, nil) // SAVEPOINT
		if err != nil {
			return err
		}
		if _, err := sp.ExecContext(ctx, "INSERT INTO ledger_entries (account_id, amount) VALUES ($1, $2)", 7, -100); err != nil {
			_ = sp.Rollback() // ROLLBACK TO SAVEPOINT
			return err
		}
		return sp.Commit() // RELEASE SAVEPOINT
	})
	_ = err
}

// sqlc's database/sql DBTX is satisfied by the handle itself.
func ExampleBranch_ExecContext() {
	type DBTX interface { // as sqlc generates it
		ExecContext(context.Context, string, ...any) (sql.Result, error)
		PrepareContext(context.Context, string) (*sql.Stmt, error)
		QueryContext(context.Context, string, ...any) (*sql.Rows, error)
		QueryRowContext(context.Context, string, ...any) *sql.Row
	}
	var l *postgres.Branch // from ledger.Enlist
	var _ DBTX = l
}
