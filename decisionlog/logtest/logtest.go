// Package logtest is the conformance suite every decisionlog.Log
// implementation must pass. An implementation's tests build a Harness
// around a fresh, empty log and call Run; the suite checks what the
// coordinator and recovery rely on: the fence (AdmitCommit's order), abort
// versus commit, End, duplicate and conflicting records, replay after a
// reopen, compaction, concurrent writers and fail-stop.
//
// Capabilities a log does not have (it does not persist, cannot compact,
// cannot have a failure injected) are left nil in the Harness and their
// subtests are skipped, so a shared store plugs in the parts it has.
package logtest

import (
	"context"
	"errors"
	"reflect"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/xabridge/xabridge/decisionlog"
	"github.com/xabridge/xabridge/drivers"
)

// Harness is one fresh, empty log under test and what the suite may do to
// it.
type Harness struct {
	// Log is the log under test. Run closes it at the end of the subtest.
	Log decisionlog.Log

	// Reopen closes the current log (ignoring the log's failure, if any)
	// and opens the same durable state again, with the same clock. Nil for
	// a log that does not persist.
	Reopen func(t *testing.T) decisionlog.Log

	// Compact compacts the current log. Nil when it cannot compact.
	Compact func(ctx context.Context) error

	// Fail makes the next write of the current log fail the way a real
	// storage failure would (a write or fsync error). Nil when a failure
	// cannot be injected.
	Fail func(err error)
}

// Opener opens a fresh, empty log whose fence and record times read
// clock.Now. A store whose clock is its database's must let the suite set
// that clock, or it cannot run the fence tests.
type Opener func(t *testing.T, clock *Clock) Harness

// Clock is the suite's settable clock; it is safe for concurrent use.
type Clock struct{ ns atomic.Int64 }

// T0 is the suite clock's start.
var T0 = time.Date(2031, 5, 6, 7, 8, 9, 0, time.UTC)

// NewClock returns a clock reading t.
func NewClock(t time.Time) *Clock {
	c := &Clock{}
	c.ns.Store(t.UnixNano())
	return c
}

// Now returns the clock's time.
func (c *Clock) Now() time.Time { return time.Unix(0, c.ns.Load()).UTC() }

// Set sets the clock.
func (c *Clock) Set(t time.Time) { c.ns.Store(t.UnixNano()) }

// Node is the node id of every gtrid the suite writes.
const Node = "logtest"

// GID returns a suite gtrid with sequence number seq, begun an hour before
// T0, with its deadline an hour after T0 (millisecond times, as the codec
// keeps them).
func GID(seq uint32) drivers.GlobalID {
	return drivers.MustGlobalID(Node, T0.Add(-time.Hour), seq, T0.Add(time.Hour))
}

func decision(g drivers.GlobalID, resources ...string) decisionlog.Decision {
	d := decisionlog.Decision{GTRID: g}
	for i, r := range resources {
		d.Participants = append(d.Participants, decisionlog.Participant{Resource: r, Branch: uint8(i + 1)})
	}
	return d
}

// env is one subtest's log and clock.
type env struct {
	t     *testing.T
	h     Harness
	clock *Clock
	log   decisionlog.Log
}

func (e *env) commit(d decisionlog.Decision) {
	e.t.Helper()
	if err := e.log.Commit(context.Background(), d); err != nil {
		e.t.Fatalf("Commit(%s): %v", d.GTRID, err)
	}
}

func (e *env) state(g drivers.GlobalID) decisionlog.State {
	e.t.Helper()
	en, ok := e.log.Lookup(g)
	if !ok {
		return decisionlog.StateNone
	}
	if !sameGID(en.GTRID, g) {
		e.t.Errorf("Lookup(%s).GTRID = %s", g, en.GTRID)
	}
	return en.State
}

func (e *env) wantState(g drivers.GlobalID, want decisionlog.State) {
	e.t.Helper()
	if got := e.state(g); got != want {
		e.t.Errorf("state of %s = %v, want %v", g, got, want)
	}
}

func (e *env) pending() []string {
	var out []string
	for _, d := range e.log.Pending() {
		out = append(out, d.GTRID.String())
	}
	return out
}

func (e *env) reopen() {
	e.t.Helper()
	e.log = e.h.Reopen(e.t)
}

// Run runs the suite; open is called once per subtest.
func Run(t *testing.T, open Opener) {
	tests := []struct {
		name string
		need func(Harness) bool
		run  func(e *env)
	}{
		{"CommitLookupPending", nil, testCommit},
		{"CommitFillsTime", nil, testCommitTime},
		{"Label", nil, testLabel},
		{"AbortFencesCommit", nil, testAbort},
		{"AbortAfterCommitRefused", nil, testAbortAfterCommit},
		{"FenceByDeadline", nil, testDeadline},
		{"FenceOrder", nil, testFenceOrder},
		{"End", nil, testEnd},
		{"DuplicateAndConflicting", nil, testDuplicates},
		{"RecordActions", nil, testRecord},
		{"CancelledContextWritesNothing", nil, testCancelled},
		{"PendingOrder", nil, testPendingOrder},
		{"ConcurrentWriters", nil, testConcurrent},
		{"ReplayAfterReopen", func(h Harness) bool { return h.Reopen != nil }, testReopen},
		{"Compaction", func(h Harness) bool { return h.Compact != nil }, testCompaction},
		{"FailStop", func(h Harness) bool { return h.Fail != nil }, testFailStop},
		{"Closed", nil, testClosed},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			clock := NewClock(T0)
			h := open(t, clock)
			if tt.need != nil && !tt.need(h) {
				t.Skip("the log under test does not support this")
			}
			e := &env{t: t, h: h, clock: clock, log: h.Log}
			t.Cleanup(func() { _ = e.log.Close() })
			tt.run(e)
		})
	}
}

func testCommit(e *env) {
	g := GID(1)
	if _, ok := e.log.Lookup(g); ok {
		e.t.Fatalf("empty log knows %s", g)
	}
	d := decision(g, "pg", "mysql")
	e.commit(d)
	en, ok := e.log.Lookup(g)
	if !ok || en.State != decisionlog.StateCommitted || en.Decision == nil {
		e.t.Fatalf("Lookup after Commit = %+v, %v", en, ok)
	}
	if !slices.Equal(en.Decision.Participants, d.Participants) || !sameGID(en.Decision.GTRID, g) {
		e.t.Errorf("decision = %+v, want participants %+v", en.Decision, d.Participants)
	}
	// The returned entry is a copy.
	en.Decision.Participants[0].Resource = "changed"
	if en2, _ := e.log.Lookup(g); en2.Decision.Participants[0].Resource != "pg" {
		e.t.Errorf("the log changed through a returned Entry")
	}
	p := e.log.Pending()
	if len(p) != 1 || !sameGID(p[0].GTRID, g) || !slices.Equal(p[0].Participants, d.Participants) {
		e.t.Errorf("Pending = %+v", p)
	}
}

// testLabel: a decision's label comes back exactly from Lookup and Pending,
// after a reopen too (it is part of every participant's XID: a log that
// lost it would finish the branches under the wrong XIDs); an invalid label
// is refused with nothing written; an unlabelled decision stays unlabelled.
func testLabel(e *env) {
	labelled, plain, bad := GID(1), GID(2), GID(3)
	d := decision(labelled, "pg", "mysql")
	d.Label = "order-123/EU#7"
	e.commit(d)
	e.commit(decision(plain, "pg", "mysql"))
	dbad := decision(bad, "pg")
	dbad.Label = "no spaces"
	if err := e.log.Commit(context.Background(), dbad); err == nil {
		e.t.Errorf("Commit with label %q succeeded", dbad.Label)
	}
	check := func(when string) {
		e.t.Helper()
		en, ok := e.log.Lookup(labelled)
		if !ok || en.Decision == nil || en.Decision.Label != d.Label {
			e.t.Errorf("%s: Lookup(labelled) = %+v, %v; want label %q", when, en.Decision, ok, d.Label)
		} else if x := en.Decision.XID(en.Decision.Participants[0]); x.Label != d.Label || x.Branch != 1 {
			e.t.Errorf("%s: Decision.XID = %+v", when, x)
		}
		if en, ok := e.log.Lookup(plain); !ok || en.Decision == nil || en.Decision.Label != "" {
			e.t.Errorf("%s: Lookup(plain) = %+v, %v; want no label", when, en.Decision, ok)
		}
		if st := e.state(bad); st != decisionlog.StateNone {
			e.t.Errorf("%s: the refused decision left state %v", when, st)
		}
		labels := map[string]string{}
		for _, p := range e.log.Pending() {
			labels[p.GTRID.String()] = p.Label
		}
		if labels[labelled.String()] != d.Label || labels[plain.String()] != "" || len(labels) != 2 {
			e.t.Errorf("%s: Pending labels = %v", when, labels)
		}
	}
	check("after commit")
	if e.h.Compact != nil {
		if err := e.h.Compact(context.Background()); err != nil {
			e.t.Fatal(err)
		}
		check("after compaction")
	}
	if e.h.Reopen != nil {
		e.reopen()
		check("after reopen")
	}
}

func testCommitTime(e *env) {
	g := GID(1)
	e.commit(decision(g, "pg"))
	en, _ := e.log.Lookup(g)
	if en.Decision == nil || !en.Decision.At.Equal(T0) {
		e.t.Errorf("a zero At was recorded as %v, want the clock's %v", en.Decision, T0)
	}
	at := T0.Add(-time.Minute)
	d := decision(GID(2), "pg")
	d.At = at
	e.commit(d)
	if en, _ := e.log.Lookup(GID(2)); !en.Decision.At.Equal(at) {
		e.t.Errorf("At = %v, want %v", en.Decision.At, at)
	}
}

func testAbort(e *env) {
	ctx := context.Background()
	g := GID(1)
	if err := e.log.Abort(ctx, decisionlog.Action{GTRID: g, Reason: "presumed", Actor: "recovery"}); err != nil {
		e.t.Fatal(err)
	}
	e.wantState(g, decisionlog.StateAborted)
	en, _ := e.log.Lookup(g)
	if len(en.Actions) != 1 || en.Actions[0].Op != "abort" || en.Actions[0].Actor != "recovery" || !en.Actions[0].At.Equal(T0) {
		e.t.Errorf("abort actions = %+v (an empty Op is recorded as \"abort\", a zero At as the clock)", en.Actions)
	}
	if err := e.log.Commit(ctx, decision(g, "pg")); !errors.Is(err, decisionlog.ErrFenced) {
		e.t.Fatalf("Commit after Abort = %v, want ErrFenced", err)
	}
	e.wantState(g, decisionlog.StateAborted)
	if p := e.log.Pending(); len(p) != 0 {
		e.t.Errorf("Pending = %+v", p)
	}
	// A second abort is harmless.
	if err := e.log.Abort(ctx, decisionlog.Action{GTRID: g}); err != nil {
		e.t.Errorf("second Abort = %v", err)
	}
	e.wantState(g, decisionlog.StateAborted)
}

func testAbortAfterCommit(e *env) {
	ctx := context.Background()
	g := GID(1)
	e.commit(decision(g, "pg"))
	if err := e.log.Abort(ctx, decisionlog.Action{GTRID: g}); !errors.Is(err, decisionlog.ErrAlreadyCommitted) {
		e.t.Fatalf("Abort after Commit = %v, want ErrAlreadyCommitted", err)
	}
	e.wantState(g, decisionlog.StateCommitted)
	if err := e.log.End(g); err != nil {
		e.t.Fatal(err)
	}
	if err := e.log.Abort(ctx, decisionlog.Action{GTRID: g}); !errors.Is(err, decisionlog.ErrAlreadyCommitted) {
		e.t.Fatalf("Abort after End = %v, want ErrAlreadyCommitted", err)
	}
	e.wantState(g, decisionlog.StateDone)
}

func testDeadline(e *env) {
	ctx := context.Background()
	tests := []struct {
		name    string
		now     time.Time
		wantErr error
	}{
		{"a millisecond before", T0.Add(time.Hour - time.Millisecond), nil},
		{"at the deadline", T0.Add(time.Hour), decisionlog.ErrFenced},
		{"after the deadline", T0.Add(2 * time.Hour), decisionlog.ErrFenced},
	}
	for i, tt := range tests {
		g := GID(uint32(i + 1))
		e.clock.Set(tt.now)
		err := e.log.Commit(ctx, decision(g, "pg"))
		if !errors.Is(err, tt.wantErr) || (tt.wantErr == nil) != (err == nil) {
			e.t.Errorf("%s: Commit = %v, want %v", tt.name, err, tt.wantErr)
		}
		want := decisionlog.StateCommitted
		if tt.wantErr != nil {
			want = decisionlog.StateNone
		}
		e.wantState(g, want)
	}
}

// testFenceOrder checks AdmitCommit's order: a repeat of a durable commit is
// nil even past the deadline; the deadline is checked before the abort.
func testFenceOrder(e *env) {
	ctx := context.Background()
	committed, ended, aborted := GID(1), GID(2), GID(3)
	e.commit(decision(committed, "pg"))
	e.commit(decision(ended, "pg"))
	if err := e.log.End(ended); err != nil {
		e.t.Fatal(err)
	}
	if err := e.log.Abort(ctx, decisionlog.Action{GTRID: aborted}); err != nil {
		e.t.Fatal(err)
	}
	e.clock.Set(T0.Add(3 * time.Hour))
	for _, g := range []drivers.GlobalID{committed, ended} {
		if err := e.log.Commit(ctx, decision(g, "pg")); err != nil {
			e.t.Errorf("repeat of a durable commit past the deadline = %v, want nil", err)
		}
	}
	err := e.log.Commit(ctx, decision(aborted, "pg"))
	if !errors.Is(err, decisionlog.ErrFenced) {
		e.t.Fatalf("commit of an aborted transaction = %v, want ErrFenced", err)
	}
	if _, wantErr := decisionlog.AdmitCommit(aborted, e.clock.Now(), decisionlog.StateAborted); !sameReason(err, wantErr) {
		e.t.Errorf("past the deadline and aborted: %v; want the deadline reason (%v)", err, wantErr)
	}
	e.wantState(committed, decisionlog.StateCommitted)
	e.wantState(ended, decisionlog.StateDone)
	e.wantState(aborted, decisionlog.StateAborted)
}

// sameReason reports whether err states the reason of want, AdmitCommit's
// error: the log may wrap it but must not replace it.
func sameReason(err, want error) bool {
	return err != nil && want != nil && strings.Contains(err.Error(), want.Error())
}

func testEnd(e *env) {
	ctx := context.Background()
	g, other := GID(1), GID(2)
	e.commit(decision(g, "pg", "mysql"))
	e.commit(decision(other, "pg"))
	if err := e.log.End(g); err != nil {
		e.t.Fatal(err)
	}
	e.wantState(g, decisionlog.StateDone)
	if err := e.log.End(g); err != nil {
		e.t.Errorf("second End = %v", err)
	}
	if got, want := e.pending(), []string{other.String()}; !slices.Equal(got, want) {
		e.t.Errorf("Pending = %q, want %q", got, want)
	}
	en, _ := e.log.Lookup(g)
	if en.Decision == nil {
		e.t.Errorf("an ended transaction has no decision: %+v", en)
	}
	if err := e.log.End(GID(3)); err == nil {
		e.t.Errorf("End of an unknown transaction succeeded")
	}
	if err := e.log.Abort(ctx, decisionlog.Action{GTRID: GID(4)}); err != nil {
		e.t.Fatal(err)
	}
	if err := e.log.End(GID(4)); err == nil {
		e.t.Errorf("End of an aborted transaction succeeded")
	}
	e.wantState(GID(4), decisionlog.StateAborted)
}

func testDuplicates(e *env) {
	ctx := context.Background()
	g := GID(1)
	first := decision(g, "pg", "mysql")
	e.commit(first)
	// The same decision again, then a conflicting one: both answer nil
	// (the decision is durable) and the first decision stands.
	e.commit(first)
	e.commit(decision(g, "other"))
	en, _ := e.log.Lookup(g)
	if en.State != decisionlog.StateCommitted || en.Decision == nil || !slices.Equal(en.Decision.Participants, first.Participants) {
		e.t.Errorf("after duplicate and conflicting commits: %+v", en)
	}
	if got := e.pending(); len(got) != 1 {
		e.t.Errorf("Pending = %q, want one decision", got)
	}
	// Duplicate actions are both kept: they are a history.
	a := decisionlog.Action{GTRID: g, Resource: "pg", Branch: 1, Op: "commit", Actor: "recovery"}
	for range 2 {
		if err := e.log.Record(ctx, a); err != nil {
			e.t.Fatal(err)
		}
	}
	if en, _ := e.log.Lookup(g); len(en.Actions) != 2 {
		e.t.Errorf("actions = %+v, want two", en.Actions)
	}
}

func testRecord(e *env) {
	ctx := context.Background()
	g := GID(1)
	at := T0.Add(-time.Second)
	acts := []decisionlog.Action{
		{GTRID: g, Resource: "pg", Branch: 2, Op: "rollback", Reason: "no decision", Actor: "operator root@h", At: at},
		{GTRID: g, Resource: "mysql", Branch: 3, Op: "commit", Reason: "forced", Actor: "operator", Heuristic: true},
	}
	if err := e.log.Record(ctx, acts[0]); err != nil {
		e.t.Fatal(err)
	}
	en, ok := e.log.Lookup(g)
	if !ok || en.State != decisionlog.StateNone || en.Heuristic() {
		e.t.Errorf("after one action: %+v, %v", en, ok)
	}
	if err := e.log.Record(ctx, acts[1]); err != nil {
		e.t.Fatal(err)
	}
	acts[1].At = T0
	en, _ = e.log.Lookup(g)
	if len(en.Actions) != 2 {
		e.t.Fatalf("actions = %+v", en.Actions)
	}
	for i, want := range acts {
		got := en.Actions[i]
		if !sameGID(got.GTRID, g) || !got.At.Equal(want.At) {
			e.t.Errorf("action %d = %+v, want %+v", i, got, want)
		}
		got.GTRID, got.At, want.GTRID, want.At = drivers.GlobalID{}, time.Time{}, drivers.GlobalID{}, time.Time{}
		if got != want {
			e.t.Errorf("action %d = %+v, want %+v", i, got, want)
		}
	}
	if !en.Heuristic() {
		e.t.Errorf("a heuristic action is not reported")
	}
	// A commit decision after actions is still admitted.
	e.commit(decision(g, "pg"))
	e.wantState(g, decisionlog.StateCommitted)
}

func testCancelled(e *env) {
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	g := GID(1)
	if err := e.log.Commit(ctx, decision(g, "pg")); !errors.Is(err, context.Canceled) {
		e.t.Errorf("Commit with a cancelled context = %v", err)
	}
	if err := e.log.Abort(ctx, decisionlog.Action{GTRID: GID(2)}); !errors.Is(err, context.Canceled) {
		e.t.Errorf("Abort with a cancelled context = %v", err)
	}
	e.wantState(g, decisionlog.StateNone)
	e.wantState(GID(2), decisionlog.StateNone)
}

func testPendingOrder(e *env) {
	ctx := context.Background()
	// An action before its decision: Pending is in decision order.
	if err := e.log.Record(ctx, decisionlog.Action{GTRID: GID(3), Op: "note"}); err != nil {
		e.t.Fatal(err)
	}
	var want []string
	for _, s := range []uint32{5, 1, 3, 2} {
		e.commit(decision(GID(s), "pg"))
		want = append(want, GID(s).String())
	}
	if got := e.pending(); !slices.Equal(got, want) {
		e.t.Errorf("Pending = %q, want %q", got, want)
	}
}

// testConcurrent races writers on distinct and shared gtrids: every
// commit/abort pair on one gtrid has exactly one winner.
func testConcurrent(e *env) {
	ctx := context.Background()
	const n = 64
	var wg sync.WaitGroup
	commitErr := make([]error, n)
	abortErr := make([]error, n)
	for i := range n {
		wg.Add(3)
		go func() {
			defer wg.Done()
			commitErr[i] = e.log.Commit(ctx, decision(GID(uint32(i)), "pg", "mysql"))
		}()
		go func() {
			defer wg.Done()
			abortErr[i] = e.log.Abort(ctx, decisionlog.Action{GTRID: GID(uint32(i)), Actor: "recovery"})
		}()
		go func() {
			defer wg.Done()
			g := GID(uint32(1000 + i))
			if err := e.log.Commit(ctx, decision(g, "pg")); err != nil {
				e.t.Errorf("Commit(%s): %v", g, err)
				return
			}
			if err := e.log.End(g); err != nil {
				e.t.Errorf("End(%s): %v", g, err)
			}
			_ = e.log.Record(ctx, decisionlog.Action{GTRID: g, Op: "note"})
			e.log.Lookup(g)
			e.log.Pending()
		}()
	}
	wg.Wait()
	for i := range n {
		g := GID(uint32(i))
		st := e.state(g)
		switch {
		case commitErr[i] == nil && errors.Is(abortErr[i], decisionlog.ErrAlreadyCommitted):
			if st != decisionlog.StateCommitted {
				e.t.Errorf("%s: commit won, state %v", g, st)
			}
		case abortErr[i] == nil && errors.Is(commitErr[i], decisionlog.ErrFenced):
			if st != decisionlog.StateAborted {
				e.t.Errorf("%s: abort won, state %v", g, st)
			}
		default:
			e.t.Errorf("%s: commit = %v, abort = %v: not exactly one winner", g, commitErr[i], abortErr[i])
		}
		e.wantState(GID(uint32(1000+i)), decisionlog.StateDone)
	}
}

// history writes a mix of every record kind and returns a function that
// checks a log holds it.
func history(e *env) func(l decisionlog.Log) {
	ctx := context.Background()
	pend, done, aborted, noted, heur := GID(1), GID(2), GID(3), GID(4), GID(5)
	e.commit(decision(pend, "pg", "mysql"))
	e.commit(decision(done, "pg"))
	if err := e.log.End(done); err != nil {
		e.t.Fatal(err)
	}
	if err := e.log.Abort(ctx, decisionlog.Action{GTRID: aborted, Actor: "recovery"}); err != nil {
		e.t.Fatal(err)
	}
	if err := e.log.Record(ctx, decisionlog.Action{GTRID: noted, Op: "rollback", Resource: "pg", Actor: "recovery"}); err != nil {
		e.t.Fatal(err)
	}
	e.commit(decision(heur, "pg", "mysql"))
	if err := e.log.Record(ctx, decisionlog.Action{GTRID: heur, Op: "rollback", Resource: "mysql", Branch: 2, Heuristic: true}); err != nil {
		e.t.Fatal(err)
	}
	if err := e.log.End(heur); err != nil {
		e.t.Fatal(err)
	}
	pendEntry, _ := e.log.Lookup(pend)
	heurEntry, _ := e.log.Lookup(heur)
	return func(l decisionlog.Log) {
		e.t.Helper()
		if got, _ := l.Lookup(pend); !equalEntry(got, pendEntry) {
			e.t.Errorf("pending entry = %+v, want %+v", got, pendEntry)
		}
		if got, _ := l.Lookup(heur); !equalEntry(got, heurEntry) || !got.Heuristic() {
			e.t.Errorf("heuristic entry = %+v, want %+v", got, heurEntry)
		}
		if got := pendingKeys(l); !slices.Contains(got, pend.String()) || slices.Contains(got, heur.String()) || slices.Contains(got, done.String()) {
			e.t.Errorf("Pending = %q, want %s and neither %s nor %s", got, pend, heur, done)
		}
		if err := l.Commit(ctx, decision(aborted, "pg")); !errors.Is(err, decisionlog.ErrFenced) {
			e.t.Errorf("the abort no longer fences: %v", err)
		}
		if err := l.Commit(ctx, decision(pend, "pg")); err != nil {
			e.t.Errorf("repeat of a durable decision = %v", err)
		}
	}
}

func pendingKeys(l decisionlog.Log) []string {
	var out []string
	for _, d := range l.Pending() {
		out = append(out, d.GTRID.String())
	}
	return out
}

func equalEntry(a, b decisionlog.Entry) bool { return reflect.DeepEqual(a, b) }

func testReopen(e *env) {
	check := history(e)
	done := GID(2)
	e.reopen()
	check(e.log)
	e.wantState(done, decisionlog.StateDone)
	e.wantState(GID(3), decisionlog.StateAborted)
	if en, ok := e.log.Lookup(GID(4)); !ok || len(en.Actions) != 1 {
		e.t.Errorf("action-only entry after reopen = %+v, %v", en, ok)
	}
	// Writes keep working after a reopen, and survive the next one.
	e.commit(decision(GID(6), "pg"))
	e.reopen()
	e.wantState(GID(6), decisionlog.StateCommitted)
	check(e.log)
}

func testCompaction(e *env) {
	check := history(e)
	if err := e.h.Compact(context.Background()); err != nil {
		e.t.Fatal(err)
	}
	check(e.log)
	e.commit(decision(GID(7), "pg"))
	e.wantState(GID(7), decisionlog.StateCommitted)
	if e.h.Reopen != nil {
		e.reopen()
		check(e.log)
		e.wantState(GID(7), decisionlog.StateCommitted)
	}
}

func testFailStop(e *env) {
	ctx := context.Background()
	e.commit(decision(GID(1), "pg"))
	injected := errors.New("logtest: injected I/O error")
	e.h.Fail(injected)
	if err := e.log.Commit(ctx, decision(GID(2), "pg")); !errors.Is(err, decisionlog.ErrLogFailed) {
		e.t.Fatalf("Commit with a failing store = %v, want ErrLogFailed", err)
	}
	// Fail-stop: every later write fails, even those that would not reach
	// the storage.
	writes := map[string]func() error{
		"commit":        func() error { return e.log.Commit(ctx, decision(GID(3), "pg")) },
		"repeat commit": func() error { return e.log.Commit(ctx, decision(GID(1), "pg")) },
		"abort":         func() error { return e.log.Abort(ctx, decisionlog.Action{GTRID: GID(4)}) },
		"record":        func() error { return e.log.Record(ctx, decisionlog.Action{GTRID: GID(1), Op: "note"}) },
		"end":           func() error { return e.log.End(GID(1)) },
	}
	for name, w := range writes {
		if err := w(); !errors.Is(err, decisionlog.ErrLogFailed) {
			e.t.Errorf("%s after the failure = %v, want ErrLogFailed", name, err)
		}
	}
	// Reads keep answering from what is durable.
	e.wantState(GID(1), decisionlog.StateCommitted)
	if e.h.Reopen != nil {
		e.reopen()
		e.wantState(GID(1), decisionlog.StateCommitted)
		e.commit(decision(GID(5), "pg"))
	}
}

func testClosed(e *env) {
	ctx := context.Background()
	e.commit(decision(GID(1), "pg"))
	if err := e.log.Close(); err != nil {
		e.t.Fatal(err)
	}
	if err := e.log.Commit(ctx, decision(GID(2), "pg")); !errors.Is(err, decisionlog.ErrLogClosed) {
		e.t.Errorf("Commit after Close = %v, want ErrLogClosed", err)
	}
	if err := e.log.Abort(ctx, decisionlog.Action{GTRID: GID(3)}); !errors.Is(err, decisionlog.ErrLogClosed) {
		e.t.Errorf("Abort after Close = %v, want ErrLogClosed", err)
	}
	e.wantState(GID(1), decisionlog.StateCommitted)
}

func sameGID(a, b drivers.GlobalID) bool { return a.String() == b.String() }
