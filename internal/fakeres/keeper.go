package fakeres

import (
	"context"
	"errors"
	"slices"
	"sync"
	"time"

	"github.com/xabridge/xabridge/decisionlog"
	"github.com/xabridge/xabridge/drivers"
)

// Keeper is an in-memory decisionlog.Keeper for unit tests: a Resource
// plus a decision table whose rows for one gtrid exclude each other, as the
// primary key of the real table makes them. Fault injection uses the
// Resource's FailNext with the ops "commit-with-decision", "fence-abort",
// "forget-decisions" and "list-decisions".
type Keeper struct {
	*Resource

	kmu     sync.Mutex
	rows    map[drivers.GlobalID]decisionlog.Decision
	forgets int
	// OnForget, if set, is called after each ForgetDecisions with the
	// deleted ids.
	OnForget func([]drivers.GlobalID)
	// Lost makes the next CommitWithDecision commit (row and branch) but
	// return ErrInDoubt, as a connection lost after the server committed.
	Lost bool
}

// NewKeeper returns a Keeper named name.
func NewKeeper(name string) *Keeper {
	return &Keeper{Resource: New(name), rows: map[drivers.GlobalID]decisionlog.Decision{}}
}

var _ decisionlog.Keeper = (*Keeper)(nil)

// CommitWithDecision inserts the commit row and commits b in one phase;
// an existing row (an abort marker) refuses it and rolls b back.
func (k *Keeper) CommitWithDecision(ctx context.Context, b drivers.Branch, g drivers.GlobalID, ps []decisionlog.Participant) error {
	xid := b.XID()
	if err := k.enter(ctx, "commit-with-decision", xid); err != nil {
		if errors.Is(err, drivers.ErrRefused) {
			_ = b.Rollback(ctx)
		}
		return err
	}
	k.kmu.Lock()
	if _, exists := k.rows[g]; exists {
		k.kmu.Unlock()
		_ = b.Rollback(ctx)
		return drivers.NewError(k.name, "commit-with-decision", xid, drivers.ErrRefused, errors.New("duplicate key: abort marker"))
	}
	k.rows[g] = decisionlog.Decision{GTRID: g, Participants: slices.Clone(ps), At: time.Now()}
	lost := k.Lost
	k.Lost = false
	k.kmu.Unlock()
	k.mu.Lock()
	delete(k.active, xid)
	k.committed[xid] = true
	k.mu.Unlock()
	if lost {
		return drivers.NewError(k.name, "commit-with-decision", xid, drivers.ErrInDoubt, errors.New("connection lost"))
	}
	return nil
}

// LookupDecision returns g's row.
func (k *Keeper) LookupDecision(ctx context.Context, g drivers.GlobalID) (decisionlog.Decision, bool, error) {
	k.kmu.Lock()
	defer k.kmu.Unlock()
	d, ok := k.rows[g]
	return d, ok, nil
}

// FenceAbort inserts an abort marker unless a row exists.
func (k *Keeper) FenceAbort(ctx context.Context, g drivers.GlobalID) (bool, error) {
	if err := k.enter(ctx, "fence-abort", drivers.XID{Global: g}); err != nil {
		return false, err
	}
	k.kmu.Lock()
	defer k.kmu.Unlock()
	if d, ok := k.rows[g]; ok {
		return !d.Abort, nil
	}
	k.rows[g] = decisionlog.Decision{GTRID: g, Abort: true, At: time.Now()}
	return false, nil
}

// ForgetDecisions deletes rows.
func (k *Keeper) ForgetDecisions(ctx context.Context, gs []drivers.GlobalID) error {
	if err := k.enter(ctx, "forget-decisions", drivers.XID{}); err != nil {
		return err
	}
	k.kmu.Lock()
	for _, g := range gs {
		delete(k.rows, g)
	}
	k.forgets++
	f := k.OnForget
	k.kmu.Unlock()
	if f != nil {
		f(gs)
	}
	return nil
}

// ListDecisions returns every row, oldest first.
func (k *Keeper) ListDecisions(ctx context.Context) ([]decisionlog.Decision, error) {
	if err := k.enter(ctx, "list-decisions", drivers.XID{}); err != nil {
		return nil, err
	}
	k.kmu.Lock()
	defer k.kmu.Unlock()
	out := make([]decisionlog.Decision, 0, len(k.rows))
	for _, d := range k.rows {
		out = append(out, d)
	}
	slices.SortFunc(out, func(a, b decisionlog.Decision) int { return a.At.Compare(b.At) })
	return out, nil
}

// Rows returns a copy of the decision table.
func (k *Keeper) Rows() map[drivers.GlobalID]decisionlog.Decision {
	k.kmu.Lock()
	defer k.kmu.Unlock()
	out := make(map[drivers.GlobalID]decisionlog.Decision, len(k.rows))
	for g, d := range k.rows {
		out[g] = d
	}
	return out
}

// PutDecision stores a row directly, as a previous coordinator process
// would have left it.
func (k *Keeper) PutDecision(d decisionlog.Decision) {
	k.kmu.Lock()
	defer k.kmu.Unlock()
	k.rows[d.GTRID] = d
}
