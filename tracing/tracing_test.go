package tracing_test

import (
	"context"
	"errors"
	"fmt"
	"sort"
	"strings"
	"testing"
	"time"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"
	"go.opentelemetry.io/otel/trace"
	"go.opentelemetry.io/otel/trace/noop"

	"github.com/xabridge/xabridge/decisionlog"
	"github.com/xabridge/xabridge/drivers"
	"github.com/xabridge/xabridge/internal/fakeres"
	"github.com/xabridge/xabridge/tracing"
	"github.com/xabridge/xabridge/xa"
)

type env struct {
	rec   *tracetest.SpanRecorder
	tp    *sdktrace.TracerProvider
	a, b  *fakeres.Resource
	log   *failingLog
	coord *xa.Coordinator
}

// failingLog is a decision log whose Commit fails with err when it is set.
type failingLog struct {
	decisionlog.Log
	err error
}

func (l *failingLog) Commit(ctx context.Context, d decisionlog.Decision) error {
	if l.err != nil {
		return l.err
	}
	return l.Log.Commit(ctx, d)
}

func newEnv(t *testing.T, mod func(*xa.Config)) *env {
	t.Helper()
	rec := tracetest.NewSpanRecorder()
	tp := sdktrace.NewTracerProvider(sdktrace.WithSpanProcessor(rec))
	t.Cleanup(func() { _ = tp.Shutdown(context.Background()) })
	fl, err := decisionlog.OpenFileLog(t.TempDir(), decisionlog.FileLogOptions{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { fl.Close() })
	e := &env{rec: rec, tp: tp, a: fakeres.New("a"), b: fakeres.New("b"), log: &failingLog{Log: fl}}
	cfg := xa.Config{NodeID: "tr", Log: e.log, Resources: []drivers.Resource{e.a, e.b}, Hook: tracing.New(tp).Hook}
	if mod != nil {
		mod(&cfg)
	}
	e.coord, err = xa.New(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { e.coord.Close() })
	return e
}

func (e *env) runBoth(ctx context.Context) error {
	return e.coord.Run(ctx, func(ctx context.Context, tx *xa.Tx) error {
		if _, err := tx.Enlist(ctx, e.a); err != nil {
			return err
		}
		_, err := tx.Enlist(ctx, e.b)
		return err
	})
}

// paths maps each span to its path from the root ("parent > child"), each
// name with its resource and branch attributes, so tests compare shapes.
func paths(spans []sdktrace.ReadOnlySpan) map[string]sdktrace.ReadOnlySpan {
	byID := map[trace.SpanID]sdktrace.ReadOnlySpan{}
	for _, s := range spans {
		byID[s.SpanContext().SpanID()] = s
	}
	out := map[string]sdktrace.ReadOnlySpan{}
	for _, s := range spans {
		path := name(s)
		for p := s.Parent(); p.IsValid(); {
			ps, ok := byID[p.SpanID()]
			if !ok {
				break
			}
			path = name(ps) + " > " + path
			p = ps.Parent()
		}
		out[path] = s
	}
	return out
}

// tree lists the paths, sorted.
func tree(spans []sdktrace.ReadOnlySpan) []string {
	var lines []string
	for p := range paths(spans) {
		lines = append(lines, p)
	}
	sort.Strings(lines)
	return lines
}

func name(s sdktrace.ReadOnlySpan) string {
	n := s.Name()
	var res string
	br := -1
	for _, kv := range s.Attributes() {
		switch kv.Key {
		case tracing.AttrResource:
			res = kv.Value.AsString()
		case tracing.AttrBranch:
			br = int(kv.Value.AsInt64())
		}
	}
	if res != "" {
		n += fmt.Sprintf("[%s/%d]", res, br)
	}
	return n
}

func attr(s sdktrace.ReadOnlySpan, k attribute.Key) attribute.Value {
	for _, kv := range s.Attributes() {
		if kv.Key == k {
			return kv.Value
		}
	}
	return attribute.Value{}
}

func find(spans []sdktrace.ReadOnlySpan, n string) []sdktrace.ReadOnlySpan {
	var out []sdktrace.ReadOnlySpan
	for _, s := range spans {
		if s.Name() == n {
			out = append(out, s)
		}
	}
	return out
}

// TestSpans checks the span tree, the attributes and the status of a
// transaction for each way it can end.
func TestSpans(t *testing.T) {
	const (
		T  = tracing.SpanTransaction
		W  = T + " > " + tracing.SpanWork
		P  = T + " > " + tracing.SpanPrepare
		D  = T + " > " + tracing.SpanDecision
		C  = T + " > " + tracing.SpanCommit
		PB = P + " > " + tracing.SpanPrepareBranch
		CB = C + " > " + tracing.SpanCommitBranch
	)
	tests := []struct {
		name    string
		cfg     func(*xa.Config)
		setup   func(e *env)
		run     func(ctx context.Context, e *env) error
		tree    []string
		outcome string
		reason  string
		status  codes.Code
		failed  string // span (as in tree) whose status must be Error
	}{
		{
			name:    "commit",
			tree:    []string{T, C, CB + "[a/0]", CB + "[b/1]", D, P, PB + "[a/0]", PB + "[b/1]", W},
			outcome: "committed", reason: "none", status: codes.Unset,
		},
		{
			name: "one phase",
			run: func(ctx context.Context, e *env) error {
				return e.coord.Run(ctx, func(ctx context.Context, tx *xa.Tx) error { _, err := tx.Enlist(ctx, e.a); return err })
			},
			tree:    []string{T, C, CB + "[a/0]", W},
			outcome: "committed", reason: "none", status: codes.Unset,
		},
		{
			name:    "prepare refused",
			setup:   func(e *env) { e.b.FailNext("prepare", drivers.ErrRefused) },
			tree:    []string{T, P, PB + "[a/0]", PB + "[b/1]", W},
			outcome: "aborted", reason: "prepare-refused", status: codes.Error, failed: PB + "[b/1]",
		},
		{
			name:    "decision log failed",
			setup:   func(e *env) { e.log.err = fmt.Errorf("%w: disk gone", decisionlog.ErrLogFailed) },
			tree:    []string{T, D, P, PB + "[a/0]", PB + "[b/1]", W},
			outcome: "in-doubt", reason: "log-failed", status: codes.Error,
		},
		{
			name:    "fenced",
			setup:   func(e *env) { e.log.err = fmt.Errorf("late: %w", decisionlog.ErrFenced) },
			tree:    []string{T, D, P, PB + "[a/0]", PB + "[b/1]", W},
			outcome: "aborted", reason: "fenced", status: codes.Error, failed: D,
		},
		{
			name: "callback error",
			run: func(ctx context.Context, e *env) error {
				return e.coord.Run(ctx, func(ctx context.Context, tx *xa.Tx) error { return errors.New("no funds") })
			},
			tree:    []string{T, W},
			outcome: "aborted", reason: "user-error", status: codes.Error,
		},
		{
			name:    "phase 2 handed off",
			cfg:     func(c *xa.Config) { c.Phase2Timeout = 30 * time.Millisecond },
			setup:   func(e *env) { e.b.Block("commit") },
			tree:    []string{T, C, CB + "[a/0]", CB + "[b/1]", D, P, PB + "[a/0]", PB + "[b/1]", W},
			outcome: "commit-pending", reason: "phase2-timeout", status: codes.Unset,
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			e := newEnv(t, tc.cfg)
			if tc.setup != nil {
				tc.setup(e)
			}
			run := tc.run
			if run == nil {
				run = func(ctx context.Context, e *env) error { return e.runBoth(ctx) }
			}
			// The caller's span is the transaction span's parent.
			ctx, parent := e.tp.Tracer("test").Start(context.Background(), "request")
			_ = run(ctx, e)
			parent.End()
			spans := e.rec.Ended()
			var ours []sdktrace.ReadOnlySpan
			for _, s := range spans {
				if s.Name() != "request" {
					ours = append(ours, s)
				}
			}
			got := tree(ours)
			if strings.Join(got, "\n") != strings.Join(tc.tree, "\n") {
				t.Fatalf("span tree:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(tc.tree, "\n"))
			}
			txs := find(spans, tracing.SpanTransaction)
			tx := txs[0]
			if tx.Parent().SpanID() != parent.SpanContext().SpanID() {
				t.Error("the transaction span is not a child of the caller's span")
			}
			if got := attr(tx, tracing.AttrOutcome).AsString(); got != tc.outcome {
				t.Errorf("outcome attribute %q, want %q", got, tc.outcome)
			}
			if got := attr(tx, tracing.AttrReason).AsString(); got != tc.reason {
				t.Errorf("reason attribute %q, want %q", got, tc.reason)
			}
			if g := attr(tx, tracing.AttrGTRID).AsString(); !strings.HasPrefix(g, "tr.") {
				t.Errorf("gtrid attribute %q", g)
			}
			if got := tx.Status().Code; got != tc.status {
				t.Errorf("transaction status %v, want %v", got, tc.status)
			}
			if tc.failed != "" {
				if sp, ok := paths(ours)[tc.failed]; !ok || sp.Status().Code != codes.Error {
					t.Errorf("span %s: status %v, want Error", tc.failed, sp.Status())
				}
			}
			for _, s := range spans {
				if s.EndTime().Before(s.StartTime()) {
					t.Errorf("span %s ends before it starts", s.Name())
				}
			}
		})
	}
}

// With no SDK installed the hook keeps nothing: no transaction is
// remembered, so later steps cost one atomic load.
func TestNoopProviderKeepsNothing(t *testing.T) {
	tr := tracing.New(noop.NewTracerProvider())
	g := drivers.MustGlobalID("n", time.Now(), 1, time.Now().Add(time.Minute))
	tr.Hook(xa.StepBegin, xa.StepInfo{GTRID: g, Branch: -1, Context: context.Background()})
	if n := testing.AllocsPerRun(100, func() {
		tr.Hook(xa.StepPreparing, xa.StepInfo{GTRID: g, Resource: "a", Branch: 0})
		tr.Hook(xa.StepFinished, xa.StepInfo{GTRID: g, Branch: -1})
	}); n != 0 {
		t.Fatalf("steps of an untraced transaction allocate %v times", n)
	}
}

// Under concurrency, with phase 2 finishing in the background after the
// caller got its answer, every span started is ended exactly once, and one
// transaction span is recorded per transaction.
func TestEverySpanEnds(t *testing.T) {
	e := newEnv(t, func(c *xa.Config) { c.AsyncPhase2 = true })
	const n = 50
	errs := make(chan error, n)
	for range n {
		go func() { errs <- e.runBoth(context.Background()) }()
	}
	for range n {
		if err := <-errs; err != nil {
			t.Fatal(err)
		}
	}
	if err := e.coord.Close(); err != nil { // waits for background phase 2
		t.Fatal(err)
	}
	started, ended := len(e.rec.Started()), len(e.rec.Ended())
	if started != ended {
		t.Fatalf("%d spans started, %d ended", started, ended)
	}
	if txs := len(find(e.rec.Ended(), tracing.SpanTransaction)); txs != n {
		t.Fatalf("%d transaction spans, want %d", txs, n)
	}
}
