// Package recovery finds prepared branches a crash left behind, correlates
// them with the decision log, and resolves them: it commits branches whose
// transaction has a durable commit decision and rolls back orphans that are
// positively ours, past their fence and seen in two consecutive scans.
// Everything else (foreign transactions, other nodes' transactions, anything
// uncertain) is reported and left alone.
//
// After a restart, a coordinator need not wait for the fence of its
// previous incarnation's transactions: that incarnation is dead (this
// process holds the log's lock or the node's lease), and its transactions
// are those that began before this coordinator started
// (xa.Coordinator.Started), which the XID alone tells. Set
// Config.DeadBefore to it and run PassSettled at start-up: their undecided
// branches are rolled back at once (see ExampleRecoverer_PassSettled).
//
// A pass is scan → classify → act. The scan (scan.go) is the only reading
// I/O: it lists every resource and gathers what the log and the decision
// keepers say into a snapshot. Classification (classify.go) is a pure
// function of that snapshot, for passes and for an operator's Resolve
// alike. Acting (act.go) writes the log, fences, and commits or rolls back.
package recovery

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/xabridge/xabridge/decisionlog"
	"github.com/xabridge/xabridge/drivers"
)

// Config configures a Recoverer.
type Config struct {
	// NodeID is this coordinator's node id: only its transactions are acted
	// on.
	NodeID string
	// Log is the decision log of NodeID. Acting (Pass, Resolve) needs it open
	// for writing.
	Log decisionlog.Log
	// Resources are the databases to scan.
	Resources []drivers.Resource
	// Active reports whether a transaction is running in a live
	// coordinator of this process (Coordinator.Active); such branches are
	// left alone. Nil means none is.
	Active func(drivers.GlobalID) bool
	// Skew is added to a transaction's deadline before it counts as past
	// its fence, as a margin for clock differences between the coordinator
	// that wrote the deadline and this process (default 5s).
	Skew time.Duration
	// MinAge, if set, overrides the fence: a branch whose transaction began
	// more than MinAge ago counts as past its fence. For operators who know
	// the coordinator is dead (the log lock proves no coordinator is
	// writing to this log).
	MinAge *time.Duration
	// DeadBefore, if set, says that no live process can still decide a
	// transaction of NodeID that began before it: its undecided branches
	// are orphans at once, without waiting for their fence (still with the
	// abort recorded first, the decision keeper's fence, and the two-scan
	// rule). Commit decisions are committed as always, and other nodes'
	// transactions are never affected.
	//
	// It is for the coordinator of a restarted process: set it to that
	// coordinator's xa.Coordinator.Started, and run a pass (PassSettled)
	// right after start so that the previous incarnation's prepared
	// branches, and their row locks, go at once. The caller guarantees
	// what makes it safe: this process is the only live one with NodeID
	// (it holds the file log's lock, or the node's lease in a shared
	// store), and the coordinator whose Started it is runs in this
	// process (no earlier Coordinator of NodeID in this process still runs
	// transactions), so every transaction that began before it is an
	// earlier, dead incarnation's. Never set it in a process that cannot
	// know that (a standalone recovery tool next to a possibly live
	// coordinator with a copy of the log): MinAge is the operator's
	// explicit override there.
	//
	// It relies on the node id being unique among live coordinators more
	// than the fence does. Two live processes with one node id and two
	// file logs on the same databases (a misconfiguration the file log's
	// lock cannot see) would each roll back the other's in-flight prepared
	// branches, which that other may still commit: atomicity lost. The
	// fence alone tolerates that mistake for orphans (their owner can no
	// longer decide them); DeadBefore does not. A shared store's node
	// lease rules it out, and so does a node lock in the participants
	// (LockNode, with DeadBeforeValid set to NodeLocks.Held), with file
	// logs too.
	DeadBefore time.Time
	// DeadBeforeValid, if set, is asked once per pass (Scan, Pass,
	// Resolve); DeadBefore applies to the pass only if it answers true.
	// Set it to NodeLocks.Held: the fast path then runs only while this
	// process holds the node's lock on every participant that can hold
	// one, and falls back to the fence while one is lost or unreachable.
	DeadBeforeValid func() bool
	// Actor names who acts, for the log's action records (default
	// "recovery@<node>").
	Actor string
	// Logger receives one event per action. Default: discard.
	Logger *slog.Logger
	// Settle is how long a branch must have been prepared-and-seen (in an
	// earlier scan) before recovery acts on it (default 1s; negative means
	// no wait, for tests). It is the two-scan rule, and it keeps recovery
	// away from a MariaDB race: XA COMMIT sent while the branch's owner
	// session is still closing answers OK but commits nothing, leaving the
	// branch prepared and invisible until a server restart.
	Settle time.Duration
	// Now is the clock (default time.Now).
	Now func() time.Time
	// OnReport, if set, sees the report of every Scan, Pass and Resolve
	// (a metrics collector's feed; see Report.Kind). It is called on the
	// goroutine that ran it, before the report is returned, and must not
	// modify the report or block.
	OnReport func(*Report)
	// DecisionResource names the resource that keeps commit decisions in
	// its own table (xa.Config.DecisionResource); it must be one of
	// Resources and implement decisionlog.Keeper. Recovery fences an
	// orphan there (an abort marker) before presuming it aborted. Decisions
	// are read from every resource that implements decisionlog.Keeper
	// whether or not this is set, so a forgotten setting cannot make
	// recovery roll back a transaction whose decision a keeper had
	// committed before the scan; but only the marker excludes a decision
	// committing at that very moment (without it, the transaction's
	// deadline plus Skew is the only margin), so set it.
	DecisionResource string
}

// Recoverer scans resources and resolves in-doubt branches. It remembers
// which orphans it has already seen, so consecutive passes implement the
// two-scan rule. Safe for concurrent use, though passes are serialised.
type Recoverer struct {
	cfg    Config
	logger *slog.Logger

	mu        sync.Mutex                // serialises passes
	firstSeen map[drivers.XID]time.Time // when each branch of ours was first seen by a pass
	res       map[string]drivers.Resource
	keepers   []decisionlog.Keeper // every resource that can keep decisions
	fence     decisionlog.Keeper   // Config.DecisionResource, or nil
}

// New returns a Recoverer for cfg.
func New(cfg Config) (*Recoverer, error) {
	if err := drivers.ValidateNodeID(cfg.NodeID); err != nil {
		return nil, fmt.Errorf("recovery: %w", err)
	}
	if cfg.Log == nil {
		return nil, errors.New("recovery: no decision log")
	}
	if cfg.Skew <= 0 {
		cfg.Skew = 5 * time.Second
	}
	if cfg.Actor == "" {
		cfg.Actor = "recovery@" + cfg.NodeID
	}
	if cfg.Settle == 0 {
		cfg.Settle = time.Second
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	logger := cfg.Logger
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	res := map[string]drivers.Resource{}
	for i, r := range cfg.Resources {
		if drivers.IsNil(r) {
			return nil, fmt.Errorf("recovery: Resources[%d] is nil", i)
		}
		if err := drivers.ValidateResourceName(r.Name()); err != nil {
			return nil, fmt.Errorf("recovery: %w", err)
		}
		if _, dup := res[r.Name()]; dup {
			return nil, fmt.Errorf("recovery: two resources are named %q", r.Name())
		}
		res[r.Name()] = r
	}
	rc := &Recoverer{cfg: cfg, logger: logger.With("node", cfg.NodeID), firstSeen: map[drivers.XID]time.Time{}, res: res}
	for _, r := range cfg.Resources {
		if k, ok := r.(decisionlog.Keeper); ok {
			rc.keepers = append(rc.keepers, k)
		}
	}
	if cfg.DecisionResource != "" {
		r, ok := res[cfg.DecisionResource]
		if !ok {
			return nil, fmt.Errorf("recovery: DecisionResource %q is not one of the resources", cfg.DecisionResource)
		}
		k, ok := r.(decisionlog.Keeper)
		if !ok {
			return nil, fmt.Errorf("recovery: DecisionResource %q (%T) cannot keep decisions", cfg.DecisionResource, r)
		}
		rc.fence = k
	}
	return rc, nil
}

// settle is Config.Settle, with a negative value meaning no wait.
func (r *Recoverer) settle() time.Duration {
	if r.cfg.Settle < 0 {
		return 0
	}
	return r.cfg.Settle
}

// Scan lists the prepared branches on every resource and classifies them,
// without acting. It does not count toward the two-scan rule.
func (r *Recoverer) Scan(ctx context.Context) *Report {
	r.mu.Lock()
	defer r.mu.Unlock()
	start := time.Now()
	rep := r.scan(ctx)
	rep.Branches = r.snapshot(ctx, rep, nil).classify()
	r.recheckDone(ctx, rep)
	r.report(rep, KindScan, start)
	return rep
}

// Pass runs one recovery pass: scan, classify, then act on every branch
// whose action is commit or rollback. With dryRun it only reports what it
// would do (and does not count toward the two-scan rule).
func (r *Recoverer) Pass(ctx context.Context, dryRun bool) *Report {
	r.mu.Lock()
	defer r.mu.Unlock()
	start := time.Now()
	rep := r.scan(ctx)
	if dryRun {
		rep.Branches = r.snapshot(ctx, rep, nil).classify()
		r.recheckDone(ctx, rep)
		r.report(rep, KindDryRun, start)
		return rep
	}
	s := r.snapshot(ctx, rep, r.firstSeen)
	rep.Branches = s.classify()
	r.recheckDone(ctx, rep)
	// Remember when each branch was first seen (the two-scan rule).
	next := map[drivers.XID]time.Time{}
	for _, b := range rep.Branches {
		if b.Ours && !b.unconfirmed {
			if t, ok := r.firstSeen[b.XID]; ok {
				next[b.XID] = t
			} else {
				next[b.XID] = rep.At
				r.logFound(b)
			}
		}
	}
	r.firstSeen = next
	for i := range rep.Branches {
		r.act(ctx, s, &rep.Branches[i])
	}
	r.endFinished(ctx, rep)
	r.report(rep, KindPass, start)
	return rep
}

// PassSettled runs a pass and, while the last one left a branch waiting
// only for the two-scan rule (Config.Settle: a branch is acted on once an
// earlier pass has seen it at least Settle ago), waits Settle and runs
// another, at most maxSettledPasses in all. It returns the reports of the
// passes it ran, in order; the last one says what is left. It is the
// start-up pass of a restarted coordinator with Config.DeadBefore set: one
// call rolls back the earlier incarnation's undecided branches (and
// finishes its commit decisions) instead of a pass that only sees them and
// a next one an interval later; a branch that shows up late (a dead
// process's PREPARE still reaching its server, or its MariaDB session
// letting go of a branch only now) gets its own two scans. It returns
// early, with what it has, when ctx ends.
func (r *Recoverer) PassSettled(ctx context.Context) []*Report {
	reps := []*Report{r.Pass(ctx, false)}
	for len(reps) < maxSettledPasses && waitsToSettle(reps[len(reps)-1]) {
		t := time.NewTimer(r.settle())
		select {
		case <-ctx.Done():
			t.Stop()
			return reps
		case <-t.C:
		}
		reps = append(reps, r.Pass(ctx, false))
	}
	return reps
}

// maxSettledPasses bounds PassSettled: a branch that keeps showing up new
// (unlikely at start-up) is left to the recovery loop.
const maxSettledPasses = 4

// waitsToSettle reports whether rep holds a branch that a pass after
// Settle would act on.
func waitsToSettle(rep *Report) bool {
	for _, b := range rep.Branches {
		if b.settling {
			return true
		}
	}
	return false
}

// report completes rep and hands it to Config.OnReport.
func (r *Recoverer) report(rep *Report, kind ReportKind, start time.Time) {
	rep.Kind, rep.Duration = kind, time.Since(start)
	if r.cfg.OnReport != nil {
		r.cfg.OnReport(rep)
	}
}

// logFound logs a branch of this node that a pass sees for the first time,
// when it is in doubt: once per branch, not once per pass. Live branches
// are running, and other nodes' are their own recovery's to report.
func (r *Recoverer) logFound(b Branch) {
	attrs := []any{"gtrid", b.XID.Global.String(), labelAttr(b.XID), "resource", b.Resource, "branch", int(b.XID.Branch),
		"class", string(b.Class), "age", b.Age.Round(time.Millisecond), "reason", b.Reason}
	switch b.Class {
	case Heuristic:
		r.logger.Error("heuristic branch: it contradicts the decision log; atomicity may be broken", attrs...)
	case CommitPending, AbortPending, Orphan:
		r.logger.Info("in-doubt branch found", attrs...)
	}
}

// Loop runs a pass every interval until ctx ends. It is meant for
// long-running processes (alongside a Coordinator, with Active set).
// onPass, if set, sees every report.
func (r *Recoverer) Loop(ctx context.Context, interval time.Duration, onPass func(*Report)) error {
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		rep := r.Pass(ctx, false)
		if onPass != nil {
			onPass(rep)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-t.C:
		}
	}
}
