package examples_test

import (
	"context"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/xabridge/xabridge/examples"
)

// BenchmarkCheckout runs each recipe's checkout from clients goroutines,
// each on its own stock item and account (no row contention), with pools
// of conns connections per engine, and reports checkouts per second:
//
//	go test -run '^$' -bench Checkout -benchtime 2000x
func BenchmarkCheckout(b *testing.B) {
	for _, tc := range []struct{ clients, conns int }{{8, 10}, {32, 4}, {32, 34}} {
		w := newWorldConns(b, tc.conns)
		ctx := context.Background()
		for c := range tc.clients {
			mustPG(b, w.pool, fmt.Sprintf("INSERT INTO ledger_accounts VALUES (%d, 1000000000)", 100+c))
			mustMy(b, w.my, fmt.Sprintf("INSERT INTO stock VALUES ('b-%d', 1000000000)", c))
		}
		recipes := []struct {
			name string
			run  func(context.Context, *examples.Shop, examples.Order) error
		}{
			{"sqlc", examples.CheckoutSqlc},
			{"sqlc-database-sql", examples.CheckoutSqlcDatabaseSQL},
			{"pgx.Tx", examples.CheckoutPgxTx},
			{"gorm", func(ctx context.Context, s *examples.Shop, o examples.Order) error {
				return examples.CheckoutGORM(ctx, s, w.pgGorm, w.myGorm, o)
			}},
			{"sqlx", examples.CheckoutSqlx},
		}
		for _, r := range recipes {
			b.Run(fmt.Sprintf("%s/clients=%d/conns=%d", r.name, tc.clients, tc.conns), func(b *testing.B) {
				var (
					next atomic.Int64
					wg   sync.WaitGroup
					fail atomic.Value
				)
				start := time.Now()
				for c := range tc.clients {
					wg.Go(func() {
						for {
							i := next.Add(1)
							if i > int64(b.N) {
								return
							}
							o := examples.Order{ID: fmt.Sprintf("%s-%d-%d", r.name, c, i), SKU: fmt.Sprintf("b-%d", c),
								Qty: 1, Account: int64(100 + c), Amount: 1}
							if err := r.run(ctx, w.shop, o); err != nil {
								fail.Store(err)
								return
							}
						}
					})
				}
				wg.Wait()
				if err, _ := fail.Load().(error); err != nil {
					b.Fatal(err)
				}
				b.ReportMetric(float64(b.N)/time.Since(start).Seconds(), "checkouts/s")
			})
		}
	}
}
