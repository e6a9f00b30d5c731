package xa

import (
	"context"
	"errors"
	"sync"
	"time"

	"github.com/xabridge/xabridge/decisionlog"
	"github.com/xabridge/xabridge/drivers"
)

// resumeKept drives the commit decisions the keeper holds for this node to
// completion, as resume does for the log's, and queues the deletion of the
// abort markers recovery no longer needs. A keeper that cannot be read now
// is left to recovery.
func (c *Coordinator) resumeKept(ctx context.Context) {
	// The coordinator configured with the keeper is the one place its
	// table is created (recovery refuses a missing one): now, so that
	// recovery finds it even if this process dies before its first
	// decision. A failure here is retried by the first decision.
	if tc, ok := c.keeper.(decisionlog.TableCreator); ok {
		if err := tc.EnsureDecisionTable(ctx); err != nil {
			c.logger.Warn("cannot create the decision keeper's table at start-up; the first kept decision tries again", "err", err)
		}
	}
	kept, err := c.keeper.ListDecisions(ctx)
	if err != nil {
		c.logger.Warn("cannot read the decision keeper's decisions at start-up; recovery will finish them", "err", err)
		return
	}
	for _, k := range kept {
		if k.GTRID.Node() != c.cfg.NodeID || k.Abort {
			continue
		}
		c.resume(k, c.keeperDecider)
	}
}

// Batching of the keeper's deletes.
const (
	forgetInterval = 100 * time.Millisecond
	forgetBatch    = 512
	forgetMaxQueue = 1 << 20 // beyond it rows are left for recovery to delete
)

// forgetter deletes finished decisions from the keeper's table in batches,
// on a goroutine owned by the coordinator (stopped by Close after phase 2).
// A row that is never deleted costs space only: recovery and the next
// start-up commit its (already committed) branches again, find nothing, and
// delete it.
type forgetter struct {
	c    *Coordinator
	kick chan struct{}
	quit chan struct{}
	done chan struct{}

	mu    sync.Mutex
	queue []drivers.GlobalID
}

func newForgetter(c *Coordinator) *forgetter {
	f := &forgetter{c: c, kick: make(chan struct{}, 1), quit: make(chan struct{}), done: make(chan struct{})}
	go f.run()
	return f
}

func (f *forgetter) add(g drivers.GlobalID) {
	f.mu.Lock()
	if len(f.queue) < forgetMaxQueue {
		f.queue = append(f.queue, g)
	}
	full := len(f.queue) >= forgetBatch
	f.mu.Unlock()
	if full {
		select {
		case f.kick <- struct{}{}:
		default:
		}
	}
}

func (f *forgetter) run() {
	defer close(f.done)
	t := time.NewTicker(forgetInterval)
	defer t.Stop()
	for {
		select {
		case <-f.quit:
			f.flush()
			return
		case <-t.C:
		case <-f.kick:
		}
		f.flush()
	}
}

// flush deletes everything queued, a batch per statement.
func (f *forgetter) flush() {
	for {
		f.mu.Lock()
		n := min(len(f.queue), forgetBatch)
		batch := f.queue[:n:n]
		f.queue = f.queue[n:]
		f.mu.Unlock()
		if n == 0 {
			return
		}
		ctx, cancel := context.WithTimeout(context.Background(), attemptTimeout)
		err := f.c.keeper.ForgetDecisions(ctx, batch)
		cancel()
		if err != nil {
			f.c.logger.Warn("could not delete finished decisions from the decision keeper; recovery will",
				"rows", len(batch), "err", err)
			if errors.Is(err, drivers.ErrRetryable) {
				return // try again at the next tick; these rows are dropped
			}
		}
	}
}

func (f *forgetter) stop() {
	close(f.quit)
	<-f.done
}
