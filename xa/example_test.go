package xa_test

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"log"

	mysqldriver "github.com/go-sql-driver/mysql"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/xabridge/xabridge/drivers"
	"github.com/xabridge/xabridge/mysql"
	"github.com/xabridge/xabridge/postgres"
	"github.com/xabridge/xabridge/xa"
)

// Move money from a PostgreSQL ledger to a MySQL wallet, atomically.
func Example() {
	ctx := context.Background()
	pool, err := pgxpool.New(ctx, "postgres://app@127.0.0.1:5432/ledger")
	if err != nil {
		log.Fatal(err)
	}
	cfg, err := mysql.ParseURL("mysql://app@127.0.0.1:3306/wallet")
	if err != nil {
		log.Fatal(err)
	}
	conn, err := mysqldriver.NewConnector(cfg)
	if err != nil {
		log.Fatal(err)
	}
	db := sql.OpenDB(conn)

	ledger := postgres.New("ledger", pool)
	wallet := mysql.New("wallet", db)
	coord, err := xa.New(ctx, xa.Config{
		NodeID:    "payments-1",            // stable across restarts
		LogDir:    "/var/lib/xabridge/log", // the durable decision log
		Resources: []drivers.Resource{ledger, wallet},
	})
	if err != nil {
		log.Fatal(err)
	}
	defer coord.Close()

	err = coord.Run(ctx, func(ctx context.Context, tx *xa.Tx) error {
		l, err := ledger.Enlist(ctx, tx)
		if err != nil {
			return err
		}
		w, err := wallet.Enlist(ctx, tx)
		if err != nil {
			return err
		}
		if _, err := l.Exec(ctx, "UPDATE accounts SET balance = balance - $1 WHERE id = $2", 100, 7); err != nil {
			return err
		}
		_, err = w.ExecContext(ctx, "UPDATE wallets SET balance = balance + ? WHERE user_id = ?", 100, 7)
		return err
	})
	switch xa.OutcomeOf(err) {
	case xa.Committed, xa.CommitPending: // both committed (or will, whatever happens)
	case xa.Aborted: // neither committed; xa.Retryable(err) says whether to try again
	case xa.Unknown: // in doubt: recovery settles it; do not retry blindly
	}
}

// Classify what Run returned.
func ExampleOutcomeOf() {
	err := error(&xa.Error{Outcome: xa.Aborted, Op: xa.OpPrepare, Resource: "wallet", Err: drivers.ErrRefused})
	fmt.Println(xa.OutcomeOf(err), errors.Is(err, xa.ErrAborted), errors.Is(err, drivers.ErrRefused))
	fmt.Println(xa.OutcomeOf(nil))
	// Output:
	// aborted true true
	// committed
}

// Begin, Commit and Rollback give explicit control where Run's callback
// shape does not fit.
func ExampleCoordinator_Begin() {
	ctx := context.Background()
	var coord *xa.Coordinator     // from xa.New
	var ledger *postgres.Resource // registered in coord's Config.Resources
	if coord == nil {
		return
	}
	tx, err := coord.Begin(ctx)
	if err != nil {
		log.Fatal(err)
	}
	l, err := ledger.Enlist(ctx, tx)
	if err != nil {
		_ = tx.Rollback(ctx)
		log.Fatal(err)
	}
	if _, err := l.Exec(ctx, "INSERT INTO audit (note) VALUES ($1)", "hello"); err != nil {
		_ = tx.Rollback(ctx)
		log.Fatal(err)
	}
	if err := tx.Commit(ctx); err != nil {
		log.Fatal(err)
	}
}
