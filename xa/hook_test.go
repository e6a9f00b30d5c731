package xa

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/xabridge/xabridge/decisionlog"
	"github.com/xabridge/xabridge/drivers"
)

// stepLog records hook calls.
type stepLog struct {
	mu    sync.Mutex
	steps []Step
	infos []StepInfo
}

func (l *stepLog) hook(s Step, info StepInfo) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.steps = append(l.steps, s)
	l.infos = append(l.infos, info)
}

func (l *stepLog) get(s Step) []StepInfo {
	l.mu.Lock()
	defer l.mu.Unlock()
	var out []StepInfo
	for i, st := range l.steps {
		if st == s {
			out = append(out, l.infos[i])
		}
	}
	return out
}

// sequence is the steps without per-branch duplicates' order (branches
// run in parallel): each step with how many times it came, in first-seen
// order.
func (l *stepLog) sequence() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	var order []Step
	n := map[Step]int{}
	for _, s := range l.steps {
		if n[s] == 0 {
			order = append(order, s)
		}
		n[s]++
	}
	var parts []string
	for _, s := range order {
		if n[s] > 1 {
			parts = append(parts, fmt.Sprintf("%s*%d", s, n[s]))
		} else {
			parts = append(parts, string(s))
		}
	}
	return strings.Join(parts, " ")
}

// TestStepsAndFinished checks the steps a transaction reports, in order,
// for each way it ends, and that StepFinished carries what the caller got.
func TestStepsAndFinished(t *testing.T) {
	userErr := errors.New("no")
	tests := []struct {
		name    string
		setup   func(e *testEnv)
		fn      func(ctx context.Context, tx *Tx, e *testEnv) error
		want    string
		outcome Outcome
		reason  Reason
	}{
		{
			name:    "two-phase commit",
			want:    "begin enlisted*2 work-done preparing*2 prepared*2 all-prepared deciding decided committing*2 committed*2 all-committed ended finished",
			outcome: Committed, reason: ReasonNone,
		},
		{
			name: "one-phase commit",
			fn: func(ctx context.Context, tx *Tx, e *testEnv) error {
				_, err := tx.Enlist(ctx, e.a)
				return err
			},
			want:    "begin enlisted work-done committing one-phase-commit finished",
			outcome: Committed, reason: ReasonNone,
		},
		{
			name:    "callback error",
			fn:      func(ctx context.Context, tx *Tx, e *testEnv) error { _, _, _ = both(ctx, tx, e.a, e.b); return userErr },
			want:    "begin enlisted*2 rolled-back*2 finished",
			outcome: Aborted, reason: ReasonUserError,
		},
		{
			name:    "prepare refused",
			setup:   func(e *testEnv) { e.b.FailNext("prepare", drivers.ErrRefused) },
			want:    "begin enlisted*2 work-done preparing*2 prepared prepare-failed rolled-back*2 finished",
			outcome: Aborted, reason: ReasonPrepareRefused,
		},
		{
			name:    "decision log failed",
			setup:   func(e *testEnv) { e.log.FailWith(errors.New("disk gone")) },
			want:    "begin enlisted*2 work-done preparing*2 prepared*2 all-prepared deciding finished",
			outcome: Unknown, reason: ReasonLogFailed,
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			var l stepLog
			e := newTestEnv(t, func(c *Config) { c.Hook = l.hook })
			if tc.setup != nil {
				tc.setup(e)
			}
			fn := tc.fn
			if fn == nil {
				fn = func(ctx context.Context, tx *Tx, e *testEnv) error { _, _, err := both(ctx, tx, e.a, e.b); return err }
			}
			err := e.c.Run(context.Background(), func(ctx context.Context, tx *Tx) error { return fn(ctx, tx, e) })
			// The parallel branches report in either order; compare counts.
			got := l.sequence()
			if norm(got) != norm(tc.want) {
				t.Fatalf("steps:\n  %s\nwant\n  %s", got, tc.want)
			}
			fin := l.get(StepFinished)
			if len(fin) != 1 {
				t.Fatalf("%d finished steps, want 1", len(fin))
			}
			f := fin[0]
			if f.Outcome != tc.outcome || f.Outcome != OutcomeOf(err) || ReasonOf(f.Err) != tc.reason {
				t.Errorf("finished: outcome %v reason %v (err %v); Run returned %v; want %v %v", f.Outcome, ReasonOf(f.Err), f.Err, err, tc.outcome, tc.reason)
			}
			if f.Elapsed <= 0 || f.Branch != -1 {
				t.Errorf("finished: elapsed %v, branch %d", f.Elapsed, f.Branch)
			}
			// Phases are timed, and fit in the whole.
			var phases time.Duration
			for _, s := range []Step{StepWorkDone, StepAllPrepared, StepDecided, StepAllCommitted, StepOnePhaseCommit} {
				for _, info := range l.get(s) {
					if info.Elapsed <= 0 {
						t.Errorf("%s: elapsed %v", s, info.Elapsed)
					}
					phases += info.Elapsed
				}
			}
			if phases > f.Elapsed+f.Elapsed { // work-done counts from begin, so phases overlap it once
				t.Errorf("phases add up to %v, more than twice the transaction's %v", phases, f.Elapsed)
			}
			if b := l.get(StepBegin); len(b) != 1 || b[0].Context == nil {
				t.Errorf("begin step without the caller's context: %+v", b)
			}
		})
	}
}

// norm sorts a sequence's per-branch steps that may come in either order.
func norm(s string) string {
	parts := strings.Fields(s)
	// prepared and prepare-failed race with each other.
	for i := 0; i+1 < len(parts); i++ {
		if strings.HasPrefix(parts[i], "prepare-failed") && strings.HasPrefix(parts[i+1], "prepared") {
			parts[i], parts[i+1] = parts[i+1], parts[i]
		}
	}
	return strings.Join(parts, " ")
}

func TestRollbackReportsFinished(t *testing.T) {
	var l stepLog
	e := newTestEnv(t, func(c *Config) { c.Hook = l.hook })
	tx, err := e.c.Begin(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if _, _, err := both(context.Background(), tx, e.a, e.b); err != nil {
		t.Fatal(err)
	}
	if err := tx.Rollback(context.Background()); err != nil {
		t.Fatal(err)
	}
	_ = tx.Rollback(context.Background()) // a second call reports nothing
	fin := l.get(StepFinished)
	if len(fin) != 1 || fin[0].Outcome != Aborted || ReasonOf(fin[0].Err) != ReasonRollback || fin[0].Branches != 2 {
		t.Fatalf("finished steps %+v, want one aborted by rollback with 2 branches", fin)
	}
}

func TestHooks(t *testing.T) {
	if Hooks() != nil || Hooks(nil, nil) != nil {
		t.Fatal("Hooks of no hook is not nil (an unset hook must stay free)")
	}
	var calls []string
	h := func(name string) func(Step, StepInfo) {
		return func(s Step, _ StepInfo) { calls = append(calls, name+":"+string(s)) }
	}
	Hooks(nil, h("a"))(StepBegin, StepInfo{})
	Hooks(h("a"), nil, h("b"))(StepEnded, StepInfo{})
	if want := []string{"a:begin", "a:ended", "b:ended"}; !slices.Equal(calls, want) {
		t.Fatalf("calls %v, want %v", calls, want)
	}
}

func TestReasonOf(t *testing.T) {
	g := "n.1.2.3"
	e := func(o Outcome, op Op, err error) error { return &Error{GTRID: g, Outcome: o, Op: op, Err: err} }
	tests := []struct {
		err  error
		want Reason
	}{
		{nil, ReasonNone},
		{errors.New("not ours"), ReasonOther},
		{e(Aborted, OpWork, errors.New("no funds")), ReasonUserError},
		{fmt.Errorf("wrapped: %w", e(Aborted, OpWork, errors.New("no funds"))), ReasonUserError},
		{e(Aborted, OpWork, context.DeadlineExceeded), ReasonTimeout},
		{e(Aborted, OpWork, fmt.Errorf("query: %w", context.Canceled)), ReasonCanceled},
		{e(Aborted, OpRollback, nil), ReasonRollback},
		{e(Aborted, OpPanic, errors.New("boom")), ReasonPanic},
		{e(Aborted, OpPrepare, &drivers.Error{Kind: drivers.ErrRefused, Err: errors.New("23505")}), ReasonPrepareRefused},
		{e(Aborted, OpPrepare, &drivers.Error{Kind: drivers.ErrInDoubt, Err: errors.New("EOF")}), ReasonPrepareInDoubt},
		{e(Aborted, OpDecide, fmt.Errorf("late: %w", decisionlog.ErrFenced)), ReasonFenced},
		{e(Aborted, OpDecide, &drivers.Error{Kind: drivers.ErrRefused}), ReasonDecisionRefused},
		{e(Unknown, OpDecide, fmt.Errorf("%w: fsync", decisionlog.ErrLogFailed)), ReasonLogFailed},
		{e(Unknown, OpDecide, &drivers.Error{Kind: drivers.ErrInDoubt}), ReasonDecisionInDoubt},
		{e(Aborted, OpCommitOnePhase, &drivers.Error{Kind: drivers.ErrRefused}), ReasonCommitRefused},
		{e(Unknown, OpCommitOnePhase, &drivers.Error{Kind: drivers.ErrInDoubt}), ReasonCommitInDoubt},
		{e(CommitPending, OpCommit, errors.New("phase 2 did not finish within the phase 2 timeout")), ReasonPhase2Timeout},
		{e(CommitPending, OpCommit, context.Canceled), ReasonCanceled},
		{e(Aborted, OpBegin, errors.New("coordinator is closed")), ReasonOther},
	}
	for _, tt := range tests {
		if got := ReasonOf(tt.err); got != tt.want {
			t.Errorf("ReasonOf(%v) = %s, want %s", tt.err, got, tt.want)
		}
		if !slices.Contains(Reasons, ReasonOf(tt.err)) {
			t.Errorf("ReasonOf(%v) = %s is not in Reasons", tt.err, ReasonOf(tt.err))
		}
	}
}

// Without a hook the coordinator reads no clock for it and reports
// nothing: the zero stamp makes every duration 0.
func TestNoHookNoStamp(t *testing.T) {
	e := newTestEnv(t, nil)
	tx, err := e.c.Begin(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if !tx.began.IsZero() {
		t.Error("Begin read the clock with no hook set")
	}
	if err := tx.Commit(context.Background()); err != nil {
		t.Fatal(err)
	}
}
