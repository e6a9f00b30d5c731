package xa

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/xabridge/xabridge/decisionlog"
	"github.com/xabridge/xabridge/drivers"
)

// Tx is one global transaction. Enlist resources with an adapter's Enlist
// method (or Tx.Enlist), work on the branches, then Commit or Rollback.
// A Tx may enlist from several goroutines; Commit and Rollback are called
// once.
type Tx struct {
	c     *Coordinator
	gtrid drivers.GlobalID
	began time.Time // for phase durations; zero when no hook is set

	mu       sync.Mutex
	branches []*txBranch
	byRes    map[drivers.Resource]*txBranch
	finished bool

	// handedOff: Commit stopped waiting for phase 2, which goes on in the
	// background (a field, not a local, so that it costs no allocation).
	handedOff atomic.Bool
}

type txBranch struct {
	res    drivers.Resource
	b      drivers.Branch
	num    int
	vote   drivers.Vote
	closed bool
}

// ErrTxDone is returned when a finished transaction is used again.
var ErrTxDone = errors.New("global transaction has already been committed or rolled back")

// GlobalID returns the transaction's global id (the gtrid of its XIDs).
func (tx *Tx) GlobalID() drivers.GlobalID { return tx.gtrid }

// Deadline returns the transaction's fence: no commit decision is written
// at or after it.
func (tx *Tx) Deadline() time.Time { return tx.gtrid.Deadline }

// Enlist returns the transaction's branch on r, beginning it on first use.
// r must be one of the coordinator's configured resources.
func (tx *Tx) Enlist(ctx context.Context, r drivers.Resource) (drivers.Branch, error) {
	tx.mu.Lock()
	defer tx.mu.Unlock()
	if tx.finished {
		return nil, ErrTxDone
	}
	if b, ok := tx.byRes[r]; ok {
		return b.b, nil
	}
	if reg, ok := tx.c.resources[r.Name()]; !ok || reg != r {
		return nil, fmt.Errorf("xa: resource %q is not one of the coordinator's configured resources (recovery could not reach it)", r.Name())
	}
	if len(tx.branches) >= drivers.MaxBranches {
		return nil, fmt.Errorf("xa: a global transaction can have at most %d branches", drivers.MaxBranches)
	}
	num := len(tx.branches)
	xid := drivers.XID{Global: tx.gtrid, Branch: uint8(num)}
	participant(r, num) // starts reading r's identity for the decision, if unknown
	begin := r.Begin
	if kb, ok := r.(decisionlog.KeptBeginner); ok && drivers.Resource(tx.c.keeper) == r {
		// The keeper's branch never prepares; its adapter may begin it
		// as a plain local transaction.
		begin = kb.BeginKept
	}
	b, err := begin(ctx, xid)
	if err != nil {
		return nil, err
	}
	tb := &txBranch{res: r, b: b, num: num}
	tx.branches = append(tx.branches, tb)
	tx.byRes[r] = tb
	tx.c.hook(StepEnlisted, StepInfo{GTRID: tx.gtrid, Resource: r.Name(), Branch: num})
	return b, nil
}

// finish marks the transaction finished and returns its branches.
func (tx *Tx) finish() ([]*txBranch, error) {
	tx.mu.Lock()
	defer tx.mu.Unlock()
	if tx.finished {
		return nil, ErrTxDone
	}
	tx.finished = true
	return tx.branches, nil
}

func (tx *Tx) errorf(o Outcome, op, resource string, err error) *Error {
	return &Error{GTRID: tx.gtrid.String(), Outcome: o, Op: op, Resource: resource, Err: err}
}

// Rollback rolls back every branch. Branches that cannot be rolled back
// within the coordinator's RollbackTimeout are left to recovery, which
// presumes them aborted: no commit decision is ever written for this
// transaction once Rollback is called.
func (tx *Tx) Rollback(ctx context.Context) error {
	return tx.rollback(ctx, "rollback", nil)
}

// rollback finishes the transaction by rolling it back. final is the error
// its caller will be given, for StepFinished (nil: a plain Rollback).
func (tx *Tx) rollback(ctx context.Context, why string, final *Error) error {
	branches, err := tx.finish()
	if err != nil {
		return err
	}
	rerr := tx.rollbackBranches(ctx, branches, why)
	tx.c.untrack(tx.gtrid)
	if tx.c.cfg.Hook != nil {
		if final == nil {
			final = tx.errorf(Aborted, "rollback", "", nil)
		}
		tx.reportFinished(final, len(branches))
	}
	return rerr
}

// reportFinished reports StepFinished: the transaction is over for its caller,
// who gets err.
func (tx *Tx) reportFinished(err error, branches int) {
	tx.c.hook(StepFinished, StepInfo{GTRID: tx.gtrid, Branch: -1, Err: err, Outcome: OutcomeOf(err), Branches: branches, Elapsed: since(tx.began)})
}

// rollbackBranches rolls back the branches in parallel. It uses a context
// detached from the caller's (a cancelled caller is a common reason to roll
// back) but bounded by RollbackTimeout.
func (tx *Tx) rollbackBranches(ctx context.Context, branches []*txBranch, why string) error {
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), tx.c.cfg.RollbackTimeout)
	defer cancel()
	errs := make([]error, len(branches))
	parallel(len(branches), func(i int) {
		tb := branches[i]
		if tb.vote == drivers.VoteReadOnly || tb.closed {
			return
		}
		err := retry(ctx, tb.b.Rollback, tx.c.logger, "gtrid", tx.gtrid.String(), "resource", tb.res.Name(), "op", "rollback")
		if err != nil {
			tx.c.logger.Warn("branch not rolled back; recovery will presume it aborted after the fence",
				"gtrid", tx.gtrid.String(), "resource", tb.res.Name(), "why", why, "err", err)
			errs[i] = err
		} else {
			tx.c.hook(StepRolledBack, StepInfo{GTRID: tx.gtrid, Resource: tb.res.Name(), Branch: tb.num})
		}
		tx.closeBranch(tb)
	})
	return errors.Join(errs...)
}

func (tx *Tx) closeBranch(tb *txBranch) {
	if tb.closed {
		return
	}
	tb.closed = true
	if err := tb.b.Close(); err != nil {
		tx.c.logger.Debug("closing branch", "gtrid", tx.gtrid.String(), "resource", tb.res.Name(), "err", err)
	}
}

// Commit commits the transaction: one-phase commit for a single branch;
// otherwise phase 1 (prepare every branch in parallel), a durable commit
// decision, and phase 2 (commit every prepared branch in parallel). It
// returns nil when every branch committed, or an *Error whose outcome says
// what happened (see OutcomeOf).
func (tx *Tx) Commit(ctx context.Context) error {
	branches, err := tx.finish()
	if err != nil {
		return err
	}
	tx.c.hook(StepWorkDone, StepInfo{GTRID: tx.gtrid, Branch: -1, Elapsed: since(tx.began)})
	err = tx.commit(ctx, branches)
	if tx.c.cfg.Hook != nil {
		tx.reportFinished(err, len(branches))
	}
	return err
}

// commit commits the finished transaction's branches (see Commit).
func (tx *Tx) commit(ctx context.Context, branches []*txBranch) error {
	c := tx.c
	untrack := true
	defer func() {
		if untrack {
			c.untrack(tx.gtrid)
		}
	}()

	switch len(branches) {
	case 0:
		return nil
	case 1:
		return tx.commitOnePhase(ctx, branches[0])
	}
	if kb := tx.keeperBranch(branches); kb != nil {
		return tx.commitWithKeeper(ctx, branches, kb, &untrack)
	}

	// Phase 1. Preparing after the fence is pointless: the decision would
	// be refused.
	pctx, cancel := tx.untilDeadline(ctx)
	defer cancel()
	if err := tx.prepareAll(pctx, branches, branches); err != nil {
		return err
	}

	voters := commitVoters(branches)
	switch len(voters) {
	case 0:
		return nil // every branch was read-only and is finished
	case 1:
		// The only branch with writes: nothing else can disagree with it,
		// so no decision record is needed. If we crash before its commit,
		// recovery presumes abort, which is still all-or-nothing.
		return tx.phase2(ctx, voters, decidedNowhere, &untrack)
	}

	// The decision. Written with a context the caller cannot cancel: a
	// write abandoned half way would leave the outcome unknown.
	d := decisionlog.Decision{GTRID: tx.gtrid, At: c.cfg.Now()}
	for _, tb := range voters {
		d.Participants = append(d.Participants, participant(tb.res, tb.num))
	}
	start := c.stamp()
	c.hook(StepDeciding, StepInfo{GTRID: tx.gtrid, Branch: -1})
	if err := c.log.Commit(context.WithoutCancel(ctx), d); err != nil {
		if errors.Is(err, decisionlog.ErrFenced) {
			c.logger.Warn("commit decision refused by the fence (the transaction outlived its timeout); aborting",
				"gtrid", tx.gtrid.String(), "err", err)
			c.hook(StepDecisionRefused, StepInfo{GTRID: tx.gtrid, Branch: -1, Err: err})
			_ = tx.rollbackBranches(ctx, voters, "decision fenced")
			return tx.errorf(Aborted, "decide", "", err)
		}
		// Fail-stop (DESIGN rule 6): the decision may or may not be on
		// disk. Leave every branch prepared for recovery; never guess.
		c.logger.Error("decision log write failed; transaction is in doubt, branches left prepared for recovery",
			"gtrid", tx.gtrid.String(), "err", err)
		for _, tb := range voters {
			tx.closeBranch(tb)
		}
		return tx.errorf(Unknown, "decide", "", err)
	}
	c.hook(StepDecided, StepInfo{GTRID: tx.gtrid, Branch: -1, Elapsed: since(start)})
	if c.logger.Enabled(ctx, slog.LevelDebug) {
		c.logger.Debug("commit decision durable", "gtrid", tx.gtrid.String(), "branches", len(voters), "store", "log")
	}
	return tx.phase2(ctx, voters, decidedInLog, &untrack)
}

// prepareAll prepares toPrepare in parallel (phase 1). If any fails, it
// rolls back all of all and returns the Aborted error.
func (tx *Tx) prepareAll(ctx context.Context, toPrepare, all []*txBranch) error {
	c := tx.c
	start := c.stamp()
	errs := make([]error, len(toPrepare))
	parallel(len(toPrepare), func(i int) {
		tb := toPrepare[i]
		c.hook(StepPreparing, StepInfo{GTRID: tx.gtrid, Resource: tb.res.Name(), Branch: tb.num})
		v, err := tb.b.Prepare(ctx)
		if err != nil {
			errs[i] = err
			c.hook(StepPrepareFailed, StepInfo{GTRID: tx.gtrid, Resource: tb.res.Name(), Branch: tb.num, Err: err})
			return
		}
		tb.vote = v
		if v == drivers.VoteReadOnly {
			tx.closeBranch(tb)
		}
		c.hook(StepPrepared, StepInfo{GTRID: tx.gtrid, Resource: tb.res.Name(), Branch: tb.num})
	})
	for i, err := range errs {
		if err != nil {
			if drivers.Classify(err) == drivers.ErrInDoubt {
				c.logger.Warn("branch in doubt during prepare; aborting", "gtrid", tx.gtrid.String(), "resource", toPrepare[i].res.Name(), "err", err)
			}
			_ = tx.rollbackBranches(ctx, all, "prepare failed")
			return tx.errorf(Aborted, "prepare", toPrepare[i].res.Name(), err)
		}
	}
	c.hook(StepAllPrepared, StepInfo{GTRID: tx.gtrid, Branch: -1, Elapsed: since(start)})
	return nil
}

// commitVoters returns the branches that voted commit.
func commitVoters(branches []*txBranch) []*txBranch {
	var voters []*txBranch
	for _, tb := range branches {
		if tb.vote == drivers.VoteCommit {
			voters = append(voters, tb)
		}
	}
	return voters
}

func (tx *Tx) commitOnePhase(ctx context.Context, tb *txBranch) error {
	c := tx.c
	pctx, cancel := tx.untilDeadline(ctx)
	defer cancel()
	start := c.stamp()
	c.hook(StepCommitting, StepInfo{GTRID: tx.gtrid, Resource: tb.res.Name(), Branch: tb.num})
	err := tb.b.CommitOnePhase(pctx)
	tx.closeBranch(tb)
	if err == nil {
		c.hook(StepOnePhaseCommit, StepInfo{GTRID: tx.gtrid, Resource: tb.res.Name(), Branch: tb.num, Elapsed: since(start)})
		return nil
	}
	c.hook(StepCommitFailed, StepInfo{GTRID: tx.gtrid, Resource: tb.res.Name(), Branch: tb.num, Err: err})
	if drivers.Classify(err) == drivers.ErrInDoubt {
		c.logger.Warn("one-phase commit in doubt", "gtrid", tx.gtrid.String(), "resource", tb.res.Name(), "err", err)
		return tx.errorf(Unknown, "commit-one-phase", tb.res.Name(), err)
	}
	// The server answered with an error: it did not commit.
	return tx.errorf(Aborted, "commit-one-phase", tb.res.Name(), err)
}

// phase2 commits the prepared voters in the background, owned by the
// coordinator, and waits up to Phase2Timeout (or until ctx ends) for them.
// dec says where the commit decision is durable: if it is, an unfinished
// phase 2 is CommitPending (the outcome is commit whatever happens);
// otherwise it is Unknown (a crash now would let recovery presume abort).
func (tx *Tx) phase2(ctx context.Context, voters []*txBranch, dec decisionKind, untrack *bool) error {
	logged := dec != decidedNowhere
	c := tx.c
	p2start := c.stamp()
	wait := c.cfg.Phase2Timeout
	if !(logged && c.cfg.AsyncPhase2) {
		// The common case costs no goroutine hand-off: one attempt per
		// branch on this goroutine (the hand-off to a background goroutine
		// and back showed in the scheduler's share of a bench profile).
		// Only branches that did not commit go on in the background.
		start := time.Now()
		voters = tx.commitOnce(ctx, voters)
		if len(voters) == 0 {
			c.hook(StepAllCommitted, StepInfo{GTRID: tx.gtrid, Branch: -1, Elapsed: since(p2start)})
			c.endDecision(tx.gtrid, dec)
			return nil // Commit untracks
		}
		wait = max(0, wait-time.Since(start))
	}
	*untrack = false // the background goroutine untracks when phase 2 ends
	async := logged && c.cfg.AsyncPhase2
	done := make(chan struct{})
	var allCommitted atomic.Bool // set before done is closed
	c.goBackground(func() {
		// Untracked before done is closed (defers run last first): once
		// Commit returns nil, Active no longer reports the transaction.
		defer close(done)
		defer c.untrack(tx.gtrid)
		ok := make([]bool, len(voters))
		parallel(len(voters), func(i int) {
			tb := voters[i]
			if async {
				// Otherwise commitOnce already reported the attempt.
				c.hook(StepCommitting, StepInfo{GTRID: tx.gtrid, Resource: tb.res.Name(), Branch: tb.num})
			}
			err := retry(c.bgCtx, tb.b.Commit, c.logger, "gtrid", tx.gtrid.String(), "resource", tb.res.Name(), "op", "commit")
			// Close either way: after success the connection goes back to
			// its pool; after Close() stopped us, the prepared branch is
			// detached from its session so recovery can finish it.
			tx.closeBranch(tb)
			if err != nil {
				c.logger.Warn("phase 2 stopped before the branch committed; recovery will finish it",
					"gtrid", tx.gtrid.String(), "resource", tb.res.Name(), "err", err)
				c.hook(StepCommitFailed, StepInfo{GTRID: tx.gtrid, Resource: tb.res.Name(), Branch: tb.num, Err: err})
				return
			}
			ok[i] = true
			c.hook(StepCommitted, StepInfo{GTRID: tx.gtrid, Resource: tb.res.Name(), Branch: tb.num})
		})
		for _, o := range ok {
			if !o {
				return
			}
		}
		if tx.handedOff.Load() {
			// The caller was told ErrCommitPending (or ErrOutcomeUnknown):
			// that the branches caught up is worth knowing.
			c.logger.Info("phase 2 finished in the background", "gtrid", tx.gtrid.String())
		}
		c.hook(StepAllCommitted, StepInfo{GTRID: tx.gtrid, Branch: -1, Elapsed: since(p2start)})
		c.endDecision(tx.gtrid, dec)
		allCommitted.Store(true)
	})

	if async {
		c.hook(StepPhase2Handoff, StepInfo{GTRID: tx.gtrid, Branch: -1})
		return nil
	}
	t := time.NewTimer(wait)
	defer t.Stop()
	var why error
	select {
	case <-done:
		if allCommitted.Load() {
			return nil
		}
		// Phase 2 stopped before every branch committed: Close stopped
		// the retries. The branches left prepared are recovery's now.
		why = errors.New("phase 2 stopped before every branch committed (the coordinator is closing)")
	case <-t.C:
		why = errors.New("phase 2 did not finish within the phase 2 timeout")
	case <-ctx.Done():
		why = context.Cause(ctx)
	}
	tx.handedOff.Store(true)
	c.logger.Warn("phase 2 unfinished when Commit returns; the branches still prepared are finished in the background or by recovery",
		"gtrid", tx.gtrid.String(), "decision_durable", logged, "err", why)
	c.hook(StepPhase2Handoff, StepInfo{GTRID: tx.gtrid, Branch: -1, Err: why})
	if logged {
		return tx.errorf(CommitPending, "commit", "", why)
	}
	return tx.errorf(Unknown, "commit", "", why)
}

// commitOnce makes one phase 2 attempt on every voter, in parallel, bounded
// by the phase 2 timeout and ended early by the caller's ctx or Close. It
// returns the voters that did not commit; they keep their connections for
// the background retries.
func (tx *Tx) commitOnce(ctx context.Context, voters []*txBranch) []*txBranch {
	c := tx.c
	actx, cancel := context.WithTimeout(c.bgCtx, min(c.cfg.Phase2Timeout, attemptTimeout))
	defer cancel()
	stop := context.AfterFunc(ctx, cancel)
	defer stop()
	failed := make([]bool, len(voters))
	parallel(len(voters), func(i int) {
		tb := voters[i]
		c.hook(StepCommitting, StepInfo{GTRID: tx.gtrid, Resource: tb.res.Name(), Branch: tb.num})
		if err := tb.b.Commit(actx); err != nil {
			c.logger.Debug("phase 2 attempt failed; retrying in the background", "gtrid", tx.gtrid.String(), "resource", tb.res.Name(), "err", err)
			failed[i] = true
			c.hook(StepCommitFailed, StepInfo{GTRID: tx.gtrid, Resource: tb.res.Name(), Branch: tb.num, Err: err})
			return
		}
		tx.closeBranch(tb)
		c.hook(StepCommitted, StepInfo{GTRID: tx.gtrid, Resource: tb.res.Name(), Branch: tb.num})
	})
	var left []*txBranch
	for i, f := range failed {
		if f {
			left = append(left, voters[i])
		}
	}
	return left
}

// untilDeadline returns ctx bounded by the transaction's fence deadline. The
// remaining time is measured on the coordinator's clock (Config.Now), the
// clock that set the deadline, so the two always agree.
func (tx *Tx) untilDeadline(ctx context.Context) (context.Context, context.CancelFunc) {
	return context.WithTimeout(ctx, tx.gtrid.Deadline.Sub(tx.c.cfg.Now()))
}

// parallel runs f(0..n-1) concurrently and waits; the last runs on the
// calling goroutine, so two branches cost one extra goroutine.
func parallel(n int, f func(i int)) {
	if n == 0 {
		return
	}
	if n == 1 {
		f(0)
		return
	}
	var wg sync.WaitGroup
	wg.Add(n - 1)
	for i := 0; i < n-1; i++ {
		go func() {
			defer wg.Done()
			f(i)
		}()
	}
	f(n - 1)
	wg.Wait()
}
