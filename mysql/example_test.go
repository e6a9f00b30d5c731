package mysql_test

import (
	"context"

	"github.com/xabridge/xabridge/mysql"
	"github.com/xabridge/xabridge/xa"
)

// Statements prepared on a branch run on its pinned session and are closed
// with the branch (sqlc's emit_prepared_queries does this).
func ExampleBranch_PrepareContext() {
	ctx := context.Background()
	var coord *xa.Coordinator // from xa.New
	var stock *mysql.Resource // in coord's Config.Resources
	err := coord.Run(ctx, func(ctx context.Context, tx *xa.Tx) error {
		w, err := stock.Enlist(ctx, tx)
		if err != nil {
			return err
		}
		st, err := w.PrepareContext(ctx, "UPDATE stock SET qty = qty - ? WHERE sku = ? AND qty >= ?")
		if err != nil {
			return err
		}
		defer st.Close()
		for _, sku := range []string{"a-1", "b-2"} {
			if _, err := st.ExecContext(ctx, 1, sku, 1); err != nil {
				return err
			}
		}
		return nil
	})
	_ = err
}

// BeginTx is a savepoint: Commit releases it, Rollback rolls back to it,
// and the XA branch goes on. GORM's Transaction on the handle does this.
func ExampleBranch_BeginTx() {
	ctx := context.Background()
	var coord *xa.Coordinator // from xa.New
	var stock *mysql.Resource // in coord's Config.Resources
	err := coord.Run(ctx, func(ctx context.Context, tx *xa.Tx) error {
		w, err := stock.Enlist(ctx, tx)
		if err != nil {
			return err
		}
		sp, err := w.BeginTx(ctx, nil) // SAVEPOINT
		if err != nil {
			return err
		}
		if _, err := sp.ExecContext(ctx, "INSERT INTO coupon_uses (coupon, order_id) VALUES (?, ?)", "WELCOME", "o-1"); err != nil {
			_ = sp.Rollback() // ROLLBACK TO SAVEPOINT: the coupon was used already; go on without it
		} else if err := sp.Commit(); err != nil { // RELEASE SAVEPOINT
			return err
		}
		_, err = w.ExecContext(ctx, "INSERT INTO reservations (order_id, sku, qty) VALUES (?, ?, ?)", "o-1", "a-1", 1)
		return err
	})
	_ = err
}
