package xa

import (
	"context"
	"errors"
	"strings"

	"github.com/xabridge/xabridge/decisionlog"
	"github.com/xabridge/xabridge/drivers"
)

// The outcome classes of a global transaction. Every error Run returns
// matches exactly one of them with errors.Is.
var (
	// ErrAborted: nothing was committed on any resource. Final; the caller
	// may retry the whole transaction (see Retryable).
	ErrAborted = errors.New("transaction aborted")

	// ErrOutcomeUnknown: the transaction is in doubt. It may commit or abort
	// everywhere (never partly); recovery settles it. Do not retry blindly.
	ErrOutcomeUnknown = errors.New("transaction outcome unknown (in doubt)")

	// ErrCommitPending: the commit decision is durable, so the transaction
	// is committed, but some branches have not confirmed phase 2 yet; the
	// coordinator and recovery keep driving them to commit. Until then other
	// readers may not see all of its writes.
	ErrCommitPending = errors.New("transaction committed; phase 2 pending on some branches")
)

// Outcome is the result class of a global transaction.
type Outcome int

const (
	// Committed: every branch committed.
	Committed Outcome = iota
	// Aborted: no branch committed.
	Aborted
	// CommitPending: decided commit; phase 2 still running on some branch.
	CommitPending
	// Unknown: in doubt; recovery will settle it.
	Unknown
)

func (o Outcome) String() string {
	switch o {
	case Committed:
		return "committed"
	case Aborted:
		return "aborted"
	case CommitPending:
		return "commit-pending"
	case Unknown:
		return "unknown"
	}
	return "invalid"
}

// OutcomeOf classifies an error returned by Run: nil is Committed.
func OutcomeOf(err error) Outcome {
	switch {
	case err == nil:
		return Committed
	case errors.Is(err, ErrCommitPending):
		return CommitPending
	case errors.Is(err, ErrOutcomeUnknown):
		return Unknown
	default:
		return Aborted
	}
}

// Error is the error type Run returns: the global transaction, its outcome
// class, where it happened, and the cause (the callback's error, a database
// error, a log error, ...).
type Error struct {
	GTRID    string
	Label    string // the transaction's label (Tx.SetLabel), "" for none
	Outcome  Outcome
	Op       Op     // the protocol step that ended the transaction
	Resource string // the resource involved, if one
	Err      error
}

// Op is the protocol step an Error comes from. ReasonOf reads it, so the
// set is fixed: a new step gets a constant here, never a bare string.
type Op uint8

// The steps an Error can come from.
const (
	OpNone           Op = iota // not set
	OpBegin                    // Begin
	OpWork                     // the Run callback (its error, or its context ending)
	OpPanic                    // the Run callback panicked
	OpRollback                 // Tx.Rollback
	OpPrepare                  // phase 1
	OpDecide                   // making the commit decision durable
	OpCommit                   // phase 2
	OpCommitOnePhase           // the one-phase commit of a single branch
)

var opNames = [...]string{
	OpNone: "", OpBegin: "begin", OpWork: "work", OpPanic: "panic", OpRollback: "rollback",
	OpPrepare: "prepare", OpDecide: "decide", OpCommit: "commit", OpCommitOnePhase: "commit-one-phase",
}

// String returns the step's name as Error shows it ("" for OpNone).
func (o Op) String() string {
	if int(o) < len(opNames) {
		return opNames[o]
	}
	return "invalid"
}

func (e *Error) Error() string {
	var b strings.Builder
	b.WriteString("xa: ")
	b.WriteString(e.sentinel().Error())
	if e.GTRID != "" {
		b.WriteString(" [")
		if e.Label != "" {
			b.WriteString(e.Label)
			b.WriteString(" ")
		}
		b.WriteString(e.GTRID)
		b.WriteString("]")
	}
	if e.Op != OpNone {
		b.WriteString(": ")
		b.WriteString(e.Op.String())
		if e.Resource != "" {
			b.WriteString(" on ")
			b.WriteString(e.Resource)
		}
	}
	if e.Err != nil {
		b.WriteString(": ")
		b.WriteString(e.Err.Error())
	}
	return b.String()
}

func (e *Error) sentinel() error {
	switch e.Outcome {
	case CommitPending:
		return ErrCommitPending
	case Unknown:
		return ErrOutcomeUnknown
	default:
		return ErrAborted
	}
}

// Unwrap returns the outcome class and the cause, so errors.Is matches both
// (errors.Is(err, xa.ErrAborted), errors.Is(err, myErr)).
func (e *Error) Unwrap() []error {
	if e.Err == nil {
		return []error{e.sentinel()}
	}
	return []error{e.sentinel(), e.Err}
}

// Retryable reports whether err is an abort that running the same
// transaction again may cure: a deadlock, a serialization failure, a lock
// wait timeout, or a fence refusal. In-doubt and pending outcomes are never
// retryable.
func Retryable(err error) bool {
	if OutcomeOf(err) != Aborted {
		return false
	}
	return errors.Is(err, drivers.ErrRetryable) || errors.Is(err, decisionlog.ErrFenced)
}

// conflict reports an error of contention between transactions: a
// database said deadlock, serialization failure or lock wait timeout (the
// adapters classify those as drivers.ErrConflict, also when they come
// from the application's own statements on a branch).
func conflict(err error) bool { return errors.Is(err, drivers.ErrConflict) }

// Reason is a short, stable label for why a global transaction ended as it
// did, for metrics and logs (see ReasonOf). The set is small and fixed, so
// it is fit for a metric label.
type Reason string

// The reasons ReasonOf returns.
const (
	ReasonNone            Reason = "none"              // committed
	ReasonUserError       Reason = "user-error"        // the callback returned an error
	ReasonConflict        Reason = "conflict"          // contention: a deadlock, serialization failure or lock wait timeout aborted it (Retryable)
	ReasonRollback        Reason = "rollback"          // Tx.Rollback was called
	ReasonPanic           Reason = "panic"             // the callback panicked
	ReasonTimeout         Reason = "timeout"           // the transaction's deadline (Config.Timeout) or the caller's passed
	ReasonCanceled        Reason = "canceled"          // the caller's context was cancelled
	ReasonPrepareRefused  Reason = "prepare-refused"   // a database refused to prepare a branch
	ReasonPrepareInDoubt  Reason = "prepare-in-doubt"  // a prepare's effect is unknown (connection lost); aborted
	ReasonFenced          Reason = "fenced"            // the commit decision came after the fence
	ReasonDecisionRefused Reason = "decision-refused"  // the decision keeper refused the decision
	ReasonLogFailed       Reason = "log-failed"        // the decision log write failed: in doubt
	ReasonDecisionInDoubt Reason = "decision-in-doubt" // the decision keeper's commit is in doubt
	ReasonCommitRefused   Reason = "commit-refused"    // a one-phase commit was refused
	ReasonCommitInDoubt   Reason = "commit-in-doubt"   // a one-phase commit lost its connection
	ReasonPhase2Timeout   Reason = "phase2-timeout"    // phase 2 did not finish within Config.Phase2Timeout
	ReasonOther           Reason = "other"             // anything else
)

// Reasons lists every Reason, for tools that enumerate label values.
var Reasons = []Reason{
	ReasonNone, ReasonUserError, ReasonConflict, ReasonRollback, ReasonPanic, ReasonTimeout, ReasonCanceled,
	ReasonPrepareRefused, ReasonPrepareInDoubt, ReasonFenced, ReasonDecisionRefused, ReasonLogFailed,
	ReasonDecisionInDoubt, ReasonCommitRefused, ReasonCommitInDoubt, ReasonPhase2Timeout, ReasonOther,
}

// ReasonOf says why a transaction whose Commit, Rollback or Run returned
// err ended as it did: ReasonNone for nil.
func ReasonOf(err error) Reason {
	if err == nil {
		return ReasonNone
	}
	var e *Error
	if !errors.As(err, &e) {
		return ReasonOther
	}
	switch e.Op {
	case OpRollback:
		return ReasonRollback
	case OpPanic:
		return ReasonPanic
	}
	switch {
	case errors.Is(e.Err, context.DeadlineExceeded):
		return ReasonTimeout
	case errors.Is(e.Err, context.Canceled):
		return ReasonCanceled
	}
	switch e.Op {
	case OpWork:
		if conflict(e.Err) {
			return ReasonConflict
		}
		return ReasonUserError
	case OpPrepare:
		switch {
		case errors.Is(e.Err, drivers.ErrInDoubt):
			return ReasonPrepareInDoubt
		case conflict(e.Err):
			return ReasonConflict
		}
		return ReasonPrepareRefused
	case OpDecide:
		switch {
		case errors.Is(e.Err, decisionlog.ErrFenced):
			return ReasonFenced
		case e.Outcome != Unknown:
			return ReasonDecisionRefused
		case errors.Is(e.Err, decisionlog.ErrLogFailed):
			return ReasonLogFailed
		}
		return ReasonDecisionInDoubt
	case OpCommitOnePhase:
		switch {
		case e.Outcome == Unknown:
			return ReasonCommitInDoubt
		case conflict(e.Err):
			return ReasonConflict
		}
		return ReasonCommitRefused
	case OpCommit:
		return ReasonPhase2Timeout
	}
	return ReasonOther
}
