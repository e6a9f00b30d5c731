// Package metrics exposes what xabridge does as Prometheus metrics: the
// coordinator's transactions (from xa.Config.Hook), recovery's passes and
// the prepared branches it found (from recovery.Config.OnReport), and the
// decision log's counters (a Collector over decisionlog.FileLog.Stats). Nothing is
// registered globally: the caller passes the registry.
//
//	reg := prometheus.NewRegistry()
//	m, err := metrics.New(reg)
//	coord, err := xa.New(ctx, xa.Config{..., Hook: m.Hook})
//	reg.MustRegister(metrics.NewFileLogCollector(coord.Log().(*decisionlog.FileLog)))
//	rec, err := recovery.New(recovery.Config{..., Active: coord.Active, OnReport: m.ObserveReport})
//	go rec.Loop(ctx, 30*time.Second, nil)
//
// Labels are few and bounded: outcome, reason, phase, resource, class,
// action, source. The global id is never a label (it is in the logs and
// the traces), nor is a transaction's own label (xa.Tx.SetLabel: unbounded
// values; it is in the logs, the traces and the CLI).
//
// The coordinator's hook takes no lock and allocates nothing on the
// committing path: every series it touches there is resolved up front.
package metrics

import (
	"errors"
	"sync/atomic"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/xabridge/xabridge/recovery"
	"github.com/xabridge/xabridge/xa"
)

// Label values of the outcome label, indexed by xa.Outcome.
var outcomeLabels = [...]string{
	xa.Committed:     "committed",
	xa.Aborted:       "aborted",
	xa.CommitPending: "commit-pending",
	xa.Unknown:       "in-doubt",
}

const nOutcomes = len(outcomeLabels)

// Phases of a transaction, the values of the phase label.
const (
	phaseWork = iota
	phasePrepare
	phaseDecision
	phaseCommit
	nPhases
)

var phaseLabels = [nPhases]string{"work", "prepare", "decision", "commit"}

// classes are the values of the class label, every recovery.Class.
var classes = []recovery.Class{
	recovery.CommitPending, recovery.AbortPending, recovery.Orphan, recovery.Live,
	recovery.UnknownOwner, recovery.Heuristic, recovery.Foreign, recovery.WrongResource, recovery.LogUnread,
}

// possible lists, by outcome, the reasons that can come with it.
var possible = [nOutcomes][]xa.Reason{
	xa.Committed: {xa.ReasonNone},
	xa.Aborted: {xa.ReasonUserError, xa.ReasonConflict, xa.ReasonRollback, xa.ReasonPanic, xa.ReasonTimeout, xa.ReasonCanceled,
		xa.ReasonPrepareRefused, xa.ReasonPrepareInDoubt, xa.ReasonFenced, xa.ReasonDecisionRefused, xa.ReasonCommitRefused},
	xa.CommitPending: {xa.ReasonPhase2Timeout, xa.ReasonTimeout, xa.ReasonCanceled},
	xa.Unknown:       {xa.ReasonLogFailed, xa.ReasonDecisionInDoubt, xa.ReasonCommitInDoubt, xa.ReasonPhase2Timeout, xa.ReasonTimeout, xa.ReasonCanceled},
}

// reasonIndex maps an xa.Reason to its place in xa.Reasons.
var reasonIndex = func() map[xa.Reason]int {
	m := make(map[xa.Reason]int, len(xa.Reasons))
	for i, r := range xa.Reasons {
		m[r] = i
	}
	return m
}()

// DurationBuckets are the buckets of the duration histograms, in seconds:
// 0.5ms to about 16s, doubling.
var DurationBuckets = prometheus.ExponentialBuckets(0.0005, 2, 16)

// Metrics holds xabridge's coordinator and recovery metrics. Feed it with
// Hook (xa.Config.Hook) and ObserveReport (recovery.Config.OnReport). It is
// a prometheus.Collector, registered by New.
type Metrics struct {
	begun     prometheus.Counter
	inFlight  prometheus.Gauge
	finished  *prometheus.CounterVec
	txSeconds *prometheus.HistogramVec
	phase     *prometheus.HistogramVec
	branches  prometheus.Histogram
	failures  *prometheus.CounterVec

	// Series the hook uses, resolved once so that observing takes no lock.
	phaseObs [nPhases]prometheus.Observer
	txObs    [nOutcomes]prometheus.Observer
	// finishedCells caches finished's series by outcome and reason: the
	// possible ones made by New, any other on first use.
	finishedCells [nOutcomes][]atomic.Pointer[prometheus.Counter]

	passes        prometheus.Counter
	failedPasses  prometheus.Counter
	passSeconds   prometheus.Histogram
	lastPass      prometheus.Gauge
	scanErrors    *prometheus.CounterVec
	resolved      *prometheus.CounterVec
	actionFails   *prometheus.CounterVec
	heuristics    *prometheus.CounterVec
	oldestAge     *prometheus.GaugeVec
	preparedCount *prometheus.GaugeVec
}

// New creates the metrics and registers them on reg.
func New(reg prometheus.Registerer) (*Metrics, error) {
	if reg == nil {
		return nil, errors.New("metrics: no registerer (pass a *prometheus.Registry, or prometheus.DefaultRegisterer to use the global one)")
	}
	m := &Metrics{
		begun: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "xabridge_transactions_begun_total",
			Help: "Global transactions begun by the coordinator.",
		}),
		inFlight: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "xabridge_transactions_in_flight",
			Help: "Global transactions begun whose Commit or Rollback has not returned yet.",
		}),
		finished: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "xabridge_transactions_finished_total",
			Help: "Global transactions finished, by the outcome their caller got (committed, aborted, commit-pending, in-doubt) and why (reason: none, user-error, conflict, prepare-refused, fenced, log-failed, timeout, ...).",
		}, []string{"outcome", "reason"}),
		txSeconds: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "xabridge_transaction_duration_seconds",
			Help:    "Time from Begin to the return of Commit or Rollback, by outcome.",
			Buckets: DurationBuckets,
		}, []string{"outcome"}),
		phase: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "xabridge_phase_duration_seconds",
			Help:    "Time spent in each phase of a global transaction: work (Begin to Commit), prepare (phase 1), decision (making the commit decision durable), commit (phase 2, or the one-phase commit).",
			Buckets: DurationBuckets,
		}, []string{"phase"}),
		branches: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "xabridge_transaction_branches",
			Help:    "Branches (databases enlisted) per global transaction.",
			Buckets: []float64{0, 1, 2, 3, 4, 6, 8, 16, 32},
		}),
		failures: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "xabridge_branch_failures_total",
			Help: "Failed prepare and commit attempts on a branch, by resource and op (prepare: the transaction aborts; commit: phase 2 retries it).",
		}, []string{"resource", "op"}),

		passes: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "xabridge_recovery_passes_total",
			Help: "Recovery passes run (scan, classify, act).",
		}),
		failedPasses: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "xabridge_recovery_failed_passes_total",
			Help: "Recovery passes in which a resource could not be scanned or an action failed.",
		}),
		passSeconds: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "xabridge_recovery_pass_duration_seconds",
			Help:    "Time one recovery pass took.",
			Buckets: prometheus.ExponentialBuckets(0.001, 2, 16),
		}),
		lastPass: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "xabridge_recovery_last_pass_timestamp_seconds",
			Help: "When the last recovery pass ran (Unix time).",
		}),
		scanErrors: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "xabridge_recovery_scan_errors_total",
			Help: "Times recovery could not list the prepared branches of a resource.",
		}, []string{"resource"}),
		resolved: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "xabridge_recovery_branches_resolved_total",
			Help: "Prepared branches recovery (or an operator's resolve) committed or rolled back, by resource and action.",
		}, []string{"resource", "action"}),
		actionFails: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "xabridge_recovery_action_failures_total",
			Help: "Recovery actions on a branch that failed (retried at the next pass), by resource and action.",
		}, []string{"resource", "action"}),
		heuristics: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "xabridge_heuristic_outcomes_total",
			Help: "Branches finished against the decision log's word: by recovery applying the log to a branch that contradicts it (source recovery) or by an operator's forced resolve (source operator). Atomicity may be broken.",
		}, []string{"resource", "source"}),
		oldestAge: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "xabridge_prepared_oldest_age_seconds",
			Help: "Age (since its transaction began) of the oldest prepared branch of this node on each resource at the last recovery scan, after that pass's actions; 0 when there is none.",
		}, []string{"resource"}),
		preparedCount: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "xabridge_prepared_branches",
			Help: "Prepared branches on each resource at the last recovery scan, after that pass's actions, by class (commit-pending, abort-pending, orphan, live, unknown-owner, heuristic, foreign).",
		}, []string{"resource", "class"}),
	}
	for p, l := range phaseLabels {
		m.phaseObs[p] = m.phase.WithLabelValues(l)
	}
	for o, l := range outcomeLabels {
		m.txObs[o] = m.txSeconds.WithLabelValues(l)
		m.finishedCells[o] = make([]atomic.Pointer[prometheus.Counter], len(xa.Reasons))
	}
	// The series that can happen exist from the start, at 0: rates,
	// ratios and increase() (which cannot see a series' first sample) are
	// then right from the first event.
	for o, reasons := range possible {
		for _, r := range reasons {
			m.finishedCounter(o, reasonIndex[r])
		}
	}
	if err := reg.Register(m); err != nil {
		return nil, err
	}
	return m, nil
}

func (m *Metrics) collectors() []prometheus.Collector {
	return []prometheus.Collector{
		m.begun, m.inFlight, m.finished, m.txSeconds, m.phase, m.branches, m.failures,
		m.passes, m.failedPasses, m.passSeconds, m.lastPass, m.scanErrors, m.resolved, m.actionFails,
		m.heuristics, m.oldestAge, m.preparedCount,
	}
}

// Describe implements prometheus.Collector.
func (m *Metrics) Describe(ch chan<- *prometheus.Desc) {
	for _, c := range m.collectors() {
		c.Describe(ch)
	}
}

// Collect implements prometheus.Collector.
func (m *Metrics) Collect(ch chan<- prometheus.Metric) {
	for _, c := range m.collectors() {
		c.Collect(ch)
	}
}

// reasonOf returns the index in xa.Reasons of the reason for err.
func reasonOf(err error) int {
	if err == nil {
		return reasonIndex[xa.ReasonNone]
	}
	if ri, ok := reasonIndex[xa.ReasonOf(err)]; ok {
		return ri
	}
	return reasonIndex[xa.ReasonOther]
}

// finishedCounter returns the series of finished for an outcome and a
// reason's index in xa.Reasons.
func (m *Metrics) finishedCounter(outcome, ri int) prometheus.Counter {
	cell := &m.finishedCells[outcome][ri]
	if c := cell.Load(); c != nil {
		return *c
	}
	c := m.finished.WithLabelValues(outcomeLabels[outcome], string(xa.Reasons[ri]))
	cell.Store(&c)
	return c
}

// Hook records the coordinator's protocol steps; use it as xa.Config.Hook
// (or within xa.Hooks).
func (m *Metrics) Hook(s xa.Step, info xa.StepInfo) {
	switch s {
	case xa.StepBegin:
		m.begun.Inc()
		m.inFlight.Inc()
	case xa.StepWorkDone:
		m.observePhase(phaseWork, info)
	case xa.StepAllPrepared:
		m.observePhase(phasePrepare, info)
	case xa.StepDecided:
		m.observePhase(phaseDecision, info)
	case xa.StepAllCommitted, xa.StepOnePhaseCommit:
		m.observePhase(phaseCommit, info)
	case xa.StepPrepareFailed:
		m.failures.WithLabelValues(info.Resource, "prepare").Inc()
	case xa.StepCommitFailed:
		m.failures.WithLabelValues(info.Resource, "commit").Inc()
	case xa.StepFinished:
		m.inFlight.Dec()
		o := int(info.Outcome)
		if o < 0 || o >= nOutcomes {
			o = int(xa.Unknown)
		}
		m.finishedCounter(o, reasonOf(info.Err)).Inc()
		if info.Elapsed > 0 {
			m.txObs[o].Observe(info.Elapsed.Seconds())
		}
		m.branches.Observe(float64(info.Branches))
	}
}

// observePhase records a phase's duration. A zero Elapsed means the step
// was not timed (the hook was installed mid-transaction).
func (m *Metrics) observePhase(p int, info xa.StepInfo) {
	if info.Elapsed > 0 {
		m.phaseObs[p].Observe(info.Elapsed.Seconds())
	}
}

// finished reports whether this pass's action finished the branch, so it is
// no longer prepared.
func finished(b recovery.Branch) bool {
	switch b.Result {
	case recovery.ResultCommitted, recovery.ResultRolledBack, recovery.ResultAlreadyFinished:
		return b.Err == nil
	}
	return false
}

// initResource creates a resource's counters at 0, so that increase() sees
// their first event (alerts on heuristics and failures rely on it).
func (m *Metrics) initResource(res string) {
	m.scanErrors.WithLabelValues(res)
	for _, a := range []recovery.Action{recovery.ActionCommit, recovery.ActionRollback} {
		m.resolved.WithLabelValues(res, string(a))
		m.actionFails.WithLabelValues(res, string(a))
	}
	for _, src := range []string{"recovery", "operator"} {
		m.heuristics.WithLabelValues(res, src)
	}
}

// ObserveReport records a recovery report; use it as
// recovery.Config.OnReport. Scans and passes set the per-resource gauges
// (a resource that could not be scanned keeps its last values, and counts
// a scan error); passes and resolves count the actions taken.
func (m *Metrics) ObserveReport(rep *recovery.Report) {
	for _, res := range rep.Resources {
		m.initResource(res)
	}
	failed := map[string]bool{}
	for _, e := range rep.ScanErrors {
		failed[e.Resource] = true
		m.scanErrors.WithLabelValues(e.Resource).Inc()
	}
	actionFailed := false
	if rep.Kind == recovery.KindPass || rep.Kind == recovery.KindResolve {
		source := "recovery"
		if rep.Kind == recovery.KindResolve {
			source = "operator"
		}
		for _, b := range rep.Branches {
			if b.Action != recovery.ActionCommit && b.Action != recovery.ActionRollback {
				continue
			}
			switch {
			case b.Err != nil:
				actionFailed = true
				m.actionFails.WithLabelValues(b.Resource, string(b.Action)).Inc()
			case b.Result == recovery.ResultCommitted || b.Result == recovery.ResultRolledBack:
				m.resolved.WithLabelValues(b.Resource, string(b.Action)).Inc()
				if b.Class == recovery.Heuristic {
					m.heuristics.WithLabelValues(b.Resource, source).Inc()
				}
			}
		}
	}
	if rep.Kind == recovery.KindPass {
		m.passes.Inc()
		if len(rep.ScanErrors) > 0 || actionFailed {
			m.failedPasses.Inc()
		}
		m.passSeconds.Observe(rep.Duration.Seconds())
		m.lastPass.Set(float64(rep.At.UnixNano()) / 1e9)
	}
	if rep.Kind == recovery.KindResolve {
		return // it lists one transaction's branches only: no gauge can be set from it
	}
	for _, res := range rep.Resources {
		if failed[res] {
			continue
		}
		var oldest float64
		count := make(map[recovery.Class]int, len(classes))
		for _, b := range rep.Branches {
			if b.Resource != res || finished(b) {
				continue
			}
			count[b.Class]++
			if b.Class != recovery.Foreign && b.Class != recovery.UnknownOwner {
				oldest = max(oldest, b.Age.Seconds())
			}
		}
		m.oldestAge.WithLabelValues(res).Set(oldest)
		for _, c := range classes {
			m.preparedCount.WithLabelValues(res, string(c)).Set(float64(count[c]))
		}
	}
}
