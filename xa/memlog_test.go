package xa

import (
	"context"
	"errors"
	"sync"

	"github.com/xabridge/xabridge/drivers"
)

// memLog is an in-memory decision log with the FileLog's fence semantics,
// for coordinator unit tests. It survives a "crash" of the coordinator
// simply by being reused.
type memLog struct {
	now func() int64 // unix ms

	mu      sync.Mutex
	entries map[drivers.GlobalID]*Entry
	order   []drivers.GlobalID
	failErr error // if set, Commit fails with it (wrapped in ErrLogFailed)
	commits int
}

func newMemLog(now func() int64) *memLog {
	return &memLog{now: now, entries: map[drivers.GlobalID]*Entry{}}
}

func (l *memLog) entry(g drivers.GlobalID) *Entry {
	e := l.entries[g]
	if e == nil {
		e = &Entry{GTRID: g}
		l.entries[g] = e
		l.order = append(l.order, g)
	}
	return e
}

func (l *memLog) Commit(ctx context.Context, d Decision) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.failErr != nil {
		return errors.Join(ErrLogFailed, l.failErr)
	}
	if l.now() >= d.GTRID.Deadline.UnixMilli() {
		return ErrFenced
	}
	if e := l.entries[d.GTRID]; e != nil && e.State == StateAborted {
		return ErrFenced
	}
	e := l.entry(d.GTRID)
	dd := d
	e.Decision = &dd
	e.State = StateCommitted
	l.commits++
	return nil
}

func (l *memLog) Abort(ctx context.Context, a Action) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	e := l.entry(a.GTRID)
	if e.State == StateCommitted || e.State == StateDone {
		return ErrAlreadyCommitted
	}
	e.State = StateAborted
	e.Actions = append(e.Actions, a)
	return nil
}

func (l *memLog) Record(ctx context.Context, a Action) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	e := l.entry(a.GTRID)
	e.Actions = append(e.Actions, a)
	return nil
}

func (l *memLog) End(g drivers.GlobalID) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	if e := l.entries[g]; e != nil && e.State == StateCommitted {
		e.State = StateDone
	}
	return nil
}

func (l *memLog) Lookup(g drivers.GlobalID) (Entry, bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	e := l.entries[g]
	if e == nil {
		return Entry{}, false
	}
	return *e, true
}

func (l *memLog) Pending() []Decision {
	l.mu.Lock()
	defer l.mu.Unlock()
	var out []Decision
	for _, g := range l.order {
		if e := l.entries[g]; e.State == StateCommitted {
			out = append(out, *e.Decision)
		}
	}
	return out
}

func (l *memLog) Close() error { return nil }

var _ Log = (*memLog)(nil)
