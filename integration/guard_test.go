package integration

import (
	"context"
	"errors"
	"testing"

	"github.com/jackc/pgx/v5"

	"github.com/xabridge/xabridge/drivers"
	"github.com/xabridge/xabridge/drivers/sqlguard"
	"github.com/xabridge/xabridge/xa"
)

// Application SQL cannot end a branch (issue 14): MariaDB's own XA END and
// XA COMMIT … ONE PHASE on the branch's XID (which used to commit the
// MariaDB branch while PostgreSQL rolled back), and PostgreSQL's COMMIT
// inside a multi-statement string or a batch, are refused by the handles
// before they reach the server. Either way the global transaction decides:
// when it aborts, neither database keeps the work; when it commits, both
// do.
func TestApplicationSQLCannotEndABranch(t *testing.T) {
	for _, outcome := range []string{"abort", "commit"} {
		t.Run(outcome, func(t *testing.T) {
			b := newBank(t, 4)
			c := newCoord(t, b, nil)
			ctx := context.Background()
			acc := b.Table("accounts")
			t.Cleanup(func() {
				// Only there if the guard let the CREATE TABLE through.
				_, _ = b.MyDB.ExecContext(context.Background(), "DROP TABLE IF EXISTS xab_it_guard_never")
			})
			stop := errors.New("the application aborts")
			refused := func(what string, err error) error {
				t.Helper()
				if !errors.Is(err, sqlguard.ErrTransactionControl) || !errors.Is(err, drivers.ErrFailed) {
					t.Errorf("%s: %v, want a refusal (sqlguard.ErrTransactionControl, drivers.ErrFailed)", what, err)
				}
				return nil
			}
			err := c.Run(ctx, func(ctx context.Context, tx *xa.Tx) error {
				pg, err := b.PG.Enlist(ctx, tx)
				if err != nil {
					return err
				}
				my, err := b.My.Enlist(ctx, tx)
				if err != nil {
					return err
				}
				if _, err := pg.Exec(ctx, "UPDATE "+acc+" SET balance = balance - 10 WHERE id = 1"); err != nil {
					return err
				}
				if _, err := my.ExecContext(ctx, "UPDATE "+acc+" SET balance = balance + 10 WHERE id = 1"); err != nil {
					return err
				}
				x := my.XID().MySQL()
				_, err = my.ExecContext(ctx, "XA END "+x+"; XA COMMIT "+x+" ONE PHASE")
				refused("MariaDB: XA END; XA COMMIT ONE PHASE in one text", err)
				_, err = my.ExecContext(ctx, "XA END "+x)
				refused("MariaDB: XA END alone", err)
				_, err = my.ExecContext(ctx, "XA COMMIT "+x+" ONE PHASE")
				refused("MariaDB: XA COMMIT ONE PHASE alone", err)
				_, err = my.ExecContext(ctx, "UPDATE "+acc+" SET balance = balance + 0 WHERE id = 1; COMMIT")
				refused("MariaDB: COMMIT after an UPDATE", err)
				_, err = my.ExecContext(ctx, "CREATE TABLE xab_it_guard_never (id INT)")
				refused("MariaDB: DDL (implicit commit)", err)

				_, err = pg.Exec(ctx, "SELECT 1; COMMIT; SELECT 2")
				refused("PostgreSQL: COMMIT in a multi-statement string", err)
				batch := &pgx.Batch{}
				batch.Queue("SELECT 1")
				batch.Queue("COMMIT")
				refused("PostgreSQL: COMMIT in a batch", pg.SendBatch(ctx, batch).Close())

				// Both branches go on after the refusals.
				if _, err := pg.Exec(ctx, "UPDATE "+acc+" SET balance = balance - 5 WHERE id = 1"); err != nil {
					return err
				}
				if _, err := my.ExecContext(ctx, "UPDATE "+acc+" SET balance = balance + 5 WHERE id = 1"); err != nil {
					return err
				}
				if outcome == "abort" {
					return stop
				}
				return nil
			})
			wantPG, wantMy := int64(balance), int64(balance)
			if outcome == "abort" {
				if !errors.Is(err, xa.ErrAborted) || !errors.Is(err, stop) {
					t.Fatalf("Run = %v, want an abort carrying the callback's error", err)
				}
			} else {
				if err != nil {
					t.Fatalf("Run = %v, want a commit", err)
				}
				wantPG, wantMy = balance-15, balance+15
			}
			pg, my, err := b.Balances(ctx, 1, 1)
			if err != nil {
				t.Fatal(err)
			}
			if pg != wantPG || my != wantMy {
				t.Fatalf("balances pg=%d my=%d, want %d and %d", pg, my, wantPG, wantMy)
			}
			var n int
			if err := b.MyDB.QueryRowContext(ctx, "SELECT COUNT(*) FROM information_schema.TABLES WHERE TABLE_NAME = 'xab_it_guard_never'").Scan(&n); err != nil || n != 0 {
				t.Fatalf("the refused CREATE TABLE ran: %d tables (%v)", n, err)
			}
			assertInvariants(t, b, c.NodeID())
		})
	}
}
