// Package tracing records OpenTelemetry spans of xabridge's global
// transactions from the coordinator's hook: one span per global
// transaction (a child of the span in the context given to Begin or Run),
// with a child span per phase (work, prepare, decision, commit) and, under
// prepare and commit, one per branch (resource name and branch number as
// attributes). A transaction that aborts or ends in doubt gets status
// Error.
//
// It uses the OpenTelemetry API only: the application picks the SDK and the
// exporter. With no SDK installed the spans are no-ops and the hook does
// next to nothing.
//
//	t := tracing.New(nil) // the global TracerProvider
//	coord, err := xa.New(ctx, xa.Config{..., Hook: xa.Hooks(m.Hook, t.Hook)})
package tracing

import (
	"context"
	"sync"
	"sync/atomic"

	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/trace"

	"github.com/xabridge/xabridge/xa"
)

// ScopeName is the instrumentation scope of the spans.
const ScopeName = "github.com/xabridge/xabridge/tracing"

// Span names.
const (
	SpanTransaction   = "xabridge.transaction"
	SpanWork          = "xabridge.work"
	SpanPrepare       = "xabridge.prepare"
	SpanDecision      = "xabridge.decision"
	SpanCommit        = "xabridge.commit"
	SpanPrepareBranch = "xabridge.prepare.branch"
	SpanCommitBranch  = "xabridge.commit.branch"
)

// Attribute keys.
const (
	AttrGTRID    = attribute.Key("xabridge.gtrid")
	AttrNode     = attribute.Key("xabridge.node")
	AttrResource = attribute.Key("xabridge.resource")
	AttrBranch   = attribute.Key("xabridge.branch")
	AttrOutcome  = attribute.Key("xabridge.outcome")
	AttrReason   = attribute.Key("xabridge.reason")
	AttrBranches = attribute.Key("xabridge.branches")
	// AttrLabel is the transaction's label (xa.Tx.SetLabel), on the
	// transaction span of a labelled transaction. It is a span attribute
	// only, never a metric label: its values are unbounded.
	AttrLabel = attribute.Key("xabridge.label")
)

// maxOpen bounds the transactions traced at once, so that transactions
// never committed or rolled back (a caller's bug) cannot grow memory
// without end; beyond it new transactions are not traced.
const maxOpen = 1 << 16

// Tracer turns the coordinator's protocol steps into spans. Use Hook as
// xa.Config.Hook (or within xa.Hooks). Safe for concurrent use.
type Tracer struct {
	tracer trace.Tracer
	open   atomic.Int64 // transactions with spans open; 0 makes the hook free

	mu  sync.Mutex
	txs map[txKey]*txSpans
}

// txKey identifies a global transaction without formatting its id.
type txKey struct {
	node  string
	begin int64 // ms
	seq   uint32
}

func keyOf(info xa.StepInfo) txKey {
	return txKey{node: info.GTRID.Node(), begin: info.GTRID.Begin().UnixMilli(), seq: info.GTRID.Seq()}
}

const (
	phaseWork = iota
	phasePrepare
	phaseDecision
	phaseCommit
	nPhases
)

var phaseNames = [nPhases]string{SpanWork, SpanPrepare, SpanDecision, SpanCommit}

// txSpans are one transaction's open spans.
type txSpans struct {
	mu       sync.Mutex
	ctx      context.Context // holds tx
	tx       trace.Span
	phases   [nPhases]trace.Span
	phaseCtx [nPhases]context.Context
	prepare  map[int]trace.Span // open branch spans, by branch number
	commit   map[int]trace.Span
	done     bool // finished: later steps (background phase 2) open nothing
}

// New returns a Tracer whose spans come from tp (nil: the global
// TracerProvider, otel.GetTracerProvider).
func New(tp trace.TracerProvider) *Tracer {
	if tp == nil {
		tp = otel.GetTracerProvider()
	}
	return &Tracer{tracer: tp.Tracer(ScopeName), txs: map[txKey]*txSpans{}}
}

// Hook records a protocol step; use it as xa.Config.Hook.
func (t *Tracer) Hook(s xa.Step, info xa.StepInfo) {
	if s == xa.StepBegin {
		t.begin(info)
		return
	}
	if t.open.Load() == 0 {
		return // nothing is traced: no lock, no lookup
	}
	key := keyOf(info)
	t.mu.Lock()
	tx := t.txs[key]
	if tx != nil && s == xa.StepFinished {
		delete(t.txs, key)
		t.open.Add(-1)
	}
	t.mu.Unlock()
	if tx == nil {
		return // not traced, already finished (background phase 2), or resumed after a restart
	}
	tx.mu.Lock()
	defer tx.mu.Unlock()
	tx.step(t.tracer, s, info)
}

func (t *Tracer) begin(info xa.StepInfo) {
	ctx := info.Context
	if ctx == nil {
		ctx = context.Background()
	}
	ctx, span := t.tracer.Start(ctx, SpanTransaction)
	if !span.IsRecording() {
		span.End()
		return
	}
	// Set only on a recording span: formatting the id costs allocations
	// a no-op tracer should not pay.
	span.SetAttributes(AttrGTRID.String(info.GTRID.String()), AttrNode.String(info.GTRID.Node()))
	tx := &txSpans{ctx: ctx, tx: span}
	tx.startPhase(t.tracer, phaseWork)
	t.mu.Lock()
	if len(t.txs) >= maxOpen {
		t.mu.Unlock()
		span.AddEvent("too many transactions traced at once; this one is not")
		tx.endAll()
		return
	}
	t.txs[keyOf(info)] = tx
	t.open.Add(1)
	t.mu.Unlock()
}

func (tx *txSpans) startPhase(tr trace.Tracer, p int) {
	if tx.phases[p] != nil {
		return
	}
	tx.phaseCtx[p], tx.phases[p] = tr.Start(tx.ctx, phaseNames[p])
}

func (tx *txSpans) endPhase(p int) {
	if sp := tx.phases[p]; sp != nil {
		sp.End()
		tx.phases[p] = nil
	}
}

// startBranch opens a branch span under phase p.
func (tx *txSpans) startBranch(tr trace.Tracer, p int, name string, spans *map[int]trace.Span, info xa.StepInfo) {
	tx.startPhase(tr, p)
	if *spans == nil {
		*spans = map[int]trace.Span{}
	}
	if _, ok := (*spans)[info.Branch]; ok {
		return
	}
	_, sp := tr.Start(tx.phaseCtx[p], name, trace.WithAttributes(
		AttrResource.String(info.Resource), AttrBranch.Int(info.Branch),
	))
	(*spans)[info.Branch] = sp
}

// endBranch closes a branch span, as failed when err is set. It reports
// whether the span was open.
func endBranch(spans map[int]trace.Span, branch int, err error) bool {
	sp, ok := spans[branch]
	if !ok {
		return false
	}
	if err != nil {
		sp.RecordError(err)
		sp.SetStatus(codes.Error, err.Error())
	}
	sp.End()
	delete(spans, branch)
	return true
}

func branchAttrs(info xa.StepInfo) trace.EventOption {
	return trace.WithAttributes(AttrResource.String(info.Resource), AttrBranch.Int(info.Branch))
}

// step applies one protocol step to the transaction's spans.
func (tx *txSpans) step(tr trace.Tracer, s xa.Step, info xa.StepInfo) {
	if tx.done {
		return // a step that looked the transaction up just before it finished
	}
	switch s {
	case xa.StepEnlisted:
		tx.tx.AddEvent("enlisted", branchAttrs(info))
	case xa.StepWorkDone:
		tx.endPhase(phaseWork)
	case xa.StepPreparing:
		tx.endPhase(phaseWork)
		tx.startBranch(tr, phasePrepare, SpanPrepareBranch, &tx.prepare, info)
	case xa.StepPrepared:
		endBranch(tx.prepare, info.Branch, nil)
	case xa.StepPrepareFailed:
		endBranch(tx.prepare, info.Branch, info.Err)
		if sp := tx.phases[phasePrepare]; sp != nil {
			sp.SetStatus(codes.Error, "a branch failed to prepare")
		}
	case xa.StepAllPrepared:
		tx.endPhase(phasePrepare)
	case xa.StepDeciding:
		tx.startPhase(tr, phaseDecision)
	case xa.StepDecided:
		tx.endPhase(phaseDecision)
	case xa.StepDecisionRefused:
		if sp := tx.phases[phaseDecision]; sp != nil {
			sp.RecordError(info.Err)
			sp.SetStatus(codes.Error, "commit decision refused")
		}
		tx.endPhase(phaseDecision)
	case xa.StepCommitting:
		tx.endPhase(phaseWork)
		tx.startBranch(tr, phaseCommit, SpanCommitBranch, &tx.commit, info)
	case xa.StepCommitted, xa.StepOnePhaseCommit:
		if !endBranch(tx.commit, info.Branch, nil) {
			// The decision keeper's branch: its commit was the decision.
			tx.tx.AddEvent("committed", branchAttrs(info))
		}
		if s == xa.StepOnePhaseCommit {
			tx.endPhase(phaseCommit)
		}
	case xa.StepCommitFailed:
		if sp, ok := tx.commit[info.Branch]; ok {
			// Phase 2 retries it; the span stays open until the branch
			// commits or the caller stops waiting.
			sp.RecordError(info.Err)
		}
	case xa.StepAllCommitted:
		tx.endPhase(phaseCommit)
	case xa.StepPhase2Handoff:
		if sp := tx.phases[phaseCommit]; sp != nil {
			sp.AddEvent("phase 2 continues in the background")
		}
	case xa.StepRolledBack:
		tx.tx.AddEvent("rolled back", branchAttrs(info))
	case xa.StepFinished:
		tx.finish(info)
	}
}

// finish sets the transaction span's outcome and ends every open span.
func (tx *txSpans) finish(info xa.StepInfo) {
	reason := xa.ReasonOf(info.Err)
	tx.tx.SetAttributes(
		AttrOutcome.String(outcomeName(info.Outcome)),
		AttrReason.String(string(reason)),
		AttrBranches.Int(info.Branches),
	)
	if info.Label != "" {
		tx.tx.SetAttributes(AttrLabel.String(info.Label))
	}
	switch info.Outcome {
	case xa.Aborted, xa.Unknown:
		if info.Err != nil {
			tx.tx.RecordError(info.Err)
		}
		tx.tx.SetStatus(codes.Error, outcomeName(info.Outcome)+": "+string(reason))
	}
	tx.endAll()
}

// endAll ends every open span, innermost first.
func (tx *txSpans) endAll() {
	tx.done = true
	for _, m := range []map[int]trace.Span{tx.prepare, tx.commit} {
		for b, sp := range m {
			sp.End()
			delete(m, b)
		}
	}
	for p := range tx.phases {
		tx.endPhase(p)
	}
	tx.tx.End()
}

func outcomeName(o xa.Outcome) string {
	if o == xa.Unknown {
		return "in-doubt"
	}
	return o.String()
}
