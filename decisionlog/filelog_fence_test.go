package decisionlog

import (
	"context"
	"errors"
	"sync"
	"testing"
	"time"

	"github.com/xabridge/xabridge/drivers"
)

func TestFileLogFence(t *testing.T) {
	ctx := context.Background()
	deadline := flT0.Add(time.Hour)

	t.Run("deadline", func(t *testing.T) {
		tests := []struct {
			name    string
			now     time.Time
			wantErr error
		}{
			{"before", deadline.Add(-time.Millisecond), nil},
			{"at", deadline, ErrFenced},
			{"after", deadline.Add(time.Minute), ErrFenced},
		}
		for _, tt := range tests {
			t.Run(tt.name, func(t *testing.T) {
				clock := newFLClock(tt.now)
				l := openFL(t, t.TempDir(), clock, nil)
				err := l.Commit(ctx, flDecision(flGID(1, deadline), "pg"))
				if !errors.Is(err, tt.wantErr) || (tt.wantErr == nil) != (err == nil) {
					t.Fatalf("Commit = %v, want %v", err, tt.wantErr)
				}
				_, found := l.Lookup(flGID(1, deadline))
				s := l.Stats()
				if tt.wantErr != nil && (found || s.Appends != 0 || s.Fenced != 1) {
					t.Fatalf("fenced commit left a trace: found=%v stats=%+v", found, s)
				}
			})
		}
	})

	// The fence uses the deadline as the gtrid carries it (milliseconds),
	// not a finer one the caller may hold.
	t.Run("millisecond deadline", func(t *testing.T) {
		fine := deadline.Add(999 * time.Microsecond)
		clock := newFLClock(deadline.Add(500 * time.Microsecond))
		l := openFL(t, t.TempDir(), clock, nil)
		if err := l.Commit(ctx, flDecision(flGID(1, fine), "pg")); !errors.Is(err, ErrFenced) {
			t.Fatalf("Commit = %v, want ErrFenced", err)
		}
	})

	t.Run("abort then commit", func(t *testing.T) {
		dir := t.TempDir()
		clock := newFLClock(flT0)
		l := openFL(t, dir, clock, nil)
		if err := l.Abort(ctx, Action{GTRID: flG(1), Actor: "recovery"}); err != nil {
			t.Fatal(err)
		}
		if err := l.Commit(ctx, flDecision(flG(1), "pg")); !errors.Is(err, ErrFenced) {
			t.Fatalf("Commit after Abort = %v, want ErrFenced", err)
		}
		flClose(t, l)
		// The abort is durable: the fence holds after a restart.
		l = openFL(t, dir, clock, nil)
		if err := l.Commit(ctx, flDecision(flG(1), "pg")); !errors.Is(err, ErrFenced) {
			t.Fatalf("Commit after reopen = %v, want ErrFenced", err)
		}
		if e, _ := l.Lookup(flG(1)); e.State != StateAborted || e.Decision != nil {
			t.Fatalf("entry = %+v", e)
		}
	})

	t.Run("commit then abort", func(t *testing.T) {
		l := openFL(t, t.TempDir(), newFLClock(flT0), nil)
		flCommit(t, l, flDecision(flG(1), "pg"))
		if err := l.Abort(ctx, Action{GTRID: flG(1)}); !errors.Is(err, ErrAlreadyCommitted) {
			t.Fatalf("Abort after Commit = %v, want ErrAlreadyCommitted", err)
		}
		if err := l.End(flG(1)); err != nil {
			t.Fatal(err)
		}
		flCommit(t, l, flDecision(flG(2), "pg")) // flushes the End
		if err := l.Abort(ctx, Action{GTRID: flG(1)}); !errors.Is(err, ErrAlreadyCommitted) {
			t.Fatalf("Abort after End = %v, want ErrAlreadyCommitted", err)
		}
		if e, _ := l.Lookup(flG(1)); e.State != StateDone || len(e.Actions) != 0 {
			t.Fatalf("entry = %+v", e)
		}
	})

	t.Run("repeated commit past deadline", func(t *testing.T) {
		clock := newFLClock(flT0)
		l := openFL(t, t.TempDir(), clock, nil)
		flCommit(t, l, flDecision(flG(1), "pg"))
		clock.Set(deadline.Add(time.Hour))
		// The decision is durable: repeating it must not answer "abort".
		if err := l.Commit(ctx, flDecision(flG(1), "pg")); err != nil {
			t.Fatalf("repeated Commit = %v, want nil", err)
		}
		if s := l.Stats(); s.Appends != 1 {
			t.Fatalf("repeated Commit wrote a record: %+v", s)
		}
	})

	// Both orders within one batch: the writer decides in queue order.
	for _, tc := range []struct {
		name                 string
		abortFirst           bool
		wantCommit, wantAbrt error
		wantState            State
	}{
		{"same batch abort first", true, ErrFenced, nil, StateAborted},
		{"same batch commit first", false, nil, ErrAlreadyCommitted, StateCommitted},
	} {
		t.Run(tc.name, func(t *testing.T) {
			fa := &flFaults{}
			l := openFL(t, t.TempDir(), newFLClock(flT0), fa)
			reached, release := fa.holdNextSync()
			blocker := flAsync(func() error { return l.Commit(ctx, flDecision(flG(99), "pg")) })
			<-reached
			commit := func() error { return l.Commit(ctx, flDecision(flG(1), "pg")) }
			abort := func() error { return l.Abort(ctx, Action{GTRID: flG(1)}) }
			var commitErr, abortErr <-chan error
			if tc.abortFirst {
				abortErr = flAsync(abort)
				flWaitQueued(t, l, 1)
				commitErr = flAsync(commit)
			} else {
				commitErr = flAsync(commit)
				flWaitQueued(t, l, 1)
				abortErr = flAsync(abort)
			}
			flWaitQueued(t, l, 2)
			release()
			if err := <-blocker; err != nil {
				t.Fatal(err)
			}
			if err := <-commitErr; !errors.Is(err, tc.wantCommit) || (err == nil) != (tc.wantCommit == nil) {
				t.Errorf("Commit = %v, want %v", err, tc.wantCommit)
			}
			if err := <-abortErr; !errors.Is(err, tc.wantAbrt) || (err == nil) != (tc.wantAbrt == nil) {
				t.Errorf("Abort = %v, want %v", err, tc.wantAbrt)
			}
			if e, _ := l.Lookup(flG(1)); e.State != tc.wantState {
				t.Errorf("state = %v, want %v", e.State, tc.wantState)
			}
			if s := l.Stats(); s.Batches != 2 || s.Appends != 2 {
				t.Errorf("stats = %+v, want the pair decided in one batch of one record", s)
			}
		})
	}

	t.Run("racing goroutines", func(t *testing.T) {
		const n = 300
		dir := t.TempDir()
		clock := newFLClock(flT0)
		l := openFL(t, dir, clock, nil)
		type result struct{ commit, abort error }
		results := make([]result, n)
		start := make(chan struct{})
		var wg sync.WaitGroup
		for i := range n {
			wg.Go(func() {
				<-start
				results[i].commit = l.Commit(ctx, flDecision(flG(uint32(i)), "pg"))
			})
			wg.Go(func() {
				<-start
				results[i].abort = l.Abort(ctx, Action{GTRID: flG(uint32(i)), Actor: "recovery"})
			})
		}
		close(start)
		wg.Wait()
		states := make(map[string]State)
		commits := 0
		for i, r := range results {
			var want State
			switch {
			case r.commit == nil && errors.Is(r.abort, ErrAlreadyCommitted):
				want = StateCommitted
				commits++
			case r.abort == nil && errors.Is(r.commit, ErrFenced):
				want = StateAborted
			default:
				t.Fatalf("gtrid %d: commit=%v abort=%v: want exactly one to win", i, r.commit, r.abort)
			}
			e, _ := l.Lookup(flG(uint32(i)))
			if e.State != want {
				t.Fatalf("gtrid %d: state %v, want %v", i, e.State, want)
			}
			states[flG(uint32(i)).String()] = want
		}
		t.Logf("%d commits won, %d aborts won", commits, n-commits)
		flClose(t, l)
		l = openFL(t, dir, clock, nil)
		for _, e := range l.Entries() {
			if states[e.GTRID.String()] != e.State {
				t.Fatalf("after reopen %s is %v, want %v", e.GTRID, e.State, states[e.GTRID.String()])
			}
		}
	})
}

func TestFileLogFailStop(t *testing.T) {
	ctx := context.Background()
	errIO := errors.New("injected EIO")
	tests := []struct {
		name string
		arm  func(fa *flFaults)
	}{
		{"write error", func(fa *flFaults) { fa.writeErr = errIO }},
		{"short write", func(fa *flFaults) { fa.writeErr, fa.writeN = errIO, 100 }},
		{"fsync error", func(fa *flFaults) { fa.syncErr = errIO }},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := t.TempDir()
			clock := newFLClock(flT0)
			fa := &flFaults{}
			l := openFL(t, dir, clock, fa)
			flCommit(t, l, flDecision(flG(1), "pg"))

			// Hold the writer so that several records form the batch
			// that will fail.
			reached, release := fa.holdNextSync()
			blocker := flAsync(func() error { return l.Commit(ctx, flDecision(flG(2), "pg")) })
			<-reached
			const n = 5
			var waiters []<-chan error
			for i := range n {
				waiters = append(waiters, flAsync(func() error { return l.Commit(ctx, flDecision(flG(uint32(10+i)), "pg")) }))
			}
			waiters = append(waiters, flAsync(func() error { return l.Abort(ctx, Action{GTRID: flG(1)}) }))
			flWaitQueued(t, l, n+1)
			fa.set(tt.arm)
			release()
			if err := <-blocker; err != nil {
				t.Fatal(err)
			}
			for i, ch := range waiters {
				// Even the abort that would have been refused: its
				// answer depends on nothing in this batch, so it is
				// refused normally. Every commit waiter sees the failure.
				err := <-ch
				if i == n {
					if !errors.Is(err, ErrAlreadyCommitted) {
						t.Errorf("abort of a durable commit = %v", err)
					}
					continue
				}
				if !errors.Is(err, ErrLogFailed) || !errors.Is(err, errIO) {
					t.Errorf("waiter %d: %v, want ErrLogFailed wrapping the cause", i, err)
				}
			}
			for i := range n {
				if _, ok := l.Lookup(flG(uint32(10 + i))); ok {
					t.Errorf("failed record %d shows in memory", i)
				}
			}
			if p := l.Pending(); len(p) != 2 {
				t.Errorf("Pending = %d decisions, want the 2 durable ones", len(p))
			}
			// Fail-stop: every later write is refused.
			later := map[string]error{
				"commit":  l.Commit(ctx, flDecision(flG(50), "pg")),
				"abort":   l.Abort(ctx, Action{GTRID: flG(51)}),
				"record":  l.Record(ctx, Action{GTRID: flG(1), Op: "x"}),
				"end":     l.End(flG(1)),
				"compact": l.Compact(ctx),
			}
			for op, err := range later {
				if !errors.Is(err, ErrLogFailed) {
					t.Errorf("%s after failure = %v, want ErrLogFailed", op, err)
				}
			}
			if err := l.Close(); !errors.Is(err, ErrLogFailed) {
				t.Errorf("Close = %v, want the failure", err)
			}

			// Reopening is the way out. Records of the failed batch may or
			// may not be there (that is what "unknown" means), but
			// nothing else changed and the log works again.
			l2 := openFL(t, dir, clock, nil)
			for _, gt := range []drivers.GlobalID{flG(1), flG(2)} {
				if e, _ := l2.Lookup(gt); e.State != StateCommitted {
					t.Errorf("%s after reopen: %v", gt, e.State)
				}
			}
			for i := range n {
				if e, ok := l2.Lookup(flG(uint32(10 + i))); ok && e.State != StateCommitted {
					t.Errorf("failed record %d reappeared as %v", i, e.State)
				}
			}
			t.Logf("after reopen: %d entries, %d torn bytes cut", len(l2.Entries()), l2.Stats().TruncatedBytes)
			flCommit(t, l2, flDecision(flG(60), "pg"))
		})
	}

	// A refusal that depends on a record of the failing batch must not be
	// reported as a fact.
	t.Run("dependent answer", func(t *testing.T) {
		fa := &flFaults{}
		l := openFL(t, t.TempDir(), newFLClock(flT0), fa)
		reached, release := fa.holdNextSync()
		blocker := flAsync(func() error { return l.Commit(ctx, flDecision(flG(99), "pg")) })
		<-reached
		commit := flAsync(func() error { return l.Commit(ctx, flDecision(flG(1), "pg")) })
		flWaitQueued(t, l, 1)
		abort := flAsync(func() error { return l.Abort(ctx, Action{GTRID: flG(1)}) })
		again := flAsync(func() error { return l.Commit(ctx, flDecision(flG(1), "pg")) })
		flWaitQueued(t, l, 3)
		fa.set(func(fa *flFaults) { fa.syncErr = errIO })
		release()
		<-blocker
		for name, ch := range map[string]<-chan error{"commit": commit, "abort": abort, "repeated commit": again} {
			if err := <-ch; !errors.Is(err, ErrLogFailed) {
				t.Errorf("%s = %v, want ErrLogFailed", name, err)
			}
		}
	})
}
