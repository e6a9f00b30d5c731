package pgstore

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/xabridge/xabridge/decisionlog"
	"github.com/xabridge/xabridge/drivers"
)

// Reads go to the database, which is the truth: recovery in another
// process reads the same rows. The only local state they consult is the
// set of End records queued by this store and not yet written, so that End
// shows at once in this process, as the contract asks.

// lookupSQL reads one transaction in one statement (one snapshot): its
// decision row, if any, and its actions in the order written.
const lookupSQL = `
SELECT d.state, d.participants::text, d.decided_at, d.ended_at IS NOT NULL,
	(SELECT coalesce(json_agg(json_build_object(
		'r', a.resource, 'b', a.branch, 'op', a.op, 'why', a.reason, 'by', a.actor,
		'h', a.heuristic, 'at', a.at) ORDER BY a.id), '[]')
	 FROM {actions} a WHERE a.gtrid = $1)
FROM (SELECT 1) one LEFT JOIN {decisions} d ON d.gtrid = $1`

// pendingSQL lists a node's commit decisions whose phase 2 has not ended,
// in decision order.
const pendingSQL = `
SELECT gtrid, participants::text, decided_at FROM {decisions}
WHERE node = $1 AND state = 'C' AND ended_at IS NULL ORDER BY seq`

type wireAction struct {
	Resource  string    `json:"r"`
	Branch    uint8     `json:"b"`
	Op        string    `json:"op"`
	Reason    string    `json:"why"`
	Actor     string    `json:"by"`
	Heuristic bool      `json:"h"`
	At        time.Time `json:"at"`
}

// LookupContext returns what the store holds for g: found is false when it
// holds nothing (no decision row, no action).
func (s *Store) LookupContext(ctx context.Context, g drivers.GlobalID) (decisionlog.Entry, bool, error) {
	g, err := canonical(g)
	if err != nil {
		return decisionlog.Entry{}, false, fmt.Errorf("pgstore: lookup: %w", err)
	}
	key := g.String()
	// Sampled before the read as well as after: an end written and
	// cleared between the two would be missed by the read's snapshot and
	// by the check after it alike.
	endingBefore := s.isEnding(key)
	s.stats.reads.Add(1)
	var (
		state   *string
		parts   *string
		at      *time.Time
		ended   *bool
		actions []byte
	)
	if err := s.pool.QueryRow(ctx, s.sqlLookup, key).Scan(&state, &parts, &at, &ended, &actions); err != nil {
		return decisionlog.Entry{}, false, fmt.Errorf("pgstore: lookup %s: %w", key, err)
	}
	e, err := decodeEntry(g, state, parts, at, ended, actions)
	if err != nil {
		return decisionlog.Entry{}, false, fmt.Errorf("pgstore: lookup %s: %w", key, err)
	}
	if state == nil {
		return e, len(e.Actions) > 0, nil
	}
	// A commit whose end this store is still writing is done already.
	if e.State == decisionlog.StateCommitted && (endingBefore || s.isEnding(key)) {
		e.State = decisionlog.StateDone
	}
	return e, true, nil
}

// Lookup returns what the store holds for g, read from the database with
// Options.ReadTimeout. A read that fails reports found = false; callers
// that can handle the error use LookupContext. (That answer is never
// unsafe by itself: recovery records an abort before it rolls anything
// back, and the store refuses an abort once a commit decision exists.)
func (s *Store) Lookup(g drivers.GlobalID) (decisionlog.Entry, bool) {
	ctx, cancel := context.WithTimeout(context.Background(), s.opts.ReadTimeout)
	defer cancel()
	e, found, err := s.LookupChecked(ctx, g)
	if err != nil {
		return decisionlog.Entry{}, false
	}
	return e, found
}

// LookupChecked is Lookup with the read's error
// (decisionlog.CheckedReader), bounded by ctx and Options.ReadTimeout.
func (s *Store) LookupChecked(ctx context.Context, g drivers.GlobalID) (decisionlog.Entry, bool, error) {
	ctx, cancel := context.WithTimeout(ctx, s.opts.ReadTimeout)
	defer cancel()
	e, found, err := s.LookupContext(ctx, g)
	if err != nil {
		return decisionlog.Entry{}, false, err
	}
	if e.State == decisionlog.StateCommitted {
		// Only for nodes this store writes for: End needs it, and recovery
		// looking up other nodes' transactions must not grow the set.
		if _, err := s.leaseFor(nodeOf(e.GTRID), ""); err == nil {
			s.noteCommitted(e.GTRID.String())
		}
	}
	return e, found, nil
}

// PendingContext returns the commit decisions of node whose phase 2 has
// not ended, in decision order.
func (s *Store) PendingContext(ctx context.Context, node string) ([]decisionlog.Decision, error) {
	if err := drivers.ValidateNodeID(node); err != nil {
		return nil, fmt.Errorf("pgstore: pending: %w", err)
	}
	// Ends queued before the read, as in LookupContext: one written and
	// cleared while the read runs is in neither its snapshot nor s.ending.
	endingBefore := s.endingKeys()
	s.stats.reads.Add(1)
	rows, err := s.pool.Query(ctx, s.sqlPending, node)
	if err != nil {
		return nil, fmt.Errorf("pgstore: pending of %s: %w", node, err)
	}
	var out []decisionlog.Decision
	var key, parts string
	var at time.Time
	_, err = pgx.ForEachRow(rows, []any{&key, &parts, &at}, func() error {
		if _, ok := endingBefore[key]; ok || s.isEnding(key) {
			return nil
		}
		g, err := drivers.ParseGlobalID(key)
		if err != nil {
			return fmt.Errorf("gtrid %q: %w", key, err)
		}
		d := decisionlog.Decision{GTRID: g, At: at.UTC()}
		ps, label, err := decisionlog.DecodeParticipants([]byte(parts))
		if err != nil {
			return fmt.Errorf("participants of %s: %w", key, err)
		}
		d.Participants, d.Label = ps, label
		out = append(out, d)
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("pgstore: pending of %s: %w", node, err)
	}
	return out, nil
}

// Pending returns the store's own node's commit decisions whose phase 2
// has not ended, read with Options.ReadTimeout; nil if the read fails
// (PendingContext returns the error).
func (s *Store) Pending() []decisionlog.Decision {
	ds, _ := s.PendingChecked(context.Background())
	return ds
}

// PendingChecked is Pending with the read's error
// (decisionlog.CheckedReader), bounded by ctx and Options.ReadTimeout.
func (s *Store) PendingChecked(ctx context.Context) ([]decisionlog.Decision, error) {
	return s.pendingOf(ctx, s.node)
}

// pendingOf reads node's pending commit decisions with
// Options.ReadTimeout and notes them committed (End needs that).
func (s *Store) pendingOf(ctx context.Context, node string) ([]decisionlog.Decision, error) {
	ctx, cancel := context.WithTimeout(ctx, s.opts.ReadTimeout)
	defer cancel()
	ds, err := s.PendingContext(ctx, node)
	if err != nil {
		return nil, err
	}
	for _, d := range ds {
		s.noteCommitted(d.GTRID.String())
	}
	return ds, nil
}

// endingKeys returns a copy of the set of ends queued or in flight.
func (s *Store) endingKeys() map[string]struct{} {
	s.cmu.Lock()
	defer s.cmu.Unlock()
	return maps.Clone(s.ending)
}

func (s *Store) isEnding(key string) bool {
	s.cmu.Lock()
	defer s.cmu.Unlock()
	_, ok := s.ending[key]
	return ok
}

// NodeLog is the decision log of a node this store claimed (see Claim),
// as recovery needs it: Pending lists that node's decisions; Abort, Record
// and End write under the claimed lease's epoch. It never writes a commit
// decision: a claimant only drives decisions the dead node made.
type NodeLog struct {
	s    *Store
	node string
}

var (
	_ decisionlog.Log           = (*NodeLog)(nil)
	_ decisionlog.CheckedReader = (*NodeLog)(nil)
	_ decisionlog.CheckedReader = (*Store)(nil)
)

// ForNode returns the log of node as seen through this store: the store's
// own node or one it holds by Claim.
func (s *Store) ForNode(node string) (*NodeLog, error) {
	if _, err := s.leaseFor(node, "log"); err != nil {
		return nil, err
	}
	return &NodeLog{s: s, node: node}, nil
}

// Node returns the node whose log this is.
func (n *NodeLog) Node() string { return n.node }

// Commit refuses: a claimant never decides for another node. On the
// store's own node it is Store.Commit.
func (n *NodeLog) Commit(ctx context.Context, d decisionlog.Decision) error {
	if n.node == n.s.node {
		return n.s.Commit(ctx, d)
	}
	return fmt.Errorf("pgstore: commit %s: a claimant of node %s never writes its commit decisions: %w", d.GTRID, n.node, ErrNotHolder)
}

// Abort is Store.Abort for a transaction of the node.
func (n *NodeLog) Abort(ctx context.Context, a decisionlog.Action) error {
	if err := n.check(a.GTRID); err != nil {
		return err
	}
	return n.s.Abort(ctx, a)
}

// Record is Store.Record for a transaction of the node.
func (n *NodeLog) Record(ctx context.Context, a decisionlog.Action) error {
	if err := n.check(a.GTRID); err != nil {
		return err
	}
	return n.s.Record(ctx, a)
}

// End is Store.End for a transaction of the node.
func (n *NodeLog) End(g drivers.GlobalID) error {
	if err := n.check(g); err != nil {
		return err
	}
	return n.s.End(g)
}

// Lookup is Store.Lookup.
func (n *NodeLog) Lookup(g drivers.GlobalID) (decisionlog.Entry, bool) { return n.s.Lookup(g) }

// LookupChecked is Store.LookupChecked.
func (n *NodeLog) LookupChecked(ctx context.Context, g drivers.GlobalID) (decisionlog.Entry, bool, error) {
	return n.s.LookupChecked(ctx, g)
}

// Pending returns the node's pending commit decisions (nil if the read
// fails).
func (n *NodeLog) Pending() []decisionlog.Decision {
	ds, _ := n.PendingChecked(context.Background())
	return ds
}

// PendingChecked is Pending with the read's error
// (decisionlog.CheckedReader).
func (n *NodeLog) PendingChecked(ctx context.Context) ([]decisionlog.Decision, error) {
	return n.s.pendingOf(ctx, n.node)
}

// Close does nothing: the store owns the connection and the leases
// (Release gives a claimed lease back).
func (n *NodeLog) Close() error { return nil }

func (n *NodeLog) check(g drivers.GlobalID) error {
	if nodeOf(g) != n.node {
		return fmt.Errorf("pgstore: %s is not a transaction of node %s", g, n.node)
	}
	return nil
}

var errNoRows = pgx.ErrNoRows

func isNoRows(err error) bool { return errors.Is(err, errNoRows) }

// decodeEntry builds the entry of g from its decision row's columns (state
// "A" or "C", participants, decided_at, ended; all nil without a decision
// row) and its actions as JSON: the one reading of a transaction's rows,
// for Store.LookupContext and Reader.Entries.
func decodeEntry(g drivers.GlobalID, state, parts *string, at *time.Time, ended *bool, actions []byte) (decisionlog.Entry, error) {
	e := decisionlog.Entry{GTRID: g}
	var was []wireAction
	if err := json.Unmarshal(actions, &was); err != nil {
		return decisionlog.Entry{}, fmt.Errorf("actions: %w", err)
	}
	for _, w := range was {
		e.Actions = append(e.Actions, decisionlog.Action{GTRID: g, Resource: w.Resource, Branch: w.Branch,
			Op: w.Op, Reason: w.Reason, Actor: w.Actor, Heuristic: w.Heuristic, At: w.At.UTC()})
	}
	if state == nil {
		return e, nil
	}
	switch *state {
	case "A":
		e.State = decisionlog.StateAborted
	case "C":
		d := decisionlog.Decision{GTRID: g, At: at.UTC()}
		if parts != nil {
			ps, label, err := decisionlog.DecodeParticipants([]byte(*parts))
			if err != nil {
				return decisionlog.Entry{}, fmt.Errorf("participants: %w", err)
			}
			d.Participants, d.Label = ps, label
		}
		e.Decision = &d
		e.State = decisionlog.StateCommitted
		if *ended {
			e.State = decisionlog.StateDone
		}
	default:
		return decisionlog.Entry{}, fmt.Errorf("unknown state %q", *state)
	}
	return e, nil
}
