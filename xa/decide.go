package xa

import (
	"context"
	"errors"

	"github.com/xabridge/xabridge/decisionlog"
	"github.com/xabridge/xabridge/drivers"
)

// decider makes a commit decision durable. There are two, and they are the
// only difference between the ways a transaction commits: the decision log
// (logDecider), and a participant's own local commit (keeperDecider, with
// Config.DecisionResource).
type decider interface {
	// decide makes the commit decision for tx, naming voters, durable, and
	// returns nil once it is.
	decide(ctx context.Context, tx *Tx, voters []*txBranch) error
	// refused reports whether an error of decide means that nothing was
	// decided, so the transaction aborts. Any other error leaves the
	// decision unknown: fail-stop.
	refused(err error) bool
	// end forgets a decision whose phase 2 finished.
	end(g drivers.GlobalID) error
	// store names the decision store in logs; resource names it in errors
	// ("" for the log).
	store() string
	resource() string
}

// decider returns how tx's commit decision is made, and the branches that
// prepare: all of them with the decision log; all but the keeper's with a
// decision keeper, whose branch never prepares.
func (tx *Tx) decider(branches []*txBranch) (decider, []*txBranch) {
	kb := tx.kept
	if kb == nil {
		return tx.c.logDecider, branches
	}
	others := make([]*txBranch, 0, len(branches)-1)
	for _, tb := range branches {
		if tb != kb {
			others = append(others, tb)
		}
	}
	return tx.c.keeperDecider, others
}

// participants lists the voters for a decision record.
func participants(voters []*txBranch) []decisionlog.Participant {
	parts := make([]decisionlog.Participant, len(voters))
	for i, tb := range voters {
		parts[i] = participant(tb.res, tb.num)
	}
	return parts
}

// endDecision records that phase 2 of g finished, and reports StepEnded.
func (c *Coordinator) endDecision(g drivers.GlobalID, dec decider) {
	if err := dec.end(g); err != nil {
		c.logger.Warn("could not record the end of phase 2", "gtrid", g.String(), "store", dec.store(), "err", err)
	}
	c.hook(StepEnded, StepInfo{GTRID: g, Branch: -1})
}

// logDecider writes the decision to the decision log.
type logDecider struct{ log decisionlog.Log }

func (d logDecider) decide(ctx context.Context, tx *Tx, voters []*txBranch) error {
	// With a context the caller cannot cancel: a write abandoned half way
	// would leave the outcome unknown.
	return d.log.Commit(context.WithoutCancel(ctx), decisionlog.Decision{GTRID: tx.gtrid, At: tx.c.cfg.Now(), Participants: participants(voters), Label: tx.label})
}

func (logDecider) refused(err error) bool         { return logRefused(err) }
func (d logDecider) end(g drivers.GlobalID) error { return d.log.End(g) }
func (logDecider) store() string                  { return "log" }
func (logDecider) resource() string               { return "" }

// keeperDecider keeps the decision in the decision keeper's table: the
// keeper's branch inserts the decision row and commits in one phase, and
// that local commit is the decision.
type keeperDecider struct {
	k      decisionlog.Keeper
	forget *forgetter
}

func (d keeperDecider) decide(ctx context.Context, tx *Tx, voters []*txBranch) error {
	// The same fence as the log's: no decision at or after the deadline.
	// (The table's primary key already excludes a decision after
	// recovery's abort marker; this keeps both decision stores alike.)
	if _, err := decisionlog.AdmitCommit(tx.gtrid, tx.c.cfg.Now(), decisionlog.StateNone); err != nil {
		return err
	}
	// Like a log write, the decision is not abandoned half way because the
	// caller gave up; it is still bounded, as a hung connection must
	// surface.
	dctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), attemptTimeout)
	defer cancel()
	err := d.k.CommitWithDecision(dctx, tx.kept.b, tx.gtrid, participants(voters))
	tx.closeBranch(tx.kept)
	return err
}

func (keeperDecider) refused(err error) bool { return keeperRefused(err) }

func (d keeperDecider) end(g drivers.GlobalID) error {
	d.forget.add(g)
	return nil
}

func (d keeperDecider) store() string    { return d.k.Name() }
func (d keeperDecider) resource() string { return d.k.Name() }

// The pure decisions of the protocol, tested without I/O.

// logRefused: the decision log refuses a decision only at the fence; any
// other error may or may not have reached disk.
func logRefused(err error) bool { return errors.Is(err, decisionlog.ErrFenced) }

// keeperRefused: the keeper's commit did not happen when the fence refused
// it or the keeper's database answered with a no-effect error class; any
// other error (in doubt, unclassified) may have committed the decision.
func keeperRefused(err error) bool {
	if errors.Is(err, decisionlog.ErrFenced) {
		return true
	}
	switch drivers.Classify(err) {
	case drivers.ErrRefused, drivers.ErrFailed, drivers.ErrRetryable:
		return true
	}
	return false
}

// commitPlan is how a transaction goes on once phase 1 is over.
type commitPlan int

const (
	planDecide      commitPlan = iota // write the decision, then phase 2
	planNothingLeft                   // every branch was read-only: done
	planKeeperAlone                   // only the keeper's unprepared branch has writes: it commits in one phase
	planSingleVoter                   // one prepared voter and nothing else: phase 2 with no decision record
)

// planAfterVotes says how a transaction goes on after phase 1 left voters
// branches prepared, with (keeper) or without a decision keeper's branch.
func planAfterVotes(voters int, keeper bool) commitPlan {
	switch {
	case voters == 0 && keeper:
		return planKeeperAlone
	case voters == 0:
		return planNothingLeft
	case voters == 1 && !keeper:
		return planSingleVoter
	}
	return planDecide
}

// handoffOutcome is what Commit returns when phase 2 is unfinished: once
// a decision is durable the transaction is committed whatever happens;
// without one, a crash lets recovery presume abort.
func handoffOutcome(decided bool) Outcome {
	if decided {
		return CommitPending
	}
	return Unknown
}
