package xa

// This file is the protocol, top to bottom: a transaction begins (in
// Coordinator.Begin), enlists branches, and then Commit runs two-phase
// commit on them:
//
//   - a single branch commits in one phase, with no decision record;
//   - otherwise every branch prepares in parallel (phase 1); a read-only
//     vote takes the branch out of phase 2;
//   - the commit decision is made durable by a decider (the decision log,
//     or the decision keeper's own local commit: decide.go), unless a
//     single branch voted commit; a decision that may or may not be durable
//     is fail-stop: the branches stay prepared for recovery;
//   - phase 2 commits every voter in parallel, in one loop (commitBranches)
//     shared by Commit, by background completion and by a decision resumed
//     after a restart.
//
// Every abort before the decision rolls back every branch (rollback).

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
	kept     *txBranch // the branch on the decision keeper, if enlisted
	finished bool
	label    string // the caller's label (SetLabel); part of every XID

	// handedOff: Commit stopped waiting for phase 2, which goes on in the
	// background (a field, not a local, so that it costs no allocation).
	handedOff atomic.Bool
}

// txBranch is one branch of a transaction. A branch resumed after a
// restart has no connection (b is nil): phase 2 commits it by XID.
type txBranch struct {
	res    drivers.Resource
	b      drivers.Branch
	xid    drivers.XID
	num    int
	vote   drivers.Vote
	closed bool

	// Phase 2 state, touched by one goroutine at a time.
	announced bool // StepCommitting reported
	committed bool
}

// ErrTxDone is returned when a finished transaction is used again.
var ErrTxDone = errors.New("global transaction has already been committed or rolled back")

// GlobalID returns the transaction's global id (the gtrid of its XIDs).
func (tx *Tx) GlobalID() drivers.GlobalID { return tx.gtrid }

// Deadline returns the transaction's fence: no commit decision is written
// at or after it.
func (tx *Tx) Deadline() time.Time { return tx.gtrid.Deadline() }

// ErrLabel is wrapped by every error of Tx.SetLabel: an invalid label, or
// a label set after the first branch was enlisted.
var ErrLabel = errors.New("xa: label refused")

// SetLabel attaches a short label of the caller's (an order id, a request
// id) to the transaction. It is optional. A label is 1 to
// drivers.MaxLabelLen bytes of [A-Za-z0-9._:/#@+-] (see
// drivers.ValidateLabel); anything else is refused with an error wrapping
// ErrLabel, never truncated or rewritten, and leaves the transaction as it
// was. SetLabel("") removes the label (before the first Enlist).
//
// Set it before the first Enlist: every branch carries the label in its
// XID (the bqual), so that an operator sees it on a branch left prepared
// by a crash before any decision was written, with no extra write to any
// database or log. Setting a label once a branch is enlisted is refused
// (setting the same label again is not an error). The label is also kept
// with the commit decision, and shown in error messages (*Error.Label),
// in hooks (StepInfo.Label) and so in spans, and by the CLI's list, show
// and log dump. It is never a metric label: its values are unbounded.
func (tx *Tx) SetLabel(label string) error {
	if err := drivers.ValidateLabel(label); err != nil {
		return fmt.Errorf("%w: %w", ErrLabel, err)
	}
	tx.mu.Lock()
	defer tx.mu.Unlock()
	switch {
	case tx.finished:
		return ErrTxDone
	case label == tx.label:
		return nil
	case len(tx.branches) > 0:
		return fmt.Errorf("%w: label %q set after the first branch was enlisted (branches carry the label in their XIDs): call SetLabel first", ErrLabel, label)
	}
	tx.label = label
	return nil
}

// Label returns the transaction's label ("" when it has none).
func (tx *Tx) Label() string {
	tx.mu.Lock()
	defer tx.mu.Unlock()
	return tx.label
}

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
	xid := drivers.XID{Global: tx.gtrid, Branch: uint8(num), Label: tx.label}
	isKeeper := tx.c.keeper != nil && drivers.Resource(tx.c.keeper) == r
	participant(r, num) // starts reading r's identity for the decision, if unknown
	begin := r.Begin
	if kb, ok := r.(decisionlog.KeptBeginner); ok && isKeeper {
		// The keeper's branch never prepares; its adapter may begin it
		// as a plain local transaction.
		begin = kb.BeginKept
	}
	b, err := begin(ctx, xid)
	if err != nil {
		return nil, err
	}
	tb := &txBranch{res: r, b: b, xid: xid, num: num}
	tx.branches = append(tx.branches, tb)
	tx.byRes[r] = tb
	if isKeeper {
		tx.kept = tb
	}
	tx.c.hook(StepEnlisted, StepInfo{GTRID: tx.gtrid, Resource: r.Name(), Branch: num, Label: tx.label})
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

func (tx *Tx) errorf(o Outcome, op Op, resource string, err error) *Error {
	return &Error{GTRID: tx.gtrid.String(), Label: tx.label, Outcome: o, Op: op, Resource: resource, Err: err}
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
	// Phase 2 still running in the background tracks the transaction on
	// its own until it ends.
	tx.c.untrack(tx.gtrid)
	if tx.c.cfg.Hook != nil {
		tx.reportFinished(err, len(branches))
	}
	return err
}

// commit runs two-phase commit on the finished transaction's branches.
func (tx *Tx) commit(ctx context.Context, branches []*txBranch) error {
	switch len(branches) {
	case 0:
		return nil
	case 1:
		return tx.commitOnePhase(ctx, branches[0])
	}

	// Phase 1, in parallel, on every branch but the decision keeper's: its
	// local commit will be the decision. Preparing after the fence is
	// pointless: the decision would be refused.
	dec, toPrepare := tx.decider(branches)
	pctx, cancel := tx.untilDeadline(ctx)
	defer cancel()
	if err := tx.prepareAll(pctx, toPrepare, branches); err != nil {
		return err
	}
	voters := commitVoters(toPrepare)

	switch planAfterVotes(len(voters), tx.kept != nil) {
	case planNothingLeft:
		return nil // every branch was read-only and is finished
	case planKeeperAlone:
		// Everything else was read-only: the keeper's branch is the only
		// one with writes and commits on its own.
		return tx.commitOnePhase(ctx, tx.kept)
	case planSingleVoter:
		// The only branch with writes: nothing else can disagree with it,
		// so no decision record is needed. If we crash before its commit,
		// recovery presumes abort, which is still all-or-nothing.
		return tx.phase2(ctx, voters, nil)
	}

	// The decision, then phase 2.
	if err := tx.decide(ctx, dec, branches, voters); err != nil {
		return err
	}
	return tx.phase2(ctx, voters, dec)
}

// commitOnePhase commits a branch that is the only one with writes: its
// local commit is the outcome, and no decision is needed.
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
		c.logger.Warn("one-phase commit in doubt", "gtrid", tx.gtrid.String(), tx.labelAttr(), "resource", tb.res.Name(), "err", err)
		return tx.errorf(Unknown, OpCommitOnePhase, tb.res.Name(), err)
	}
	// The server answered with an error: it did not commit.
	return tx.errorf(Aborted, OpCommitOnePhase, tb.res.Name(), err)
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
				c.logger.Warn("branch in doubt during prepare; aborting", "gtrid", tx.gtrid.String(), tx.labelAttr(), "resource", toPrepare[i].res.Name(), "err", err)
			}
			_ = tx.rollbackBranches(ctx, all, "prepare failed")
			return tx.errorf(Aborted, OpPrepare, toPrepare[i].res.Name(), err)
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

// decide makes the commit decision durable with dec. A refused decision
// (the fence, or the keeper said no) aborts: every branch is rolled back.
// A decision that may or may not be durable is fail-stop (DESIGN rule 6):
// every branch stays prepared for recovery, never rolled back on a guess.
func (tx *Tx) decide(ctx context.Context, dec decider, branches, voters []*txBranch) error {
	c := tx.c
	start := c.stamp()
	c.hook(StepDeciding, StepInfo{GTRID: tx.gtrid, Branch: -1})
	if err := dec.decide(ctx, tx, voters); err != nil {
		if dec.refused(err) {
			c.logger.Warn("commit decision refused (past the fence, or by the decision keeper); aborting",
				"gtrid", tx.gtrid.String(), tx.labelAttr(), "store", dec.store(), "err", err)
			c.hook(StepDecisionRefused, StepInfo{GTRID: tx.gtrid, Branch: -1, Err: err})
			_ = tx.rollbackBranches(ctx, branches, "decision refused")
			return tx.errorf(Aborted, OpDecide, dec.resource(), err)
		}
		c.logger.Error("commit decision write failed; transaction is in doubt, branches left prepared for recovery",
			"gtrid", tx.gtrid.String(), tx.labelAttr(), "store", dec.store(), "err", err)
		for _, tb := range voters {
			tx.closeBranch(tb)
		}
		return tx.errorf(Unknown, OpDecide, dec.resource(), err)
	}
	c.hook(StepDecided, StepInfo{GTRID: tx.gtrid, Branch: -1, Elapsed: since(start)})
	if kb := tx.kept; kb != nil {
		// The keeper's branch committed with the decision.
		c.hook(StepCommitted, StepInfo{GTRID: tx.gtrid, Resource: kb.res.Name(), Branch: kb.num})
	}
	if c.logger.Enabled(ctx, slog.LevelDebug) {
		c.logger.Debug("commit decision durable", "gtrid", tx.gtrid.String(), tx.labelAttr(), "voters", len(voters), "store", dec.store())
	}
	return nil
}

// phase2 commits the prepared voters once the decision is durable in dec
// (nil: a single voter and no decision record). Commit makes one attempt
// per branch on its own goroutine (a hand-off to a background goroutine
// and back showed in the scheduler's share of a bench profile); branches
// that did not commit go on in the background (finishPhase2), which Commit
// waits for up to Phase2Timeout or until ctx ends. With AsyncPhase2 all of
// phase 2 runs in the background and Commit returns at once.
//
// Commit returning early is CommitPending when the decision is durable
// (the outcome is commit whatever happens), Unknown otherwise (a crash now
// lets recovery presume abort).
func (tx *Tx) phase2(ctx context.Context, voters []*txBranch, dec decider) error {
	c := tx.c
	start := c.stamp()
	async := dec != nil && c.cfg.AsyncPhase2
	wait := c.cfg.Phase2Timeout
	if !async {
		t0 := time.Now()
		if tx.commitBranches(ctx, voters, false) {
			tx.phase2Done(dec, start)
			return nil
		}
		wait = max(0, wait-time.Since(t0))
	}

	done := make(chan struct{})
	var allCommitted atomic.Bool // set before done is closed
	c.track(tx.gtrid)
	c.goBackground(func() {
		// Untracked before done is closed (defers run last first): once
		// Commit returns nil, Active no longer reports the transaction.
		defer close(done)
		defer c.untrack(tx.gtrid)
		allCommitted.Store(tx.finishPhase2(voters, dec, start))
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
		"gtrid", tx.gtrid.String(), tx.labelAttr(), "decision_durable", dec != nil, "err", why)
	c.hook(StepPhase2Handoff, StepInfo{GTRID: tx.gtrid, Branch: -1, Err: why})
	return tx.errorf(handoffOutcome(dec != nil), OpCommit, "", why)
}

// finishPhase2 drives every voter not yet committed to commit, retrying
// until it does or the coordinator closes, and ends the decision once all
// have. It is the rest of Commit's phase 2, all of AsyncPhase2's, and the
// phase 2 of a decision resumed after a restart. It reports whether every
// voter committed.
func (tx *Tx) finishPhase2(voters []*txBranch, dec decider, start time.Time) bool {
	if !tx.commitBranches(tx.c.bgCtx, voters, true) {
		return false
	}
	if tx.handedOff.Load() {
		// The caller was told ErrCommitPending (or ErrOutcomeUnknown), or
		// is a process that crashed: that the branches caught up is worth
		// knowing.
		tx.c.logger.Info("phase 2 finished in the background", "gtrid", tx.gtrid.String(), tx.labelAttr())
	}
	tx.phase2Done(dec, start)
	return true
}

// phase2Done reports that every voter committed and ends the decision.
func (tx *Tx) phase2Done(dec decider, start time.Time) {
	tx.c.hook(StepAllCommitted, StepInfo{GTRID: tx.gtrid, Branch: -1, Elapsed: since(start)})
	if dec != nil {
		tx.c.endDecision(tx.gtrid, dec)
	}
}

// commitBranches is the phase 2 loop: it commits every voter not yet
// committed, in parallel, and reports whether all are committed. When
// relentless, each is retried with backoff until it commits or ctx ends
// (Close); otherwise it makes one attempt, bounded by the phase 2 timeout
// and ended early by ctx or Close, and a branch that failed keeps its
// connection for the retries.
func (tx *Tx) commitBranches(ctx context.Context, voters []*txBranch, relentless bool) bool {
	c := tx.c
	if !relentless {
		actx, cancel := context.WithTimeout(c.bgCtx, min(c.cfg.Phase2Timeout, attemptTimeout))
		defer cancel()
		stop := context.AfterFunc(ctx, cancel)
		defer stop()
		ctx = actx
	}
	parallel(len(voters), func(i int) {
		tb := voters[i]
		if tb.committed {
			return
		}
		if !tb.announced {
			tb.announced = true
			c.hook(StepCommitting, StepInfo{GTRID: tx.gtrid, Resource: tb.res.Name(), Branch: tb.num})
		}
		var err error
		if relentless {
			err = retry(ctx, tb.commit, c.logger, "gtrid", tx.gtrid.String(), tx.labelAttr(), "resource", tb.res.Name(), "op", "commit")
		} else {
			err = tb.commit(ctx)
		}
		if err != nil && !relentless {
			c.logger.Debug("phase 2 attempt failed; retrying in the background", "gtrid", tx.gtrid.String(), tx.labelAttr(), "resource", tb.res.Name(), "err", err)
			c.hook(StepCommitFailed, StepInfo{GTRID: tx.gtrid, Resource: tb.res.Name(), Branch: tb.num, Err: err})
			return
		}
		// Close either way: after success the connection goes back to its
		// pool; after Close() stopped us, the prepared branch is detached
		// from its session so recovery can finish it.
		tx.closeBranch(tb)
		if err != nil {
			c.logger.Warn("phase 2 stopped before the branch committed; recovery will finish it",
				"gtrid", tx.gtrid.String(), tx.labelAttr(), "resource", tb.res.Name(), "err", err)
			c.hook(StepCommitFailed, StepInfo{GTRID: tx.gtrid, Resource: tb.res.Name(), Branch: tb.num, Err: err})
			return
		}
		tb.committed = true
		c.hook(StepCommitted, StepInfo{GTRID: tx.gtrid, Resource: tb.res.Name(), Branch: tb.num})
	})
	for _, tb := range voters {
		if !tb.committed {
			return false
		}
	}
	return true
}

// commit commits the prepared branch: on its own connection while it has
// one, else by XID from any session, where "no such prepared branch" means
// it is already committed (phase 2 is idempotent).
func (tb *txBranch) commit(ctx context.Context) error {
	if tb.b != nil {
		return tb.b.Commit(ctx)
	}
	err := tb.res.CommitPrepared(ctx, tb.xid)
	if errors.Is(err, drivers.ErrNotFound) {
		return nil
	}
	return err
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
			final = tx.errorf(Aborted, OpRollback, "", nil)
		}
		tx.reportFinished(final, len(branches))
	}
	return rerr
}

// reportFinished reports StepFinished: the transaction is over for its caller,
// who gets err.
func (tx *Tx) reportFinished(err error, branches int) {
	tx.c.hook(StepFinished, StepInfo{GTRID: tx.gtrid, Label: tx.label, Branch: -1, Err: err, Outcome: OutcomeOf(err), Branches: branches, Elapsed: since(tx.began)})
}

// rollbackBranches rolls back the branches in parallel, skipping read-only
// and closed ones. It uses a context detached from the caller's (a
// cancelled caller is a common reason to roll back) but bounded by
// RollbackTimeout.
func (tx *Tx) rollbackBranches(ctx context.Context, branches []*txBranch, why string) error {
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), tx.c.cfg.RollbackTimeout)
	defer cancel()
	errs := make([]error, len(branches))
	parallel(len(branches), func(i int) {
		tb := branches[i]
		if tb.vote == drivers.VoteReadOnly || tb.closed {
			return
		}
		err := retry(ctx, tb.b.Rollback, tx.c.logger, "gtrid", tx.gtrid.String(), tx.labelAttr(), "resource", tb.res.Name(), "op", "rollback")
		if err != nil {
			tx.c.logger.Warn("branch not rolled back; recovery will presume it aborted after the fence",
				"gtrid", tx.gtrid.String(), tx.labelAttr(), "resource", tb.res.Name(), "why", why, "err", err)
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
		tx.c.logger.Debug("closing branch", "gtrid", tx.gtrid.String(), tx.labelAttr(), "resource", tb.res.Name(), "err", err)
	}
}

// untilDeadline returns ctx bounded by the transaction's fence deadline. The
// remaining time is measured on the coordinator's clock (Config.Now), the
// clock that set the deadline, so the two always agree.
func (tx *Tx) untilDeadline(ctx context.Context) (context.Context, context.CancelFunc) {
	return context.WithTimeout(ctx, tx.gtrid.Deadline().Sub(tx.c.cfg.Now()))
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

// labelAttr is the label as a log attribute, or the empty Attr (which
// slog's handlers leave out) when the transaction has none.
func (tx *Tx) labelAttr() slog.Attr {
	if tx.label == "" {
		return slog.Attr{}
	}
	return slog.String("label", tx.label)
}
