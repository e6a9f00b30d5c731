package drivers

import (
	"context"
	"time"
)

// DecisionKeeper is an optional interface of a Resource that can hold the
// commit decisions of global transactions in its own database (the "commit
// decision inside a participant" optimisation, after Citus, Vitess and
// Narayana's commit-markable resource).
//
// The keeper's branch of a global transaction never prepares. Once every
// other branch is prepared, CommitWithDecision inserts the decision row in
// the keeper branch's own transaction and commits it in one phase: that
// local commit is the commit decision, durable without a separate log
// write. Recovery reads the decisions back with LookupDecision and
// ListDecisions.
//
// The decision row and an abort marker for the same global id exclude each
// other (both are the same primary key): FenceAbort, which recovery calls
// before it presumes a transaction aborted, makes any later
// CommitWithDecision for it fail, and fails itself (reporting the commit)
// once the decision is committed.
//
// Implementations must be safe for concurrent use.
type DecisionKeeper interface {
	Resource

	// CommitWithDecision records the commit decision for g, naming the
	// other participants, in b's transaction and commits b in one phase.
	// b must be an active (not prepared) branch of this resource. Errors:
	// ErrRefused (nothing committed: b rolled back, for example because an
	// abort marker for g exists), ErrInDoubt (b and with it the decision may
	// or may not have committed; LookupDecision settles it), ErrFailed.
	CommitWithDecision(ctx context.Context, b Branch, g GlobalID, participants []KeptParticipant) error

	// LookupDecision returns what the keeper holds for g; found is false
	// when it holds nothing (no decision: presumed abort once g is past its
	// fence and fenced with FenceAbort).
	LookupDecision(ctx context.Context, g GlobalID) (d KeptDecision, found bool, err error)

	// FenceAbort durably records an abort marker for g unless a commit
	// decision for g is committed. It reports committed = true, and records
	// nothing, when the decision exists; an abort marker that already exists
	// is success. After it returns committed = false, no commit decision for
	// g can ever be committed.
	FenceAbort(ctx context.Context, g GlobalID) (committed bool, err error)

	// ForgetDecisions deletes what the keeper holds for the given global ids
	// (decisions whose phase 2 finished, abort markers past their fence).
	ForgetDecisions(ctx context.Context, gs []GlobalID) error

	// ListDecisions returns everything the keeper holds, oldest first.
	ListDecisions(ctx context.Context) ([]KeptDecision, error)
}

// KeptBeginner is an optional interface of a DecisionKeeper whose keeper
// branch differs from an ordinary branch from its very first statement
// (the MySQL/MariaDB adapter runs it as a plain local transaction, where
// an ordinary branch starts with XA START). A coordinator begins the branch
// on its decision keeper with BeginKept instead of Resource.Begin.
//
// A kept branch never prepares: it ends with CommitWithDecision,
// CommitOnePhase (when it is the only branch with writes) or Rollback.
// Prepare refuses it (ErrRefused, rolled back).
type KeptBeginner interface {
	DecisionKeeper

	// BeginKept starts the keeper's branch with the given XID, with the
	// error classes of Resource.Begin.
	BeginKept(ctx context.Context, xid XID) (Branch, error)
}

// KeptParticipant is a branch named in a kept commit decision.
type KeptParticipant struct {
	Resource string `json:"r"`
	Branch   uint8  `json:"b"`
}

// KeptDecision is one row of a keeper's decision table: a commit decision,
// or an abort marker written by recovery.
type KeptDecision struct {
	GTRID GlobalID
	// Commit is true for a commit decision, false for an abort marker.
	Commit bool
	// Participants are the branches to commit (empty for an abort marker).
	// The keeper's own branch is not among them: it committed with the
	// decision.
	Participants []KeptParticipant
	// At is when the row was written, by the database's clock.
	At time.Time
}
