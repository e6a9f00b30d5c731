package integration

import (
	"context"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/xabridge/xabridge/xa"
)

// TestRunRetryRealDeadlock makes two cross-database transfers deadlock for
// real on one engine (each updates the same two hot rows, in opposite
// order, and waits until the other holds its first row), and runs them
// with RunRetry. The database aborts one (PostgreSQL 40P01, MariaDB 1213);
// RunRetry runs that one again, and both end committed, each counted once:
// every extra run follows an abort with reason conflict, and each side
// records two transfers.
func TestRunRetryRealDeadlock(t *testing.T) {
	for _, engine := range []string{"postgres", "mariadb"} {
		t.Run(engine, func(t *testing.T) {
			b := newBank(t, 4)
			var mu sync.Mutex
			reasons := map[xa.Reason]int{}
			c := newCoord(t, b, func(cfg *xa.Config) {
				cfg.Hook = func(s xa.Step, info xa.StepInfo) {
					if s == xa.StepFinished {
						mu.Lock()
						reasons[xa.ReasonOf(info.Err)]++
						if info.Err != nil {
							t.Logf("aborted: %v", info.Err)
						}
						mu.Unlock()
					}
				}
			})
			acc, trs := b.Table("accounts"), b.Table("transfers")
			ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
			defer cancel()

			// holding[k] is closed once transfer k holds its first hot row
			// (in its first run only).
			holding := [2]chan struct{}{make(chan struct{}), make(chan struct{})}
			var runs [2]atomic.Int32
			var errs [2]error
			var wg sync.WaitGroup
			for k := range 2 {
				wg.Go(func() {
					errs[k] = c.RunRetry(ctx, xa.RetryPolicy{MaxAttempts: 3}, func(ctx context.Context, tx *xa.Tx) error {
						run := runs[k].Add(1)
						id := tx.GlobalID().String()
						pg, err := b.PG.Enlist(ctx, tx)
						if err != nil {
							return err
						}
						my, err := b.My.Enlist(ctx, tx)
						if err != nil {
							return err
						}
						// The hot rows take 5 each (debit on PostgreSQL,
						// credit on MariaDB); the other side moves 10 on a
						// row of this transfer's own.
						hot := func(row int64) error {
							if engine == "postgres" {
								_, err := pg.Exec(ctx, "UPDATE "+acc+" SET balance = balance - 5 WHERE id = $1", row)
								return err
							}
							_, err := my.ExecContext(ctx, "UPDATE "+acc+" SET balance = balance + 5 WHERE id = ?", row)
							return err
						}
						first, second := int64(1), int64(2)
						if k == 1 {
							first, second = second, first
						}
						if err := hot(first); err != nil {
							return err
						}
						if run == 1 {
							close(holding[k])
							select {
							case <-holding[1-k]:
							case <-ctx.Done():
								return ctx.Err()
							}
						}
						if err := hot(second); err != nil {
							return err // the deadlock victim's error, returned as is
						}
						own := int64(3 + k)
						if engine == "postgres" {
							_, err = my.ExecContext(ctx, "UPDATE "+acc+" SET balance = balance + 10 WHERE id = ?", own)
						} else {
							_, err = pg.Exec(ctx, "UPDATE "+acc+" SET balance = balance - 10 WHERE id = $1", own)
						}
						if err != nil {
							return err
						}
						if _, err := pg.Exec(ctx, "INSERT INTO "+trs+" (id, amount) VALUES ($1, 10)", id); err != nil {
							return err
						}
						_, err = my.ExecContext(ctx, "INSERT INTO "+trs+" (id, amount) VALUES (?, 10)", id)
						return err
					})
				})
			}
			wg.Wait()

			for k, err := range errs {
				if err != nil {
					t.Errorf("transfer %d: %v (reason %s)", k, err, xa.ReasonOf(err))
				}
			}
			// The database picks one victim; should a run again meet the
			// other transfer's locks and lose again, it is run again too:
			// every run but the two that committed ended in a conflict.
			mu.Lock()
			n := int(runs[0].Load() + runs[1].Load())
			if reasons[xa.ReasonConflict] < 1 || reasons[xa.ReasonNone] != 2 || len(reasons) != 2 || n != 2+reasons[xa.ReasonConflict] {
				t.Errorf("%d runs; finished transactions by reason %v; want at least one conflict, each run again, and two committed", n, reasons)
			}
			mu.Unlock()
			st := assertInvariants(t, b, c.NodeID())
			if st.PGTransfers != 2 || st.MyTransfers != 2 {
				t.Errorf("transfers recorded: %d on postgres, %d on mariadb; want 2 each (each counted once)", st.PGTransfers, st.MyTransfers)
			}
			// The hot rows took both transfers' 5 each, once.
			for _, row := range []int64{1, 2} {
				pgBal, myBal, err := b.Balances(context.Background(), row, row)
				if err != nil {
					t.Fatal(err)
				}
				want, got := int64(balance+10), myBal
				if engine == "postgres" {
					want, got = balance-10, pgBal
				}
				if got != want {
					t.Errorf("hot row %d on %s: balance %d, want %d", row, engine, got, want)
				}
			}
		})
	}
}
