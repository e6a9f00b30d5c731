package decisionlog

import (
	"context"
	"errors"
	"reflect"
	"runtime"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/xabridge/xabridge/drivers"
)

func TestFileLogContext(t *testing.T) {
	l := openFL(t, t.TempDir(), newFLClock(flT0), nil)
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	ops := map[string]func() error{
		"commit":  func() error { return l.Commit(ctx, flDecision(flG(1), "pg")) },
		"abort":   func() error { return l.Abort(ctx, Action{GTRID: flG(2)}) },
		"record":  func() error { return l.Record(ctx, Action{GTRID: flG(3)}) },
		"compact": func() error { return l.Compact(ctx) },
	}
	for name, op := range ops {
		if err := op(); !errors.Is(err, context.Canceled) {
			t.Errorf("%s with a cancelled context = %v", name, err)
		}
	}
	if s := l.Stats(); s.Appends != 0 || s.Entries != 0 {
		t.Fatalf("cancelled calls wrote: %+v", s)
	}
}

// flWriterGoroutines counts FileLog writer goroutines in the process (one not
// yet started shows only its go-statement wrapper).
func flWriterGoroutines() int {
	buf := make([]byte, 1<<20)
	for {
		n := runtime.Stack(buf, true)
		if n < len(buf) {
			var count int
			for _, g := range strings.Split(string(buf[:n]), "\n\n") {
				if strings.Contains(g, "decisionlog.(*FileLog).run(") || strings.Contains(g, "decisionlog.OpenFileLog.gowrap") {
					count++
				}
			}
			return count
		}
		buf = make([]byte, 2*len(buf))
	}
}

// flWaitWriters waits until there are want writer goroutines: one that was
// just stopped may still be unwinding when Close returns.
func flWaitWriters(t *testing.T, want int) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		n := flWriterGoroutines()
		if n == want {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d writer goroutines, want %d", n, want)
		}
		time.Sleep(time.Millisecond)
	}
}

func TestFileLogClose(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	clock := newFLClock(flT0)
	flWaitWriters(t, 0) // earlier tests closed theirs
	l, err := OpenFileLog(dir, FileLogOptions{Now: clock.Now})
	if err != nil {
		t.Fatal(err)
	}
	flWaitWriters(t, 1)
	flCommit(t, l, flDecision(flG(1), "pg"))
	if err := l.End(flG(1)); err != nil { // queued only; Close must flush it
		t.Fatal(err)
	}
	flClose(t, l)
	flClose(t, l) // idempotent
	flWaitWriters(t, 0)
	for name, err := range map[string]error{
		"commit":  l.Commit(ctx, flDecision(flG(2), "pg")),
		"abort":   l.Abort(ctx, Action{GTRID: flG(3)}),
		"record":  l.Record(ctx, Action{GTRID: flG(1)}),
		"end":     l.End(flG(1)),
		"compact": l.Compact(ctx),
	} {
		if !errors.Is(err, ErrLogClosed) && !(name == "end" && err == nil) {
			t.Errorf("%s after Close = %v, want ErrLogClosed", name, err)
		}
	}
	if e, _ := l.Lookup(flG(1)); e.State != StateDone {
		t.Errorf("state after Close = %v", e.State)
	}
	l2 := openFL(t, dir, clock, nil)
	if e, _ := l2.Lookup(flG(1)); e.State != StateDone {
		t.Errorf("End queued before Close was lost: %v", e.State)
	}
}

// Concurrent use of everything at once, for the race detector.
func TestFileLogConcurrentMixed(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	clock := newFLClock(flT0)
	l, err := OpenFileLog(dir, FileLogOptions{Now: clock.Now, CompactBytes: 16 << 10, MaxBatch: 16})
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	var seq atomic.Uint32
	for range 8 {
		wg.Go(func() {
			for range 100 {
				gt := flG(seq.Add(1))
				if err := l.Commit(ctx, flDecision(gt, "pg", "mysql")); err != nil {
					t.Error(err)
					return
				}
				if err := l.Record(ctx, Action{GTRID: gt, Op: "commit", Resource: "pg"}); err != nil {
					t.Error(err)
					return
				}
				if gt.Seq()%3 != 0 {
					if err := l.End(gt); err != nil {
						t.Error(err)
						return
					}
				}
				if err := l.Abort(ctx, Action{GTRID: flG(100000 + gt.Seq())}); err != nil {
					t.Error(err)
					return
				}
			}
		})
	}
	wg.Go(func() {
		for range 50 {
			l.Lookup(flG(5))
			l.Pending()
			l.Entries()
			l.Stats()
		}
	})
	wg.Go(func() {
		for range 5 {
			if err := l.Compact(ctx); err != nil {
				t.Error(err)
			}
		}
	})
	wg.Wait()
	want := l.Entries()
	flClose(t, l)
	l2 := openFL(t, dir, clock, nil)
	got := l2.Entries()
	// A compaction still in flight when Entries ran finishes in Close and
	// drops ended transactions Entries still listed, as Entries' contract
	// allows; everything else must come back exactly, in the same order.
	reopened := map[drivers.GlobalID]bool{}
	for _, e := range got {
		reopened[e.GTRID] = true
	}
	want = slices.DeleteFunc(want, func(e Entry) bool { return e.State == StateDone && !reopened[e.GTRID] })
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("entries differ after reopen (%d vs %d)", len(got), len(want))
	}
	if got := len(l2.Pending()); got != 800/3 {
		t.Fatalf("%d pending, want %d", got, 800/3)
	}
}

func TestFileLogReadOnly(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	clock := newFLClock(flT0)
	l := openFL(t, dir, clock, nil)
	flCommit(t, l, flDecision(flG(1), "pg"))

	ro, err := OpenFileLog(dir, FileLogOptions{ReadOnly: true, Now: clock.Now})
	if err != nil {
		t.Fatal(err)
	}
	flCommit(t, l, flDecision(flG(2), "pg"))
	if _, ok := ro.Lookup(flG(1)); !ok {
		t.Errorf("read-only log misses a decision")
	}
	if _, ok := ro.Lookup(flG(2)); ok {
		t.Errorf("read-only log is a snapshot, yet sees a later decision")
	}
	for name, err := range map[string]error{
		"commit":  ro.Commit(ctx, flDecision(flG(3), "pg")),
		"abort":   ro.Abort(ctx, Action{GTRID: flG(3)}),
		"record":  ro.Record(ctx, Action{GTRID: flG(1)}),
		"end":     ro.End(flG(1)),
		"compact": ro.Compact(ctx),
	} {
		if !errors.Is(err, ErrLogReadOnly) {
			t.Errorf("read-only %s = %v, want ErrLogReadOnly", name, err)
		}
	}
	if ro.Dir() != dir {
		t.Errorf("Dir = %q", ro.Dir())
	}
	flClose(t, ro)
	flClose(t, ro)
}

func TestFileLogValidation(t *testing.T) {
	ctx := context.Background()
	l := openFL(t, t.TempDir(), newFLClock(flT0), nil)
	bad := drivers.GlobalID{} // the only invalid GlobalID left
	tests := []struct {
		name string
		op   func() error
	}{
		{"zero gtrid", func() error { return l.Commit(ctx, Decision{}) }},
		{"bad node", func() error { return l.Commit(ctx, flDecision(bad, "pg")) }},
		{"abort bad gtrid", func() error { return l.Abort(ctx, Action{GTRID: bad}) }},
		{"too many participants", func() error {
			d := Decision{GTRID: flG(1), Participants: make([]Participant, drivers.MaxBranches+1)}
			return l.Commit(ctx, d)
		}},
		{"record too large", func() error {
			return l.Record(ctx, Action{GTRID: flG(1), Reason: strings.Repeat("x", maxRecordLen)})
		}},
		{"end without decision", func() error { return l.End(flG(2)) }},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := tt.op()
			if err == nil || errors.Is(err, ErrLogFailed) {
				t.Fatalf("err = %v, want a validation error", err)
			}
		})
	}
	// None of that stopped the log.
	flCommit(t, l, flDecision(flG(1), "pg"))
}

// Strings that are not valid UTF-8 come back from a reopen exactly as the
// running log reported them.
func TestFileLogInvalidUTF8(t *testing.T) {
	dir := t.TempDir()
	clock := newFLClock(flT0)
	l := openFL(t, dir, clock, nil)
	if err := l.Record(context.Background(), Action{GTRID: flG(1), Reason: "bad \xff\xfe bytes", Op: "op\x00"}); err != nil {
		t.Fatal(err)
	}
	want := l.Entries()
	flClose(t, l)
	l2 := openFL(t, dir, clock, nil)
	if got := l2.Entries(); !reflect.DeepEqual(got, want) {
		t.Fatalf("got %+v, want %+v", got, want)
	}
}
