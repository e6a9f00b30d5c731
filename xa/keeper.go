package xa

import (
	"context"
	"errors"
	"log/slog"
	"sync"
	"time"

	"github.com/xabridge/xabridge/decisionlog"
	"github.com/xabridge/xabridge/drivers"
)

// decisionKind says where a transaction's commit decision is durable.
type decisionKind int

const (
	decidedNowhere  decisionKind = iota // no decision record (a single voter)
	decidedInLog                        // in the decision Log
	decidedInKeeper                     // in the decision keeper's table
)

// endDecision records that phase 2 of g finished: an End record in the log,
// or a queued delete of the keeper's row.
func (c *Coordinator) endDecision(g drivers.GlobalID, dec decisionKind) {
	switch dec {
	case decidedInLog:
		if err := c.log.End(g); err != nil {
			c.logger.Warn("could not record the end of phase 2", "gtrid", g.String(), "err", err)
		}
	case decidedInKeeper:
		c.forget.add(g)
	default:
		return
	}
	c.hook(StepEnded, StepInfo{GTRID: g, Branch: -1})
}

// keeperBranch returns the branch on the decision keeper, if the
// transaction enlisted it.
func (tx *Tx) keeperBranch(branches []*txBranch) *txBranch {
	k := tx.c.keeper
	if k == nil {
		return nil
	}
	for _, tb := range branches {
		if tb.res == drivers.Resource(k) {
			return tb
		}
	}
	return nil
}

// commitWithKeeper commits with the decision kept in the keeper's own
// local commit: phase 1 on every other branch, then the keeper branch
// inserts the decision row and commits in one phase (that commit is the
// decision), then phase 2 on the others.
func (tx *Tx) commitWithKeeper(ctx context.Context, branches []*txBranch, kb *txBranch, untrack *bool) error {
	c := tx.c
	others := make([]*txBranch, 0, len(branches)-1)
	for _, tb := range branches {
		if tb != kb {
			others = append(others, tb)
		}
	}
	pctx, cancel := tx.untilDeadline(ctx)
	defer cancel()
	if err := tx.prepareAll(pctx, others, branches); err != nil {
		return err
	}
	voters := commitVoters(others)
	if len(voters) == 0 {
		// Everything else was read-only and is finished: the keeper is the
		// only branch left and commits on its own.
		return tx.commitOnePhase(ctx, kb)
	}
	// The same fence as the log's: no decision at or after the deadline.
	// (The table's primary key already excludes a decision after
	// recovery's abort marker; this keeps both decision stores alike.)
	start := c.stamp()
	c.hook(StepDeciding, StepInfo{GTRID: tx.gtrid, Branch: -1})
	if _, err := decisionlog.AdmitCommit(tx.gtrid, c.cfg.Now(), decisionlog.StateNone); err != nil {
		c.logger.Warn("commit decision refused by the fence (the transaction outlived its timeout); aborting",
			"gtrid", tx.gtrid.String(), "err", err)
		c.hook(StepDecisionRefused, StepInfo{GTRID: tx.gtrid, Branch: -1, Err: err})
		_ = tx.rollbackBranches(ctx, branches, "decision fenced")
		return tx.errorf(Aborted, "decide", "", err)
	}
	parts := make([]decisionlog.Participant, len(voters))
	for i, tb := range voters {
		parts[i] = participant(tb.res, tb.num)
	}
	// Like a log write, the decision is not abandoned half way because the
	// caller gave up: that would turn it into an unknown outcome. It is
	// still bounded, as a hung connection must surface.
	dctx, dcancel := context.WithTimeout(context.WithoutCancel(ctx), attemptTimeout)
	err := c.keeper.CommitWithDecision(dctx, kb.b, tx.gtrid, parts)
	dcancel()
	tx.closeBranch(kb)
	if err != nil {
		switch drivers.Classify(err) {
		case drivers.ErrRefused, drivers.ErrFailed, drivers.ErrRetryable:
			// Nothing committed on the keeper: the decision is abort.
			c.logger.Info("the decision keeper refused the commit decision; aborting",
				"gtrid", tx.gtrid.String(), "keeper", kb.res.Name(), "err", err)
			c.hook(StepDecisionRefused, StepInfo{GTRID: tx.gtrid, Branch: -1, Err: err})
			_ = tx.rollbackBranches(ctx, voters, "decision refused by the keeper")
			return tx.errorf(Aborted, "decide", kb.res.Name(), err)
		default:
			// The keeper's commit, and with it the decision, may or may
			// not have happened. Leave the others prepared: recovery
			// reads the keeper's table and settles them all or nothing.
			c.logger.Error("keeping the commit decision is in doubt; branches left prepared for recovery",
				"gtrid", tx.gtrid.String(), "keeper", kb.res.Name(), "err", err)
			for _, tb := range voters {
				tx.closeBranch(tb)
			}
			return tx.errorf(Unknown, "decide", kb.res.Name(), err)
		}
	}
	c.hook(StepDecided, StepInfo{GTRID: tx.gtrid, Branch: -1, Elapsed: since(start)})
	c.hook(StepCommitted, StepInfo{GTRID: tx.gtrid, Resource: kb.res.Name(), Branch: kb.num})
	if c.logger.Enabled(ctx, slog.LevelDebug) {
		c.logger.Debug("commit decision durable", "gtrid", tx.gtrid.String(), "branches", len(voters)+1, "store", kb.res.Name())
	}
	return tx.phase2(ctx, voters, decidedInKeeper, untrack)
}

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
		if k.GTRID.Node != c.cfg.NodeID || k.Abort {
			continue
		}
		c.resume(k, decidedInKeeper)
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
