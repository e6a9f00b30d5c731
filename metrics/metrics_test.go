package metrics_test

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/xabridge/xabridge/decisionlog"
	"github.com/xabridge/xabridge/drivers"
	"github.com/xabridge/xabridge/internal/fakeres"
	"github.com/xabridge/xabridge/metrics"
	"github.com/xabridge/xabridge/recovery"
	"github.com/xabridge/xabridge/xa"
)

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

type coordEnv struct {
	reg   *prometheus.Registry
	m     *metrics.Metrics
	a, b  *fakeres.Resource // for fault injection
	ea    drivers.Resource  // what to enlist for a (the keeper, if there is one)
	log   *failingLog
	coord *xa.Coordinator
}

func newCoordEnv(t *testing.T, keeper bool, mod func(*xa.Config)) *coordEnv {
	t.Helper()
	reg := prometheus.NewRegistry()
	m, err := metrics.New(reg)
	if err != nil {
		t.Fatal(err)
	}
	fl, err := decisionlog.OpenFileLog(t.TempDir(), decisionlog.FileLogOptions{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { fl.Close() })
	e := &coordEnv{reg: reg, m: m, a: fakeres.New("a"), b: fakeres.New("b"), log: &failingLog{Log: fl}}
	e.ea = e.a
	cfg := xa.Config{NodeID: "mt", Log: e.log, Hook: m.Hook}
	if keeper {
		k := fakeres.NewKeeper("a")
		e.ea, e.a = k, k.Resource
		cfg.DecisionResource = "a"
	}
	cfg.Resources = []drivers.Resource{e.ea, e.b}
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

// TestCoordinatorOutcomes runs one transaction per case through a
// coordinator on in-memory resources and checks every coordinator metric
// afterwards: the outcome and reason counted, the phases timed, the
// branches counted.
func TestCoordinatorOutcomes(t *testing.T) {
	errUser := errors.New("insufficient funds")
	type phases struct{ work, prepare, decision, commit float64 }
	tests := []struct {
		name     string
		keeper   bool
		cfg      func(*xa.Config)
		setup    func(e *coordEnv)
		run      func(ctx context.Context, e *coordEnv) error
		outcome  string
		reason   string
		phases   *phases // nil: phase 2 goes on in the background, do not check
		branches float64
		failures map[string]float64 // "resource/op"
	}{
		{
			name:    "two branches commit",
			outcome: "committed", reason: "none",
			phases: &phases{1, 1, 1, 1}, branches: 2,
		},
		{
			name: "one branch commits in one phase",
			run: func(ctx context.Context, e *coordEnv) error {
				return e.coord.Run(ctx, func(ctx context.Context, tx *xa.Tx) error { _, err := tx.Enlist(ctx, e.ea); return err })
			},
			outcome: "committed", reason: "none",
			phases: &phases{1, 0, 0, 1}, branches: 1,
		},
		{
			name: "decision kept in a participant", keeper: true,
			outcome: "committed", reason: "none",
			phases: &phases{1, 1, 1, 1}, branches: 2,
		},
		{
			name: "callback error",
			run: func(ctx context.Context, e *coordEnv) error {
				return e.coord.Run(ctx, func(ctx context.Context, tx *xa.Tx) error {
					if err := both(ctx, tx, e.ea, e.b); err != nil {
						return err
					}
					return errUser
				})
			},
			outcome: "aborted", reason: "user-error",
			phases: &phases{}, branches: 2,
		},
		{
			name:    "prepare refused",
			setup:   func(e *coordEnv) { e.b.FailNext("prepare", drivers.ErrRefused) },
			outcome: "aborted", reason: "prepare-refused",
			phases: &phases{work: 1}, branches: 2, failures: map[string]float64{"b/prepare": 1},
		},
		{
			name:    "prepare in doubt",
			setup:   func(e *coordEnv) { e.a.FailNext("prepare", drivers.ErrInDoubt) },
			outcome: "aborted", reason: "prepare-in-doubt",
			phases: &phases{work: 1}, branches: 2, failures: map[string]float64{"a/prepare": 1},
		},
		{
			name:    "decision fenced",
			setup:   func(e *coordEnv) { e.log.err = fmt.Errorf("too late: %w", decisionlog.ErrFenced) },
			outcome: "aborted", reason: "fenced",
			phases: &phases{work: 1, prepare: 1}, branches: 2,
		},
		{
			name:    "decision log failed",
			setup:   func(e *coordEnv) { e.log.err = fmt.Errorf("%w: disk gone", decisionlog.ErrLogFailed) },
			outcome: "in-doubt", reason: "log-failed",
			phases: &phases{work: 1, prepare: 1}, branches: 2,
		},
		{
			name:    "one-phase commit refused",
			setup:   func(e *coordEnv) { e.a.FailNext("commit-one-phase", drivers.ErrRefused) },
			run:     func(ctx context.Context, e *coordEnv) error { return e.coord.Run(ctx, enlistA(e)) },
			outcome: "aborted", reason: "commit-refused",
			phases: &phases{work: 1}, branches: 1, failures: map[string]float64{"a/commit": 1},
		},
		{
			name: "phase 2 slower than the caller waits",
			cfg:  func(c *xa.Config) { c.Phase2Timeout = 30 * time.Millisecond },
			// b's commit hangs until the coordinator is closed.
			setup:   func(e *coordEnv) { e.b.Block("commit") },
			outcome: "commit-pending", reason: "phase2-timeout",
			branches: 2, failures: map[string]float64{"b/commit": 1},
		},
		{
			name: "rollback",
			run: func(ctx context.Context, e *coordEnv) error {
				tx, err := e.coord.Begin(ctx)
				if err != nil {
					return err
				}
				if err := both(ctx, tx, e.ea, e.b); err != nil {
					return err
				}
				return tx.Rollback(ctx)
			},
			outcome: "aborted", reason: "rollback",
			phases: &phases{}, branches: 2,
		},
		{
			name: "callback panics",
			run: func(ctx context.Context, e *coordEnv) (err error) {
				defer func() {
					if p := recover(); p == nil {
						err = errors.New("Run did not re-panic")
					}
				}()
				return e.coord.Run(ctx, func(ctx context.Context, tx *xa.Tx) error {
					if _, err := tx.Enlist(ctx, e.ea); err != nil {
						return err
					}
					panic("boom")
				})
			},
			outcome: "aborted", reason: "panic",
			phases: &phases{}, branches: 1,
		},
		{
			name: "transaction timeout",
			cfg:  func(c *xa.Config) { c.Timeout = 30 * time.Millisecond },
			run: func(ctx context.Context, e *coordEnv) error {
				return e.coord.Run(ctx, func(ctx context.Context, tx *xa.Tx) error {
					if _, err := tx.Enlist(ctx, e.ea); err != nil {
						return err
					}
					<-ctx.Done() // work that outlives the transaction's deadline
					return ctx.Err()
				})
			},
			outcome: "aborted", reason: "timeout",
			phases: &phases{}, branches: 1,
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			e := newCoordEnv(t, tc.keeper, tc.cfg)
			if tc.setup != nil {
				tc.setup(e)
			}
			run := tc.run
			if run == nil {
				run = func(ctx context.Context, e *coordEnv) error {
					return e.coord.Run(ctx, func(ctx context.Context, tx *xa.Tx) error { return both(ctx, tx, e.ea, e.b) })
				}
			}
			err := run(context.Background(), e)
			if got := xa.ReasonOf(err); err != nil && string(got) != tc.reason {
				t.Fatalf("ReasonOf(%v) = %s, want %s", err, got, tc.reason)
			}
			g := e.reg
			want := map[string]float64{
				"xabridge_transactions_begun_total":                         1,
				"xabridge_transactions_finished_total":                      1,
				"xabridge_transactions_in_flight":                           0,
				"xabridge_transaction_branches_count":                       1,
				"xabridge_transaction_branches_sum":                         tc.branches,
				"xabridge_transaction_duration_seconds_count":               1,
				"xabridge_transactions_finished_total/" + tc.outcome:        1,
				"xabridge_transaction_duration_seconds_count/" + tc.outcome: 1,
			}
			for k, w := range want {
				name, outcome, _ := strings.Cut(k, "/")
				labels := map[string]string{}
				if outcome != "" {
					labels["outcome"] = outcome
				}
				if got := value(t, g, name, labels); got != w {
					t.Errorf("%s%v = %v, want %v\n%s", name, labels, got, w, series(t, g))
				}
			}
			if got := value(t, g, "xabridge_transactions_finished_total", map[string]string{"outcome": tc.outcome, "reason": tc.reason}); got != 1 {
				t.Errorf("finished{outcome=%s,reason=%s} = %v, want 1\n%s", tc.outcome, tc.reason, got, series(t, g))
			}
			if tc.phases != nil {
				for phase, w := range map[string]float64{"work": tc.phases.work, "prepare": tc.phases.prepare, "decision": tc.phases.decision, "commit": tc.phases.commit} {
					if got := value(t, g, "xabridge_phase_duration_seconds_count", map[string]string{"phase": phase}); got != w {
						t.Errorf("phase %s observed %v times, want %v", phase, got, w)
					}
				}
				if d := value(t, g, "xabridge_phase_duration_seconds_sum", nil); d <= 0 && tc.phases.work > 0 {
					t.Errorf("phase durations sum to %v, want > 0", d)
				}
			}
			for k, w := range tc.failures {
				res, op, _ := strings.Cut(k, "/")
				if got := value(t, g, "xabridge_branch_failures_total", map[string]string{"resource": res, "op": op}); got < w {
					t.Errorf("branch failures %s = %v, want >= %v", k, got, w)
				}
			}
			if len(tc.failures) == 0 {
				if got := value(t, g, "xabridge_branch_failures_total", nil); got != 0 {
					t.Errorf("branch failures = %v, want 0", got)
				}
			}
		})
	}
}

func enlistA(e *coordEnv) func(context.Context, *xa.Tx) error {
	return func(ctx context.Context, tx *xa.Tx) error { _, err := tx.Enlist(ctx, e.ea); return err }
}

// commitSteps are the hook calls of one committed two-branch transaction.
func commitSteps() []struct {
	s    xa.Step
	info xa.StepInfo
} {
	g := drivers.MustGlobalID("n", time.Now(), 1, time.Now().Add(time.Minute))
	all := xa.StepInfo{GTRID: g, Branch: -1, Elapsed: time.Millisecond}
	br := func(r string, n int) xa.StepInfo { return xa.StepInfo{GTRID: g, Resource: r, Branch: n} }
	fin := all
	fin.Branches = 2
	return []struct {
		s    xa.Step
		info xa.StepInfo
	}{
		{xa.StepBegin, all}, {xa.StepEnlisted, br("a", 0)}, {xa.StepEnlisted, br("b", 1)}, {xa.StepWorkDone, all},
		{xa.StepPreparing, br("a", 0)}, {xa.StepPreparing, br("b", 1)}, {xa.StepPrepared, br("a", 0)}, {xa.StepPrepared, br("b", 1)},
		{xa.StepAllPrepared, all}, {xa.StepDeciding, all}, {xa.StepDecided, all},
		{xa.StepCommitting, br("a", 0)}, {xa.StepCommitting, br("b", 1)}, {xa.StepCommitted, br("a", 0)}, {xa.StepCommitted, br("b", 1)},
		{xa.StepAllCommitted, all}, {xa.StepEnded, all}, {xa.StepFinished, fin},
	}
}

// The hook is on every transaction's path: on the committing path it must
// not allocate (nor, by construction, lock: every series it touches there
// is resolved when the Metrics are made).
func TestHookAllocatesNothingWhenCommitting(t *testing.T) {
	m, err := metrics.New(prometheus.NewRegistry())
	if err != nil {
		t.Fatal(err)
	}
	steps := commitSteps()
	if n := testing.AllocsPerRun(200, func() {
		for _, st := range steps {
			m.Hook(st.s, st.info)
		}
	}); n != 0 {
		t.Fatalf("the hook allocates %v times per committed transaction, want 0", n)
	}
}

func TestNewNeedsARegistererAndRefusesDuplicates(t *testing.T) {
	if _, err := metrics.New(nil); err == nil || !strings.Contains(err.Error(), "no registerer") {
		t.Fatalf("New(nil) = %v, want an error naming the missing registerer", err)
	}
	reg := prometheus.NewRegistry()
	if _, err := metrics.New(reg); err != nil {
		t.Fatal(err)
	}
	if _, err := metrics.New(reg); err == nil {
		t.Fatal("a second New on the same registry registered duplicate metrics")
	}
	// A wrapped registerer adds constant labels, e.g. the node id.
	if _, err := metrics.New(prometheus.WrapRegistererWith(prometheus.Labels{"node": "n2"}, prometheus.NewRegistry())); err != nil {
		t.Fatalf("New with a node label: %v", err)
	}
}

// recEnv is a recoverer over in-memory resources feeding the metrics.
type recEnv struct {
	reg  *prometheus.Registry
	log  *decisionlog.FileLog
	a, b *fakeres.Resource
	rec  *recovery.Recoverer
}

func newRecEnv(t *testing.T) *recEnv {
	t.Helper()
	reg := prometheus.NewRegistry()
	m, err := metrics.New(reg)
	if err != nil {
		t.Fatal(err)
	}
	l, err := decisionlog.OpenFileLog(t.TempDir(), decisionlog.FileLogOptions{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	e := &recEnv{reg: reg, log: l, a: fakeres.New("a"), b: fakeres.New("b")}
	e.rec, err = recovery.New(recovery.Config{
		NodeID: "n1", Log: l, Resources: []drivers.Resource{e.a, e.b}, Settle: -1, OnReport: m.ObserveReport,
	})
	if err != nil {
		t.Fatal(err)
	}
	return e
}

var seq uint32

// gid makes a global id of node that began age ago with left to its
// deadline (negative: past it).
func gid(node string, age, left time.Duration) drivers.GlobalID {
	seq++
	now := time.Now()
	return drivers.MustGlobalID(node, now.Add(-age).Truncate(time.Millisecond).UTC(), seq, now.Add(left).Truncate(time.Millisecond).UTC())
}

// TestRecoveryReports drives recovery passes over in-memory resources and
// checks the recovery metrics after each: the in-doubt gauges climb when a
// dead coordinator's branches appear and fall when recovery resolves them;
// resolutions, scan errors, failed passes and heuristic outcomes are
// counted.
func TestRecoveryReports(t *testing.T) {
	ctx := context.Background()
	e := newRecEnv(t)
	orphan := gid("n1", time.Hour, -time.Minute)       // a dead coordinator's, past its fence
	committed := gid("n1", 2*time.Minute, time.Minute) // decided, phase 2 unfinished
	other := gid("n2", 3*time.Hour, -time.Hour)        // another node's: never ours to count
	live := gid("n1", time.Second, time.Hour)          // within its fence
	e.a.AddPrepared(drivers.XID{Global: orphan, Branch: 0})
	e.b.AddPrepared(drivers.XID{Global: orphan, Branch: 1})
	e.a.AddPrepared(drivers.XID{Global: committed, Branch: 0})
	e.a.AddPrepared(drivers.XID{Global: other, Branch: 0})
	e.b.AddPrepared(drivers.XID{Global: live, Branch: 0})
	e.b.AddForeign("someone-elses")
	if err := e.log.Commit(ctx, decisionlog.Decision{GTRID: committed, Participants: []decisionlog.Participant{{Resource: "a", Branch: 0}}}); err != nil {
		t.Fatal(err)
	}
	g := e.reg
	check := func(when string, want map[string]float64) {
		t.Helper()
		for k, w := range want {
			name, labels := parseKey(k)
			got := value(t, g, name, labels)
			if strings.HasSuffix(name, "_age_seconds") && w > 0 {
				if got < w || got > w+60 {
					t.Errorf("%s: %s = %v, want about %v", when, k, got, w)
				}
				continue
			}
			if got != w {
				t.Errorf("%s: %s = %v, want %v", when, k, got, w)
			}
		}
		if t.Failed() {
			t.Logf("%s:\n%s", when, series(t, g))
		}
	}

	// A scan sets the gauges but is no pass.
	e.rec.Scan(ctx)
	check("after a scan", map[string]float64{
		"xabridge_recovery_passes_total":                              0,
		"xabridge_prepared_oldest_age_seconds{resource=a}":            3600,
		"xabridge_prepared_oldest_age_seconds{resource=b}":            3600,
		"xabridge_prepared_branches{resource=a,class=orphan}":         1,
		"xabridge_prepared_branches{resource=a,class=commit-pending}": 1,
		"xabridge_prepared_branches{resource=a,class=unknown-owner}":  1,
		"xabridge_prepared_branches{resource=b,class=orphan}":         1,
		"xabridge_prepared_branches{resource=b,class=live}":           1,
		"xabridge_prepared_branches{resource=b,class=foreign}":        1,
		"xabridge_prepared_branches{resource=b,class=heuristic}":      0,
		"xabridge_recovery_branches_resolved_total":                   0,
	})

	// First pass: everything is seen for the first time and waits.
	e.rec.Pass(ctx, false)
	check("after the first pass", map[string]float64{
		"xabridge_recovery_passes_total":                      1,
		"xabridge_recovery_failed_passes_total":               0,
		"xabridge_recovery_pass_duration_seconds_count":       1,
		"xabridge_prepared_oldest_age_seconds{resource=a}":    3600,
		"xabridge_prepared_branches{resource=a,class=orphan}": 1,
		"xabridge_recovery_branches_resolved_total":           0,
	})
	if ts := value(t, g, "xabridge_recovery_last_pass_timestamp_seconds", nil); time.Since(time.Unix(int64(ts), 0)) > time.Minute {
		t.Errorf("last pass timestamp %v is not now", ts)
	}

	// Second pass: the orphan is rolled back everywhere, the decided
	// branch committed; what is left is the live one and the other node's.
	e.rec.Pass(ctx, false)
	check("after the second pass", map[string]float64{
		"xabridge_recovery_passes_total":                                        2,
		"xabridge_recovery_branches_resolved_total{resource=a,action=rollback}": 1,
		"xabridge_recovery_branches_resolved_total{resource=b,action=rollback}": 1,
		"xabridge_recovery_branches_resolved_total{resource=a,action=commit}":   1,
		"xabridge_prepared_oldest_age_seconds{resource=a}":                      0,
		"xabridge_prepared_oldest_age_seconds{resource=b}":                      1,
		"xabridge_prepared_branches{resource=a,class=orphan}":                   0,
		"xabridge_prepared_branches{resource=a,class=commit-pending}":           0,
		"xabridge_prepared_branches{resource=a,class=unknown-owner}":            1,
		"xabridge_heuristic_outcomes_total":                                     0,
	})

	// A resource that cannot be scanned: counted, and its gauges keep
	// their last values rather than dropping to a reassuring 0.
	e.b.FailNext("recover", drivers.ErrFailed)
	e.rec.Pass(ctx, false)
	check("after a failed scan", map[string]float64{
		"xabridge_recovery_passes_total":                       3,
		"xabridge_recovery_failed_passes_total":                1,
		"xabridge_recovery_scan_errors_total{resource=b}":      1,
		"xabridge_recovery_scan_errors_total{resource=a}":      0,
		"xabridge_prepared_branches{resource=b,class=live}":    1,
		"xabridge_prepared_branches{resource=b,class=foreign}": 1,
	})

	// Heuristic outcomes: the log says every branch committed, yet one is
	// prepared (recovery commits it), and an operator forces a commit the
	// log contradicts.
	done := gid("n1", time.Minute, time.Minute)
	if err := e.log.Commit(ctx, decisionlog.Decision{GTRID: done, Participants: []decisionlog.Participant{{Resource: "a", Branch: 0}}}); err != nil {
		t.Fatal(err)
	}
	if err := e.log.End(done); err != nil {
		t.Fatal(err)
	}
	e.a.AddPrepared(drivers.XID{Global: done, Branch: 0})
	forced := gid("n1", 10*time.Minute, time.Hour)
	e.b.AddPrepared(drivers.XID{Global: forced, Branch: 1})
	e.rec.Pass(ctx, false)
	check("after a heuristic branch is first seen", map[string]float64{
		"xabridge_prepared_branches{resource=a,class=heuristic}": 1,
		"xabridge_heuristic_outcomes_total":                      0,
	})
	e.rec.Pass(ctx, false)
	check("after recovery committed the heuristic branch", map[string]float64{
		"xabridge_heuristic_outcomes_total{resource=a,source=recovery}": 1,
		"xabridge_prepared_branches{resource=a,class=heuristic}":        0,
	})
	if _, err := e.rec.Resolve(ctx, forced, true, true, "operator test"); err != nil {
		t.Fatal(err)
	}
	check("after a forced resolve", map[string]float64{
		"xabridge_heuristic_outcomes_total{resource=b,source=operator}":       1,
		"xabridge_recovery_branches_resolved_total{resource=b,action=commit}": 1,
		"xabridge_recovery_passes_total":                                      5, // a resolve is no pass
	})
}

// parseKey splits `name{k=v,k=v}`.
func parseKey(k string) (string, map[string]string) {
	name, rest, ok := strings.Cut(k, "{")
	labels := map[string]string{}
	if !ok {
		return name, labels
	}
	for _, kv := range strings.Split(strings.TrimSuffix(rest, "}"), ",") {
		key, v, _ := strings.Cut(kv, "=")
		labels[key] = v
	}
	return name, labels
}

// Every metric follows Prometheus' naming conventions (promlint): units
// in names, _total on counters, no reserved suffixes.
func TestMetricNamesLint(t *testing.T) {
	reg := populated(t)
	problems, err := testutil.GatherAndLint(reg)
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range problems {
		if strings.HasPrefix(p.Metric, "xabridge_") {
			t.Errorf("%s: %s", p.Metric, p.Text)
		}
	}
}
