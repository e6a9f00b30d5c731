package decisionlog

import (
	"context"
	"errors"
	"time"

	"github.com/xabridge/xabridge/drivers"
)

// Errors a decision Log returns.
var (
	// ErrFenced: the commit decision may not be written because recovery may
	// already have presumed the transaction aborted (its deadline passed, or
	// an abort was recorded). Nothing was written; the outcome is abort.
	ErrFenced = errors.New("commit decision refused: transaction is past its fence")

	// ErrLogFailed: a write to the log failed in a way that may or may not
	// have reached disk. The log is fail-stop: it refuses every later write
	// until it is reopened.
	ErrLogFailed = errors.New("decision log failed")

	// ErrLogLocked: another process holds the log open for writing.
	ErrLogLocked = errors.New("decision log is locked by another process")

	// ErrLogReadOnly: the log was opened read-only.
	ErrLogReadOnly = errors.New("decision log is open read-only")

	// ErrAlreadyCommitted: an abort was refused because a commit decision
	// for the transaction is durable. A committed transaction can never be
	// presumed aborted; its branches must be committed. (A forced operator
	// rollback is recorded with Record and Heuristic set instead.)
	ErrAlreadyCommitted = errors.New("abort refused: a commit decision is durable")

	// ErrWrongNode: the log belongs to another coordinator node.
	ErrWrongNode = errors.New("decision log belongs to another node")

	// ErrLogClosed: the log was closed.
	ErrLogClosed = errors.New("decision log is closed")
)

// Participant is one branch named in a commit decision.
type Participant struct {
	Resource string `json:"r"`
	Branch   uint8  `json:"b"`
	// ID is the resource's identity when the decision was made (the stored
	// form of a drivers.Identity), empty in decisions written before it was
	// recorded or by a resource that cannot tell. Recovery refuses to act
	// on the branch, or to end the decision, through a resource whose
	// identity differs.
	ID string `json:"id,omitempty"`
}

// XID returns the XID of participant p of d: d's global id and label, p's
// branch number. The label is part of the branch's bqual, so a decision
// must keep it to finish its branches by XID.
func (d Decision) XID(p Participant) drivers.XID {
	return drivers.XID{Global: d.GTRID, Branch: p.Branch, Label: d.Label}
}

// Decision is a commit decision: once durable, every participant must be
// driven to commit. A decision keeper also holds abort markers (Abort set,
// no participants): recovery's fence in the keeper's table.
type Decision struct {
	GTRID drivers.GlobalID
	// Abort marks an abort marker of a keeper, not a commit decision. A Log
	// never returns one: it records aborts as Actions.
	Abort        bool
	Participants []Participant
	At           time.Time
	// Label is the caller's label of the transaction ("" for none; see
	// drivers.ValidateLabel). It is part of every participant's XID, so
	// every log and keeper keeps it exactly.
	Label string
}

// Action records something recovery or an operator did to a transaction:
// what, why, when and by whom.
type Action struct {
	GTRID    drivers.GlobalID
	Resource string // empty for actions on the whole transaction
	Branch   uint8
	Op       string // "commit", "rollback", "presume-abort", ...
	Reason   string
	Actor    string // e.g. "recovery@node1", "operator root@host"
	// Heuristic marks an action that contradicts the log (a forced
	// resolve): atomicity may be broken and the record is kept and reported.
	Heuristic bool
	At        time.Time
}

// State is what the decision log says about a global transaction.
type State int

const (
	// StateNone: no decision record. Under presumed abort the outcome is
	// abort, once the transaction is past its fence.
	StateNone State = iota
	// StateCommitted: a commit decision is durable; phase 2 may be unfinished.
	StateCommitted
	// StateAborted: an abort (fence) record is durable.
	StateAborted
	// StateDone: committed and every participant confirmed committed.
	StateDone
)

func (s State) String() string {
	switch s {
	case StateNone:
		return "none"
	case StateCommitted:
		return "committed"
	case StateAborted:
		return "aborted"
	case StateDone:
		return "done"
	}
	return "invalid"
}

// Entry is everything the log knows about one global transaction.
type Entry struct {
	GTRID    drivers.GlobalID
	State    State
	Decision *Decision // set when a commit decision exists
	Actions  []Action  // in log order, including aborts
}

// Heuristic reports whether any recorded action contradicted the log.
func (e Entry) Heuristic() bool {
	for _, a := range e.Actions {
		if a.Heuristic {
			return true
		}
	}
	return false
}

// CheckedReader is implemented by a Log whose reads can fail (a database
// store, decisionlog/pgstore): Lookup and Pending answer "nothing" when a
// read fails, these return the error. Recovery and the operator commands
// read through it when a log has it, so that a read that failed is "the
// decision is unknown", never "no decision" (which presumes abort).
type CheckedReader interface {
	// LookupChecked is Lookup with the read's error.
	LookupChecked(ctx context.Context, gtrid drivers.GlobalID) (Entry, bool, error)
	// PendingChecked is Pending with the read's error.
	PendingChecked(ctx context.Context) ([]Decision, error)
}

// LookupChecked looks g up in l: through CheckedReader when l has it (a
// failed read is an error), else with Lookup (which cannot fail).
func LookupChecked(ctx context.Context, l Log, g drivers.GlobalID) (Entry, bool, error) {
	if c, ok := l.(CheckedReader); ok {
		return c.LookupChecked(ctx, g)
	}
	e, found := l.Lookup(g)
	return e, found, nil
}

// PendingChecked is LookupChecked for Pending.
func PendingChecked(ctx context.Context, l Log) ([]Decision, error) {
	if c, ok := l.(CheckedReader); ok {
		return c.PendingChecked(ctx)
	}
	return l.Pending(), nil
}

// Log is the coordinator's durable decision log. The embedded FileLog is the
// default; the interface leaves room for a database-backed log.
//
// Implementations must be safe for concurrent use.
type Log interface {
	// Commit makes the commit decision durable and returns only once it is.
	// It returns ErrFenced (nothing written) when the decision arrives at or
	// after the transaction's deadline or after an abort was recorded for
	// it, and an error wrapping ErrLogFailed when the outcome of the write is
	// unknown.
	Commit(ctx context.Context, d Decision) error

	// Abort durably records that the transaction is aborted; from then on
	// Commit for it returns ErrFenced. Recovery calls it before rolling back
	// a branch it presumes aborted. It returns ErrAlreadyCommitted when a
	// commit decision for the transaction is durable.
	Abort(ctx context.Context, a Action) error

	// Record durably appends an action (recovery or operator).
	Record(ctx context.Context, a Action) error

	// End records that every participant of a committed transaction is
	// confirmed committed. It need not be durable when it returns.
	End(gtrid drivers.GlobalID) error

	// Lookup returns what the log knows about one transaction.
	Lookup(gtrid drivers.GlobalID) (Entry, bool)

	// Pending returns the commit decisions whose phase 2 has not ended, in
	// log order.
	Pending() []Decision

	// Close flushes and releases the log.
	Close() error
}
