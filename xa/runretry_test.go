package xa

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"testing"
	"time"

	"github.com/xabridge/xabridge/drivers"
)

// conflictErr is what an adapter returns for a deadlocked statement.
func conflictErr() error {
	return &drivers.Error{Resource: "a", Op: "exec", Kind: drivers.ErrConflict, Err: errors.New("40P01 deadlock detected")}
}

// TestRunRetry runs RunRetry against fake resources with a deterministic
// sleep (recorded, no wait) and no jitter.
func TestRunRetry(t *testing.T) {
	appErr := errors.New("insufficient funds")
	tests := []struct {
		name string
		max  int
		// work returns the callback's error on run n (1-based).
		work func(n int) error
		// setup arms failures of the resources before RunRetry.
		setup     func(e *testEnv)
		wantRuns  int
		wantSleep []time.Duration
		want      Outcome
		reason    Reason
	}{
		{
			name: "conflict twice, then commits",
			work: func(n int) error {
				if n < 3 {
					return fmt.Errorf("debit: %w", conflictErr())
				}
				return nil
			},
			wantRuns: 3, wantSleep: []time.Duration{10 * time.Millisecond, 20 * time.Millisecond},
			want: Committed, reason: ReasonNone,
		},
		{
			name:     "conflict every time: bounded",
			max:      4,
			work:     func(int) error { return conflictErr() },
			wantRuns: 4, wantSleep: []time.Duration{10 * time.Millisecond, 20 * time.Millisecond, 40 * time.Millisecond},
			want: Aborted, reason: ReasonConflict,
		},
		{
			name:     "application error: not retried",
			work:     func(int) error { return appErr },
			wantRuns: 1, want: Aborted, reason: ReasonUserError,
		},
		{
			name:     "prepare refused by a conflict: retried",
			setup:    func(e *testEnv) { e.b.FailNext("prepare", drivers.ErrConflict) },
			wantRuns: 2, wantSleep: []time.Duration{10 * time.Millisecond},
			want: Committed, reason: ReasonNone,
		},
		{
			name:     "prepare refused for good: not retried",
			setup:    func(e *testEnv) { e.b.FailNext("prepare", drivers.ErrRefused) },
			wantRuns: 1, want: Aborted, reason: ReasonPrepareRefused,
		},
		{
			name:     "outcome unknown: never retried",
			setup:    func(e *testEnv) { e.log.FailWith(errors.New("disk gone")) },
			wantRuns: 1, want: Unknown, reason: ReasonLogFailed,
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			e := newTestEnv(t, nil)
			if tc.setup != nil {
				tc.setup(e)
			}
			var slept []time.Duration
			p := RetryPolicy{
				MaxAttempts: tc.max,
				Jitter:      func(d time.Duration) time.Duration { return d },
				sleep: func(_ context.Context, d time.Duration) error {
					slept = append(slept, d)
					return nil
				},
			}
			runs := 0
			err := e.c.RunRetry(context.Background(), p, func(ctx context.Context, tx *Tx) error {
				runs++
				if _, _, err := both(ctx, tx, e.a, e.b); err != nil {
					return err
				}
				if tc.work != nil {
					return tc.work(runs)
				}
				return nil
			})
			if runs != tc.wantRuns || OutcomeOf(err) != tc.want || ReasonOf(err) != tc.reason {
				t.Fatalf("%d runs, outcome %v, reason %v (err %v); want %d runs, %v, %v", runs, OutcomeOf(err), ReasonOf(err), err, tc.wantRuns, tc.want, tc.reason)
			}
			if !slices.Equal(slept, tc.wantSleep) {
				t.Errorf("slept %v, want %v", slept, tc.wantSleep)
			}
			if tc.want == Aborted && errors.Is(err, appErr) != (tc.reason == ReasonUserError) {
				t.Errorf("err %v: the application's error is not the one returned", err)
			}
			if e.c.InFlight() != 0 && tc.want != Unknown {
				t.Errorf("%d transactions still in flight", e.c.InFlight())
			}
		})
	}
}

// A context that ends during the backoff stops the retries: the last abort
// is the answer, and the callback is not run again.
func TestRunRetryStopsWithContext(t *testing.T) {
	e := newTestEnv(t, nil)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	p := RetryPolicy{sleep: func(ctx context.Context, _ time.Duration) error {
		cancel()
		<-ctx.Done()
		return ctx.Err()
	}}
	runs := 0
	err := e.c.RunRetry(ctx, p, func(ctx context.Context, tx *Tx) error {
		runs++
		return conflictErr()
	})
	if runs != 1 || ReasonOf(err) != ReasonConflict {
		t.Fatalf("%d runs, err %v (reason %v); want 1 run ending in the conflict", runs, err, ReasonOf(err))
	}
}

func TestRetryBackoff(t *testing.T) {
	p := RetryPolicy{BaseDelay: 10 * time.Millisecond, MaxDelay: 50 * time.Millisecond}.withDefaults()
	var got []time.Duration
	for attempt := 1; attempt <= 5; attempt++ {
		got = append(got, p.backoff(attempt))
	}
	want := []time.Duration{10 * time.Millisecond, 20 * time.Millisecond, 40 * time.Millisecond, 50 * time.Millisecond, 50 * time.Millisecond}
	if !slices.Equal(got, want) {
		t.Fatalf("backoff %v, want %v", got, want)
	}
	if d := (RetryPolicy{}).withDefaults(); d.MaxAttempts != 5 || d.BaseDelay != 10*time.Millisecond || d.MaxDelay != time.Second {
		t.Fatalf("defaults %+v", d)
	}
	for range 1000 {
		if j := equalJitter(40 * time.Millisecond); j < 20*time.Millisecond || j > 40*time.Millisecond {
			t.Fatalf("equalJitter(40ms) = %v, want within [20ms, 40ms]", j)
		}
	}
}

func TestReasonConflict(t *testing.T) {
	g := "n.1.2.3"
	e := func(o Outcome, op Op, err error) error { return &Error{GTRID: g, Outcome: o, Op: op, Err: err} }
	refusedByDeadlock := &drivers.Error{Kind: drivers.ErrRefused, Err: fmt.Errorf("%w: 40P01", drivers.ErrConflict)}
	for _, tt := range []struct {
		err       error
		want      Reason
		retryable bool
	}{
		{e(Aborted, OpWork, fmt.Errorf("debit: %w", conflictErr())), ReasonConflict, true},
		{e(Aborted, OpWork, errors.New("no funds")), ReasonUserError, false},
		// A connection refused before anything was sent: retryable, but
		// not contention.
		{e(Aborted, OpWork, &drivers.Error{Op: "begin", Kind: drivers.ErrRetryable}), ReasonUserError, true},
		{e(Aborted, OpPrepare, refusedByDeadlock), ReasonConflict, true},
		{e(Aborted, OpCommitOnePhase, refusedByDeadlock), ReasonConflict, true},
		{e(Unknown, OpCommitOnePhase, &drivers.Error{Kind: drivers.ErrInDoubt}), ReasonCommitInDoubt, false},
		{e(Aborted, OpWork, fmt.Errorf("%w (%w)", context.DeadlineExceeded, conflictErr())), ReasonTimeout, true},
	} {
		if got := ReasonOf(tt.err); got != tt.want {
			t.Errorf("ReasonOf(%v) = %s, want %s", tt.err, got, tt.want)
		}
		if got := Retryable(tt.err); got != tt.retryable {
			t.Errorf("Retryable(%v) = %v, want %v", tt.err, got, tt.retryable)
		}
	}
}
