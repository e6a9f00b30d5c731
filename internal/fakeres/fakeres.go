// Package fakeres is an in-memory drivers.Resource with fault injection,
// for unit tests of the coordinator's and recovery's logic. It is no
// evidence of how databases behave: the adapters' conformance suite and the
// integration tests run against real servers for that.
package fakeres

import (
	"context"
	"errors"
	"sort"
	"sync"

	"github.com/xabridge/xabridge/drivers"
)

// Resource is an in-memory resource for unit tests of the coordinator and recovery: it tracks
// which XIDs are active, prepared, committed and rolled back, and fails
// operations on demand. It is not evidence of how databases behave; the
// adapters' conformance suite runs against real servers for that.
type Resource struct {
	name string

	mu         sync.Mutex
	active     map[drivers.XID]bool
	prepared   map[drivers.XID]bool
	committed  map[drivers.XID]bool
	rolledBack map[drivers.XID]bool
	// fail maps an op ("begin", "prepare", "commit", "rollback",
	// "commit-one-phase", "commit-prepared") to errors returned by the next
	// calls, in order.
	fail map[string][]error
	// block, if set for an op, makes that op wait until the channel is
	// closed or the context ends (then it returns ErrInDoubt).
	block map[string]chan struct{}
	// readOnly makes Prepare vote read-only.
	ReadOnly    bool
	calls       map[string]int
	foreign     []string
	foreignXIDs []drivers.Prepared // AddForeignXID
}

func New(name string) *Resource {
	return &Resource{
		name:       name,
		active:     map[drivers.XID]bool{},
		prepared:   map[drivers.XID]bool{},
		committed:  map[drivers.XID]bool{},
		rolledBack: map[drivers.XID]bool{},
		fail:       map[string][]error{},
		block:      map[string]chan struct{}{},
		calls:      map[string]int{},
	}
}

// Name returns the resource name.
func (r *Resource) Name() string { return r.name }

// FailNext makes the next call of op return err (as a classified adapter error).
func (r *Resource) FailNext(op string, kind error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.fail[op] = append(r.fail[op], &drivers.Error{Resource: r.name, Op: op, Kind: kind, Err: errors.New("injected")})
}

func (r *Resource) Block(op string) chan struct{} {
	r.mu.Lock()
	defer r.mu.Unlock()
	ch := make(chan struct{})
	r.block[op] = ch
	return ch
}

// enter records a call and returns an injected error or waits on a block.
func (r *Resource) enter(ctx context.Context, op string, xid drivers.XID) error {
	r.mu.Lock()
	r.calls[op]++
	if errs := r.fail[op]; len(errs) > 0 {
		r.fail[op] = errs[1:]
		r.mu.Unlock()
		return errs[0]
	}
	ch := r.block[op]
	r.mu.Unlock()
	if ch != nil {
		select {
		case <-ch:
		case <-ctx.Done():
			return drivers.NewError(r.name, op, xid, drivers.ErrInDoubt, ctx.Err())
		}
	}
	return nil
}

func (r *Resource) Count(op string) int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.calls[op]
}

func (r *Resource) State(xid drivers.XID) string {
	r.mu.Lock()
	defer r.mu.Unlock()
	switch {
	case r.committed[xid]:
		return "committed"
	case r.rolledBack[xid]:
		return "rolled-back"
	case r.prepared[xid]:
		return "prepared"
	case r.active[xid]:
		return "active"
	}
	return "none"
}

// PreparedXIDs lists prepared XIDs, sorted.
func (r *Resource) PreparedXIDs() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	var s []string
	for x := range r.prepared {
		s = append(s, x.GID())
	}
	sort.Strings(s)
	return s
}

func (r *Resource) Begin(ctx context.Context, xid drivers.XID) (drivers.Branch, error) {
	if err := r.enter(ctx, "begin", xid); err != nil {
		return nil, err
	}
	r.mu.Lock()
	r.active[xid] = true
	r.mu.Unlock()
	return &branch{r: r, xid: xid}, nil
}

func (r *Resource) finishPrepared(ctx context.Context, op string, xid drivers.XID, commit bool) error {
	if err := r.enter(ctx, op, xid); err != nil {
		return err
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if !r.prepared[xid] {
		return drivers.NewError(r.name, op, xid, drivers.ErrNotFound, nil)
	}
	delete(r.prepared, xid)
	if commit {
		r.committed[xid] = true
	} else {
		r.rolledBack[xid] = true
	}
	return nil
}

func (r *Resource) CommitPrepared(ctx context.Context, xid drivers.XID) error {
	return r.finishPrepared(ctx, "commit-prepared", xid, true)
}

func (r *Resource) RollbackPrepared(ctx context.Context, xid drivers.XID) error {
	return r.finishPrepared(ctx, "rollback-prepared", xid, false)
}

func (r *Resource) Recover(ctx context.Context) ([]drivers.Prepared, error) {
	if err := r.enter(ctx, "recover", drivers.XID{}); err != nil {
		return nil, err
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	var out []drivers.Prepared
	for x := range r.prepared {
		out = append(out, drivers.Prepared{XID: x, Ours: true, ID: x.GID()})
	}
	for _, id := range r.foreign {
		out = append(out, drivers.Prepared{ID: id})
	}
	out = append(out, r.foreignXIDs...)
	sort.Slice(out, func(i, j int) bool { return out[i].ID < out[j].ID })
	return out, nil
}

type branch struct {
	r      *Resource
	xid    drivers.XID
	closed bool
}

func (b *branch) XID() drivers.XID { return b.xid }

func (b *branch) Prepare(ctx context.Context) (drivers.Vote, error) {
	r := b.r
	if err := r.enter(ctx, "prepare", b.xid); err != nil {
		r.mu.Lock()
		if errors.Is(err, drivers.ErrRefused) {
			delete(r.active, b.xid)
			r.rolledBack[b.xid] = true
		}
		r.mu.Unlock()
		return 0, err
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	delete(r.active, b.xid)
	if r.ReadOnly {
		return drivers.VoteReadOnly, nil
	}
	r.prepared[b.xid] = true
	return drivers.VoteCommit, nil
}

func (b *branch) Commit(ctx context.Context) error {
	err := b.r.finishPrepared(ctx, "commit", b.xid, true)
	if errors.Is(err, drivers.ErrNotFound) {
		return nil
	}
	return err
}

func (b *branch) Rollback(ctx context.Context) error {
	r := b.r
	r.mu.Lock()
	if r.active[b.xid] {
		delete(r.active, b.xid)
		r.rolledBack[b.xid] = true
		r.mu.Unlock()
		return nil
	}
	r.mu.Unlock()
	err := r.finishPrepared(ctx, "rollback", b.xid, false)
	if errors.Is(err, drivers.ErrNotFound) {
		return nil
	}
	return err
}

func (b *branch) CommitOnePhase(ctx context.Context) error {
	r := b.r
	if err := r.enter(ctx, "commit-one-phase", b.xid); err != nil {
		return err
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	delete(r.active, b.xid)
	r.committed[b.xid] = true
	return nil
}

func (b *branch) Close() error {
	b.closed = true
	return nil
}

// Unblock removes a Block on op without releasing calls already waiting.
func (r *Resource) Unblock(op string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	delete(r.block, op)
}

// AddPrepared makes xid prepared, as if a branch had prepared and its
// coordinator had died.
func (r *Resource) AddPrepared(xid drivers.XID) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.prepared[xid] = true
}

// AddForeign adds a prepared transaction that xabridge did not create.
func (r *Resource) AddForeign(id string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.foreign = append(r.foreign, id)
}

// AddForeignXID adds a prepared transaction in xabridge's format that the
// resource may not finish (as PostgreSQL lists one prepared by another
// role): listed with its XID and note, never Ours.
func (r *Resource) AddForeignXID(xid drivers.XID, note string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.foreignXIDs = append(r.foreignXIDs, drivers.Prepared{XID: xid, ID: xid.GID(), Note: note})
}

// Foreign lists the foreign prepared transactions (never touched by anyone).
func (r *Resource) Foreign() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]string(nil), r.foreign...)
}

// Crash forgets every active (unprepared) branch, as a database does when
// its client disconnects; prepared branches survive.
func (r *Resource) Crash() {
	r.mu.Lock()
	defer r.mu.Unlock()
	for x := range r.active {
		delete(r.active, x)
		r.rolledBack[x] = true
	}
}
