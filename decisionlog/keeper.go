package decisionlog

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"

	"github.com/xabridge/xabridge/drivers"
)

// Keeper is an optional interface of a Resource that can hold the commit
// decisions of global transactions in its own database (the "commit
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
type Keeper interface {
	drivers.Resource

	// CommitWithDecision records the commit decision for g, naming the
	// other participants, in b's transaction and commits b in one phase.
	// b must be an active (not prepared) branch of this resource. Errors:
	// ErrRefused (nothing committed: b rolled back, for example because an
	// abort marker for g exists), ErrInDoubt (b and with it the decision may
	// or may not have committed; LookupDecision settles it), ErrFailed.
	CommitWithDecision(ctx context.Context, b drivers.Branch, g drivers.GlobalID, participants []Participant) error

	// LookupDecision returns what the keeper holds for g (a commit decision,
	// or an abort marker with Abort set); found is false when it holds
	// nothing (no decision: presumed abort once g is past its fence and
	// fenced with FenceAbort).
	LookupDecision(ctx context.Context, g drivers.GlobalID) (d Decision, found bool, err error)

	// FenceAbort durably records an abort marker for g unless a commit
	// decision for g is committed. It reports committed = true, and records
	// nothing, when the decision exists; an abort marker that already exists
	// is success. After it returns committed = false, no commit decision for
	// g can ever be committed.
	FenceAbort(ctx context.Context, g drivers.GlobalID) (committed bool, err error)

	// ForgetDecisions deletes what the keeper holds for the given global ids
	// (decisions whose phase 2 finished, abort markers past their fence).
	ForgetDecisions(ctx context.Context, gs []drivers.GlobalID) error

	// ListDecisions returns everything the keeper holds, oldest first.
	ListDecisions(ctx context.Context) ([]Decision, error)
}

// ErrNoDecisionTable: the database a keeper reaches has no decision table.
// For the keeper recovery fences in (its DecisionResource) that is a wrong
// database, never "no decisions"; recovery never creates the table.
var ErrNoDecisionTable = errors.New("no decision table")

// TableChecker is an optional interface of a Keeper: CheckDecisionTable
// returns an error wrapping ErrNoDecisionTable, naming the database, when
// the keeper's decision table does not exist. Recovery calls it for its
// DecisionResource before trusting an empty listing; it creates nothing.
type TableChecker interface {
	CheckDecisionTable(ctx context.Context) error
}

// TableCreator is an optional interface of a Keeper whose decision table
// must be created before use. Only a coordinator configured with the keeper
// calls it (at start); recovery never does.
type TableCreator interface {
	EnsureDecisionTable(ctx context.Context) error
}

// KeptBeginner is an optional interface of a Keeper whose keeper branch
// differs from an ordinary branch from its very first statement (the
// MySQL/MariaDB adapter runs it as a plain local transaction, where an
// ordinary branch starts with XA START). A coordinator begins the branch on
// its decision keeper with BeginKept instead of Resource.Begin.
//
// A kept branch never prepares: it ends with CommitWithDecision,
// CommitOnePhase (when it is the only branch with writes) or Rollback.
// Prepare refuses it (ErrRefused, rolled back).
type KeptBeginner interface {
	Keeper

	// BeginKept starts the keeper's branch with the given XID, with the
	// error classes of Resource.Begin.
	BeginKept(ctx context.Context, xid drivers.XID) (drivers.Branch, error)
}

// The states of a keeper's decision row.
const (
	RowCommit = "C" // a commit decision; participants holds the branches
	RowAbort  = "A" // recovery's abort marker; participants is empty
)

// EncodeParticipants is the participants column of a keeper's commit row
// without a label: a JSON array of the participants.
func EncodeParticipants(ps []Participant) ([]byte, error) {
	return json.Marshal(ps)
}

// labelledRow is the participants column of a labelled commit row: an
// object, not the array of an unlabelled one. A reader from before labels
// fails to decode it (and so refuses to act on the row) rather than
// ignoring the label: it would otherwise finish the branches under XIDs
// without the label, miss them, and take them for done.
type labelledRow struct {
	Label        string        `json:"l"`
	Participants []Participant `json:"p"`
}

// EncodeDecision is the participants column of a keeper's (or a shared
// store's) commit row for d: EncodeParticipants when d has no label, an
// object carrying the label and the participants when it has one. It
// refuses an invalid label.
func EncodeDecision(d Decision) ([]byte, error) {
	if d.Label == "" {
		return EncodeParticipants(d.Participants)
	}
	if err := drivers.ValidateLabel(d.Label); err != nil {
		return nil, err
	}
	ps := d.Participants
	if ps == nil {
		ps = []Participant{}
	}
	return json.Marshal(labelledRow{Label: d.Label, Participants: ps})
}

// DecodeParticipants decodes a participants column written by
// EncodeDecision (or EncodeParticipants): the participants and the label.
func DecodeParticipants(parts []byte) ([]Participant, string, error) {
	trimmed := bytes.TrimLeft(parts, " \t\r\n")
	if len(trimmed) > 0 && trimmed[0] == '{' {
		var row labelledRow
		dec := json.NewDecoder(bytes.NewReader(parts))
		dec.DisallowUnknownFields()
		if err := dec.Decode(&row); err != nil {
			return nil, "", err
		}
		if row.Label == "" {
			return nil, "", errors.New("labelled participants with an empty label")
		}
		if err := drivers.ValidateLabel(row.Label); err != nil {
			return nil, "", err
		}
		if len(row.Participants) == 0 {
			row.Participants = nil
		}
		return row.Participants, row.Label, nil
	}
	var ps []Participant
	if err := json.Unmarshal(parts, &ps); err != nil {
		return nil, "", err
	}
	return ps, "", nil
}

// DecodeRow turns one row of a keeper's decision table (its gtrid, state
// and participants columns) into a Decision; table names the table in
// errors.
func DecodeRow(table string, g drivers.GlobalID, state string, parts []byte) (Decision, error) {
	d := Decision{GTRID: g}
	switch state {
	case RowCommit:
		ps, label, err := DecodeParticipants(parts)
		if err != nil {
			return Decision{}, fmt.Errorf("%s: participants of %s: %w", table, g, err)
		}
		d.Participants, d.Label = ps, label
	case RowAbort:
		d.Abort = true
	default:
		return Decision{}, fmt.Errorf("%s: unknown state %q for %s", table, state, g)
	}
	return d, nil
}
