package replica_test

import (
	"context"
	"database/sql"
	"errors"
	"log"
	"os"
	"time"

	mysqldriver "github.com/go-sql-driver/mysql"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/xabridge/xabridge/decisionlog/pgstore"
	"github.com/xabridge/xabridge/drivers"
	"github.com/xabridge/xabridge/mysql"
	"github.com/xabridge/xabridge/postgres"
	"github.com/xabridge/xabridge/replica"
	"github.com/xabridge/xabridge/xa"
)

// One of several replicas of a payments service: the decisions live in a
// shared PostgreSQL store (here the ledger's own database), and if this
// replica dies another one settles its transactions.
func Example() {
	ctx := context.Background()
	pool, err := pgxpool.New(ctx, "postgres://app@127.0.0.1:5432/ledger")
	if err != nil {
		log.Fatal(err)
	}
	defer pool.Close()
	cfg, err := mysql.ParseURL("mysql://app@127.0.0.1:3306/wallet")
	if err != nil {
		log.Fatal(err)
	}
	conn, err := mysqldriver.NewConnector(cfg)
	if err != nil {
		log.Fatal(err)
	}
	db := sql.OpenDB(conn)
	defer db.Close()

	ledger := postgres.New("ledger", pool)
	wallet := mysql.New("wallet", db)
	r, err := replica.Open(ctx, replica.Config{
		Coordinator: xa.Config{
			NodeID:    os.Getenv("POD_NAME"), // one stable id per replica, e.g. a StatefulSet's pod name
			Resources: []drivers.Resource{ledger, wallet},
		},
		Pool:  pool, // the shared decision store
		Store: pgstore.Options{LeaseTTL: 10 * time.Second},
	})
	if errors.Is(err, pgstore.ErrNodeLeased) {
		log.Fatalf("another live replica runs with this node id: %v", err)
	}
	if err != nil {
		log.Fatal(err)
	}
	defer r.Close() // releases the lease: a restart or a peer need not wait for it

	err = r.Coordinator().Run(ctx, func(ctx context.Context, tx *xa.Tx) error {
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
	case xa.Committed, xa.CommitPending:
		log.Print("transferred")
	case xa.Aborted:
		log.Printf("not transferred: %v", err)
	default:
		log.Printf("in doubt; recovery (this replica's, or a peer's) settles it: %v", err)
	}
}
