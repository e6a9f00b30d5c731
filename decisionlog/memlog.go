package decisionlog

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"time"

	"github.com/xabridge/xabridge/drivers"
)

// MemLog is a Log in memory: nothing survives the process. It keeps the
// FileLog's semantics (the same fence, the same answers), so it serves
// coordinator tests and programs that want presumed abort without a disk; a
// "crash" of a coordinator is simulated by handing the same MemLog to the
// next one.
type MemLog struct {
	now func() time.Time

	mu      sync.Mutex
	entries map[drivers.GlobalID]*Entry
	order   []drivers.GlobalID // by first record
	decided []drivers.GlobalID // by commit decision
	failErr error
	commits int
	closed  bool
}

var _ Log = (*MemLog)(nil)

// NewMemLog returns an empty in-memory log whose fence reads the clock now
// (time.Now when nil).
func NewMemLog(now func() time.Time) *MemLog {
	if now == nil {
		now = time.Now
	}
	return &MemLog{now: now, entries: map[drivers.GlobalID]*Entry{}}
}

// FailWith makes every later write fail as a real log failure would: with
// an error wrapping ErrLogFailed and err, fail-stop.
func (l *MemLog) FailWith(err error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.failErr = err
}

// Commits returns how many commit decisions were written.
func (l *MemLog) Commits() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.commits
}

func (l *MemLog) writable() error {
	switch {
	case l.closed:
		return ErrLogClosed
	case l.failErr != nil:
		return errors.Join(ErrLogFailed, l.failErr)
	}
	return nil
}

func (l *MemLog) entry(g drivers.GlobalID) *Entry {
	e := l.entries[g]
	if e == nil {
		e = &Entry{GTRID: g}
		l.entries[g] = e
		l.order = append(l.order, g)
	}
	return e
}

func (l *MemLog) state(g drivers.GlobalID) State {
	if e := l.entries[g]; e != nil {
		return e.State
	}
	return StateNone
}

// Commit records the decision, under the fence rule (AdmitCommit).
func (l *MemLog) Commit(ctx context.Context, d Decision) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	if d.Abort {
		return fmt.Errorf("decisionlog: commit %s: an abort marker is not a commit decision", d.GTRID)
	}
	if len(d.Participants) > drivers.MaxBranches {
		return fmt.Errorf("decisionlog: commit decision for %s names %d participants, more than %d", d.GTRID, len(d.Participants), drivers.MaxBranches)
	}
	if err := drivers.ValidateLabel(d.Label); err != nil {
		return fmt.Errorf("decisionlog: commit decision for %s: %w", d.GTRID, err)
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	if err := l.writable(); err != nil {
		return err
	}
	write, err := AdmitCommit(d.GTRID, l.now(), l.state(d.GTRID))
	if !write {
		return err
	}
	if d.At.IsZero() {
		d.At = l.now()
	}
	d.Participants = slices.Clone(d.Participants)
	e := l.entry(d.GTRID)
	e.Decision = &d
	e.State = StateCommitted
	l.decided = append(l.decided, d.GTRID)
	l.commits++
	return nil
}

// Abort records an abort; it is refused once a commit decision exists.
func (l *MemLog) Abort(ctx context.Context, a Action) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	if err := l.writable(); err != nil {
		return err
	}
	if st := l.state(a.GTRID); st == StateCommitted || st == StateDone {
		return fmt.Errorf("decisionlog: abort %s: %w", a.GTRID, ErrAlreadyCommitted)
	}
	if a.Op == "" {
		a.Op = "abort"
	}
	if a.At.IsZero() {
		a.At = l.now()
	}
	e := l.entry(a.GTRID)
	e.State = StateAborted
	e.Actions = append(e.Actions, a)
	return nil
}

// Record appends an action.
func (l *MemLog) Record(ctx context.Context, a Action) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	if err := l.writable(); err != nil {
		return err
	}
	if a.At.IsZero() {
		a.At = l.now()
	}
	e := l.entry(a.GTRID)
	e.Actions = append(e.Actions, a)
	return nil
}

// End records that phase 2 of a committed transaction finished.
func (l *MemLog) End(g drivers.GlobalID) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	if err := l.writable(); err != nil {
		return err
	}
	e := l.entries[g]
	if e == nil || e.Decision == nil {
		return fmt.Errorf("decisionlog: end %s: the log holds no commit decision for it", g)
	}
	if e.State == StateCommitted {
		e.State = StateDone
	}
	return nil
}

// Lookup returns a copy of what the log holds for g.
func (l *MemLog) Lookup(g drivers.GlobalID) (Entry, bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	e := l.entries[g]
	if e == nil {
		return Entry{}, false
	}
	out := *e
	out.Actions = slices.Clone(e.Actions)
	if e.Decision != nil {
		d := *e.Decision
		d.Participants = slices.Clone(d.Participants)
		out.Decision = &d
	}
	return out, true
}

// Pending returns the commit decisions whose phase 2 has not ended, in
// decision order.
func (l *MemLog) Pending() []Decision {
	l.mu.Lock()
	defer l.mu.Unlock()
	var out []Decision
	for _, g := range l.decided {
		if e := l.entries[g]; e.State == StateCommitted {
			d := *e.Decision
			d.Participants = slices.Clone(d.Participants)
			out = append(out, d)
		}
	}
	return out
}

// Close makes every later write fail with ErrLogClosed.
func (l *MemLog) Close() error {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.closed = true
	return nil
}
