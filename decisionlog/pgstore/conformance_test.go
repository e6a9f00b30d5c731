package pgstore

import (
	"context"
	"sync"
	"testing"
	"time"

	"github.com/xabridge/xabridge/decisionlog"
	"github.com/xabridge/xabridge/decisionlog/logtest"
)

// TestConformance runs the decision-log conformance suite on a Store, one
// fresh schema per subtest. The suite's clock is the store's fence clock
// (testHooks.fenceNow: the lease is still checked on the database's) and
// its Decision.At/Action.At clock (Options.Now); Reopen closes the store
// (releasing the lease) and opens it again on the same tables; Fail fails
// the next batch as a write of unknown outcome; Compact is Sweep, with
// ended decisions kept for no time (the background sweeper is off, so only
// the suite's Compact deletes anything).
func TestConformance(t *testing.T) {
	t.Parallel()
	pool := testPool(t, nil)
	logtest.Run(t, func(t *testing.T, clock *logtest.Clock) logtest.Harness {
		schema := testSchema(t, pool)
		var (
			mu   sync.Mutex
			fail error
		)
		hooks := &testHooks{
			fenceNow: clock.Now,
			failBatch: func() error {
				mu.Lock()
				defer mu.Unlock()
				err := fail
				fail = nil
				return err
			},
		}
		open := func(t *testing.T) *Store {
			return openStore(t, pool, schema, logtest.Node, func(o *Options) {
				o.Now = clock.Now
				o.hooks = hooks
				o.SweepEvery = -1
				o.EndedRetention = time.Microsecond
			})
		}
		cur := open(t)
		return logtest.Harness{
			Log: cur,
			Reopen: func(t *testing.T) decisionlog.Log {
				_ = cur.Close()
				cur = open(t)
				return cur
			},
			Compact: func(ctx context.Context) error {
				_, err := cur.Sweep(ctx)
				return err
			},
			Fail: func(err error) {
				mu.Lock()
				fail = err
				mu.Unlock()
			},
		}
	})
}
