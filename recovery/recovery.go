// Package recovery finds prepared branches a crash left behind, correlates
// them with the decision log, and resolves them: it commits branches whose
// transaction has a durable commit decision and rolls back orphans that are
// positively ours, past their fence and seen in two consecutive scans.
// Everything else (foreign transactions, other nodes' transactions, anything
// uncertain) is reported and left alone.
package recovery

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/xabridge/xabridge/decisionlog"
	"github.com/xabridge/xabridge/drivers"
)

// Class is what recovery concluded about one prepared branch.
type Class string

// The classes of prepared branches.
const (
	// CommitPending: the log holds a commit decision; the branch must commit.
	CommitPending Class = "commit-pending"
	// AbortPending: the log holds an abort record; the branch must roll back.
	AbortPending Class = "abort-pending"
	// Orphan: ours, no decision, past its fence. Rolled back once it has
	// been seen in two consecutive scans (presumed abort).
	Orphan Class = "orphan"
	// Live: ours and its coordinator may still be running it (it is active
	// in this process, or not yet past its fence). Left alone.
	Live Class = "live"
	// UnknownOwner: another coordinator node's transaction, whose log we
	// do not have. Left alone and reported.
	UnknownOwner Class = "unknown-owner"
	// Heuristic: the branch contradicts the log (for example the log says
	// every branch committed, or an operator forced an outcome). Reported
	// loudly; the log's decision, if any, is still applied.
	Heuristic Class = "heuristic"
	// Foreign: not created by xabridge, or not reachable through this
	// resource. Never touched.
	Foreign Class = "foreign"
)

// Action is what recovery does (or would do) with a branch.
type Action string

// Actions recovery takes.
const (
	ActionNone     Action = "none"
	ActionCommit   Action = "commit"
	ActionRollback Action = "rollback"
	// ActionWait: the branch was not yet seen in an earlier scan at least
	// Settle ago; it is acted on at a later pass if still there.
	ActionWait Action = "wait"
)

// Branch is one prepared branch found on a resource, with what recovery
// concluded about it.
type Branch struct {
	Resource string
	drivers.Prepared
	Class  Class
	Action Action
	Reason string
	// Age is how long ago the transaction began (from its global id), or
	// since the database prepared it for foreign entries when known.
	Age time.Duration
	// LogState is what the decision log says about the transaction.
	LogState decisionlog.State
	// Result is the outcome of the action when one was taken: one of the
	// Result constants, or an error message (Err set).
	Result string
	// Err is the action's error, if it failed.
	Err error `json:"-"`

	// unconfirmed: classified heuristic, but the second listing that
	// tells a real heuristic from a branch its coordinator finished during
	// the scan failed; judged again at the next pass.
	unconfirmed bool
}

// ResourceError is a resource that could not be scanned. Recovery never
// fails silently: a scan error is reported and counted, and the pass
// continues with the other resources.
type ResourceError struct {
	Resource string
	Err      error
}

// ReportKind says what produced a Report.
type ReportKind string

// The kinds of Report.
const (
	KindScan    ReportKind = "scan"    // Scan: every resource listed, nothing done
	KindDryRun  ReportKind = "dry-run" // Pass with dryRun: every resource listed, nothing done
	KindPass    ReportKind = "pass"    // Pass: every resource listed, actions taken
	KindResolve ReportKind = "resolve" // Resolve: only the resolved transaction's branches
)

// Report is the result of one scan or pass.
type Report struct {
	Kind ReportKind
	At   time.Time
	// Duration is how long the scan, pass or resolve took.
	Duration time.Duration
	// Resources names every resource scanned, in configuration order
	// (those in ScanErrors could not be).
	Resources []string
	Branches  []Branch
	// ScanErrors lists resources that could not be scanned.
	ScanErrors []ResourceError
	// Ended lists commit decisions recovery found fully committed and marked
	// ended in the log, or deleted from a decision keeper's table.
	Ended []string

	kept       map[drivers.GlobalID]kept // the keepers' decisions, read before the scan
	keptFailed []decisionlog.Keeper      // keepers whose decisions could not be read
}

// Remaining counts this node's branches still prepared after the pass:
// every class but Foreign and UnknownOwner (other nodes' branches are
// reported, not counted) whose action did not finish them.
func (r *Report) Remaining() int {
	n := 0
	for _, b := range r.Branches {
		if b.Class == Foreign || b.Class == UnknownOwner {
			continue
		}
		if (b.Action == ActionCommit || b.Action == ActionRollback) && b.Err == nil && b.Result != "" && b.Result != ResultBusy {
			continue
		}
		n++
	}
	return n
}

// The results of an action (Branch.Result) other than a failure.
const (
	ResultCommitted       = "committed"
	ResultRolledBack      = "rolled back"
	ResultAlreadyFinished = "already finished"  // someone else finished the branch first
	ResultBusy            = "busy: retry later" // the branch's session is still closing; the next pass retries
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
	for _, r := range cfg.Resources {
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

// kept is one decision a keeper holds, and which keeper.
type kept struct {
	decisionlog.Decision
	keeper decisionlog.Keeper
}

// readKept reads the decisions every keeper holds. It runs before the
// scan: a commit decision is only written once all its other branches are
// prepared, so a branch the later scan does not list is finished. A commit
// decision wins over an abort marker in another keeper (which can only be
// a leftover fence of a transaction decided elsewhere).
func (r *Recoverer) readKept(ctx context.Context, rep *Report) map[drivers.GlobalID]kept {
	out := map[drivers.GlobalID]kept{}
	for _, k := range r.keepers {
		lctx, cancel := context.WithTimeout(ctx, opTimeout)
		ds, err := k.ListDecisions(lctx)
		cancel()
		if err != nil {
			rep.ScanErrors = append(rep.ScanErrors, ResourceError{k.Name(), fmt.Errorf("reading its decision table: %w", err)})
			rep.keptFailed = append(rep.keptFailed, k)
			r.logger.Log(ctx, errLevel(ctx), "recovery cannot read a decision table", "resource", k.Name(), "err", err)
			continue
		}
		for _, d := range ds {
			if prev, ok := out[d.GTRID]; ok && !prev.Abort {
				continue
			}
			out[d.GTRID] = kept{d, k}
		}
	}
	return out
}

// Scan lists the prepared branches on every resource and classifies them,
// without acting. It does not count toward the two-scan rule.
func (r *Recoverer) Scan(ctx context.Context) *Report {
	r.mu.Lock()
	defer r.mu.Unlock()
	start := time.Now()
	rep := r.scan(ctx)
	r.classify(rep, nil)
	r.recheckDone(ctx, rep)
	r.report(rep, KindScan, start)
	return rep
}

// scan reads the keepers' decisions, then lists the prepared branches.
func (r *Recoverer) scan(ctx context.Context) *Report {
	rep := &Report{At: r.cfg.Now()}
	for _, res := range r.cfg.Resources {
		rep.Resources = append(rep.Resources, res.Name())
	}
	rep.kept = r.readKept(ctx, rep)
	r.scanBranches(ctx, rep)
	return rep
}

// report completes rep and hands it to Config.OnReport.
func (r *Recoverer) report(rep *Report, kind ReportKind, start time.Time) {
	rep.Kind, rep.Duration = kind, time.Since(start)
	if r.cfg.OnReport != nil {
		r.cfg.OnReport(rep)
	}
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
		r.classify(rep, nil)
		r.recheckDone(ctx, rep)
		r.report(rep, KindDryRun, start)
		return rep
	}
	r.classify(rep, r.firstSeen)
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
		r.act(ctx, &rep.Branches[i])
	}
	r.endFinished(ctx, rep)
	r.report(rep, KindPass, start)
	return rep
}

// recheckDone looks again at the branches classified heuristic because the
// log says their transaction finished phase 2: the scan may have listed a
// branch just before its coordinator committed it and ended the
// transaction (only a recovery running next to a live coordinator can see
// that race). Each such branch's resource is listed once more; a branch no
// longer prepared was finished by its coordinator and leaves the report. If
// the second listing fails, the branch stays as classified.
func (r *Recoverer) recheckDone(ctx context.Context, rep *Report) {
	suspect := map[string]bool{}
	for _, b := range rep.Branches {
		if b.Class == Heuristic && b.LogState == decisionlog.StateDone {
			suspect[b.Resource] = true
		}
	}
	if len(suspect) == 0 {
		return
	}
	still := map[string]map[drivers.XID]bool{}
	failed := map[string]error{}
	for name := range suspect {
		ps, err := r.res[name].Recover(ctx)
		if err != nil {
			failed[name] = err
			continue
		}
		still[name] = map[drivers.XID]bool{}
		for _, p := range ps {
			if p.Ours {
				still[name][p.XID] = true
			}
		}
	}
	kept := rep.Branches[:0]
	for _, b := range rep.Branches {
		if b.Class == Heuristic && b.LogState == decisionlog.StateDone {
			if err := failed[b.Resource]; err != nil {
				// Not confirmed: no alarm and no action on one listing
				// (a pass cut short by shutdown sees exactly this).
				b.unconfirmed, b.Action = true, ActionWait
				b.Reason += fmt.Sprintf("; not confirmed (listing %s again failed: %v): looking again at the next pass", b.Resource, err)
			} else if !still[b.Resource][b.XID] {
				continue // committed by its coordinator during the scan
			}
		}
		kept = append(kept, b)
	}
	rep.Branches = kept
}

// logFound logs a branch of this node that a pass sees for the first time,
// when it is in doubt: once per branch, not once per pass. Live branches
// are running, and other nodes' are their own recovery's to report.
func (r *Recoverer) logFound(b Branch) {
	attrs := []any{"gtrid", b.XID.Global.String(), "resource", b.Resource, "branch", int(b.XID.Branch),
		"class", string(b.Class), "age", b.Age.Round(time.Millisecond), "reason", b.Reason}
	switch b.Class {
	case Heuristic:
		r.logger.Error("heuristic branch: it contradicts the decision log; atomicity may be broken", attrs...)
	case CommitPending, AbortPending, Orphan:
		r.logger.Info("in-doubt branch found", attrs...)
	}
}

// errLevel is the level of a scan failure: an error, unless the caller's
// context ended (a pass cut short at shutdown is no incident).
func errLevel(ctx context.Context) slog.Level {
	if ctx.Err() != nil {
		return slog.LevelDebug
	}
	return slog.LevelError
}

func (r *Recoverer) scanBranches(ctx context.Context, rep *Report) {
	type result struct {
		name string
		p    []drivers.Prepared
		err  error
	}
	results := make([]result, len(r.cfg.Resources))
	var wg sync.WaitGroup
	for i, res := range r.cfg.Resources {
		wg.Add(1)
		go func() {
			defer wg.Done()
			rctx, cancel := context.WithTimeout(ctx, opTimeout)
			defer cancel()
			p, err := res.Recover(rctx)
			results[i] = result{res.Name(), p, err}
		}()
	}
	wg.Wait()
	for _, res := range results {
		if res.err != nil {
			rep.ScanErrors = append(rep.ScanErrors, ResourceError{res.name, res.err})
			r.logger.Log(ctx, errLevel(ctx), "recovery scan failed", "resource", res.name, "err", res.err)
			continue
		}
		for _, p := range res.p {
			rep.Branches = append(rep.Branches, Branch{Resource: res.name, Prepared: p})
		}
	}
	sort.SliceStable(rep.Branches, func(i, j int) bool {
		a, b := rep.Branches[i], rep.Branches[j]
		if a.Ours != b.Ours {
			return a.Ours
		}
		ka, kb := a.ID, b.ID
		if a.Ours {
			ka, kb = a.XID.GID(), b.XID.GID()
		}
		if ka != kb {
			return ka < kb
		}
		return a.Resource < b.Resource
	})
}

// pastFence reports whether recovery may presume g aborted as far as time
// goes, and why not when it may not.
func (r *Recoverer) pastFence(g drivers.GlobalID, now time.Time) (bool, string) {
	if r.cfg.MinAge != nil && now.Sub(g.Begin()) >= *r.cfg.MinAge {
		return true, ""
	}
	fence := g.Deadline().Add(r.cfg.Skew)
	if now.Before(fence) {
		return false, fmt.Sprintf("within its fence (%s left)", fence.Sub(now).Round(time.Second))
	}
	return true, ""
}

// classify sets each branch's class and action. With firstSeen nil it
// reports the action recovery will take (Scan, dry runs); otherwise actions
// on branches not yet settled become ActionWait.
func (r *Recoverer) classify(rep *Report, firstSeen map[drivers.XID]time.Time) {
	now := rep.At
	for i := range rep.Branches {
		b := &rep.Branches[i]
		b.Action = ActionNone
		if !b.Ours {
			b.Class = Foreign
			b.Reason = "not created by xabridge"
			if b.Note != "" {
				b.Reason = b.Note
			}
			if !b.PreparedAt.IsZero() {
				b.Age = now.Sub(b.PreparedAt)
			}
			continue
		}
		g := b.XID.Global
		b.Age = now.Sub(g.Begin())
		if g.Node() != r.cfg.NodeID {
			b.Class = UnknownOwner
			b.Reason = fmt.Sprintf("belongs to node %q; run recovery with that node's id and log", g.Node())
			continue
		}
		entry, ok := r.cfg.Log.Lookup(g)
		if ok {
			b.LogState = entry.State
		}
		k, kok := rep.kept[g]
		logCommitted := ok && (entry.State == decisionlog.StateCommitted || entry.State == decisionlog.StateDone)
		switch {
		case r.cfg.Active != nil && r.cfg.Active(g):
			// Its coordinator is still driving it (work, phase 1, or phase 2
			// on the branch's own session): finishing it from here would
			// only race that coordinator.
			b.Class, b.Reason = Live, "running in this coordinator"
		case ok && forced(entry):
			// Before the log's decision: the operator overrode it, and a
			// pass that went on by the decision would undo half of that.
			b.Class, b.Reason = Heuristic, "an operator forced an outcome for this transaction; resolve it by hand (xabridge resolve --force)"
		case !logCommitted && kok && !k.Abort:
			b.LogState = decisionlog.StateCommitted
			b.Class, b.Action, b.Reason = CommitPending, ActionCommit, "commit decision kept in "+k.keeper.Name()
			if !inDecision(&k.Decision, b.Resource, b.XID.Branch) {
				b.Class, b.Reason = Heuristic, "commit decision kept in "+k.keeper.Name()+" does not name this branch; committing with its transaction"
			}
		case !logCommitted && kok && !(ok && entry.State == decisionlog.StateAborted):
			b.Class, b.Action, b.Reason = AbortPending, ActionRollback, "abort marker in "+k.keeper.Name()
		case ok && entry.State == decisionlog.StateCommitted:
			b.Class, b.Action, b.Reason = CommitPending, ActionCommit, "commit decision in the log"
			if !inDecision(entry.Decision, b.Resource, b.XID.Branch) {
				b.Class, b.Reason = Heuristic, "commit decision in the log does not name this branch; committing with its transaction"
			}
		case ok && entry.State == decisionlog.StateDone:
			b.Class, b.Action, b.Reason = Heuristic, ActionCommit, "log says every branch committed, yet this one is prepared; committing"
		case ok && entry.State == decisionlog.StateAborted:
			b.Class, b.Action, b.Reason = AbortPending, ActionRollback, "abort recorded in the log"
		case ok && entry.Heuristic():
			b.Class, b.Reason = Heuristic, "an operator forced an outcome for this transaction; resolve it by hand"
		default:
			past, why := r.pastFence(g, now)
			if !past {
				b.Class, b.Reason = Live, why
				continue
			}
			b.Class, b.Action, b.Reason = Orphan, ActionRollback, "no commit decision, past its fence, seen in two scans: presumed abort"
			if r.keptUnknown(rep) {
				// The decision may be in a table that could not be read.
				b.Action = ActionWait
				b.Reason = "no commit decision found, but a decision table could not be read: not presumed aborted until it can"
			}
		}
		if firstSeen != nil && (b.Action == ActionCommit || b.Action == ActionRollback) {
			if t, ok := firstSeen[b.XID]; !ok || now.Sub(t) < r.settle() {
				b.Action = ActionWait
				b.Reason += fmt.Sprintf(" (waiting until it has been seen for %s)", r.settle())
			}
		}
	}
}

func (r *Recoverer) settle() time.Duration {
	if r.cfg.Settle < 0 {
		return 0
	}
	return r.cfg.Settle
}

func inDecision(d *decisionlog.Decision, resource string, branch uint8) bool {
	if d == nil {
		return false
	}
	for _, p := range d.Participants {
		if p.Branch == branch && p.Resource == resource {
			return true
		}
	}
	// The same MySQL/MariaDB server can be configured as two resources
	// (XA RECOVER is server-wide); match on the branch number alone then.
	for _, p := range d.Participants {
		if p.Branch == branch {
			return true
		}
	}
	return false
}

// act carries out b's action and records it in b.
func (r *Recoverer) act(ctx context.Context, b *Branch) {
	if b.Action != ActionCommit && b.Action != ActionRollback {
		return
	}
	ctx, cancel := context.WithTimeout(ctx, opTimeout)
	defer cancel()
	res := r.res[b.Resource]
	g := b.XID.Global
	if b.Action == ActionRollback && b.Class == Orphan {
		// The keeper's fence first: an abort marker there excludes a
		// decision in the keeper's table, and if the decision is already
		// there nothing contradicting it must reach the log.
		committed, err := r.fenceKeeper(ctx, g)
		switch {
		case err != nil:
			b.Err, b.Result = err, "not rolled back: "+err.Error()
			r.logger.Error("could not fence the transaction in the decision keeper; leaving the branch", "gtrid", g.String(), "err", err)
			return
		case committed:
			b.Class, b.Action, b.Reason = CommitPending, ActionCommit, "commit decision kept in "+r.fence.Name()+" (found while fencing)"
		}
	}
	if e, ok := r.cfg.Log.Lookup(g); b.Action == ActionRollback && b.Class == Orphan && !(ok && e.State == decisionlog.StateAborted) {
		// The fence: record the abort before touching the branch. Once it is
		// durable, the coordinator can no longer write a commit decision
		// for this transaction (the log refuses it), so rolling back is safe.
		err := r.cfg.Log.Abort(ctx, decisionlog.Action{GTRID: g, Op: "presume-abort", Reason: b.Reason, Actor: r.cfg.Actor, At: r.cfg.Now()})
		if err != nil {
			// A decision may have raced in: look again.
			if e, ok := r.cfg.Log.Lookup(g); ok && (e.State == decisionlog.StateCommitted || e.State == decisionlog.StateDone) {
				b.Class, b.Action, b.Reason = CommitPending, ActionCommit, "commit decision written during the scan"
			} else {
				b.Err, b.Result = err, "not rolled back: "+err.Error()
				r.logger.Error("could not record the presumed abort; leaving the branch", "gtrid", g.String(), "err", err)
				return
			}
		}
	}
	op := "commit"
	if b.Action == ActionRollback {
		op = "rollback"
	}
	if err := r.cfg.Log.Record(ctx, decisionlog.Action{
		GTRID: g, Resource: b.Resource, Branch: b.XID.Branch, Op: op, Reason: b.Reason, Actor: r.cfg.Actor, At: r.cfg.Now(),
		Heuristic: b.Class == Heuristic,
	}); err != nil {
		b.Err, b.Result = err, "not done: cannot record the action: "+err.Error()
		r.logger.Error("could not record a recovery action; not acting", "gtrid", g.String(), "err", err)
		return
	}
	var err error
	if b.Action == ActionCommit {
		err = res.CommitPrepared(ctx, b.XID)
	} else {
		err = res.RollbackPrepared(ctx, b.XID)
	}
	switch {
	case err == nil:
		if b.Action == ActionCommit {
			b.Result = ResultCommitted
		} else {
			b.Result = ResultRolledBack
		}
		lvl := slog.LevelInfo
		if b.Class == Heuristic {
			lvl = slog.LevelWarn
		}
		r.logger.Log(ctx, lvl, "recovery resolved a branch", "gtrid", g.String(), "resource", b.Resource, "action", string(b.Action), "class", string(b.Class), "reason", b.Reason)
	case errors.Is(err, drivers.ErrNotFound):
		b.Result = ResultAlreadyFinished
	case errors.Is(err, drivers.ErrBusy):
		b.Result = ResultBusy
	default:
		b.Err, b.Result = err, "failed: "+err.Error()
		r.logger.Warn("recovery action failed; retried on the next pass", "gtrid", g.String(), "resource", b.Resource, "action", string(b.Action), "err", err)
	}
}

// opTimeout bounds each call recovery makes to a database (a listing, a
// fence, a commit or rollback), so that one unreachable resource cannot
// stall a pass, and the Loop with it, until TCP gives up.
const opTimeout = 30 * time.Second

// keptUnknown reports whether a keeper whose decisions could not be read
// may hold a decision that no fence would find: any but the configured
// fence (its FenceAbort finds a decision, or excludes one, atomically).
func (r *Recoverer) keptUnknown(rep *Report) bool {
	for _, k := range rep.keptFailed {
		if k != r.fence {
			return true
		}
	}
	return false
}

// forced reports whether an operator forced an outcome for the entry's
// transaction (xabridge resolve --force).
func forced(e decisionlog.Entry) bool {
	for _, a := range e.Actions {
		if a.Heuristic && strings.HasPrefix(a.Op, "forced-") {
			return true
		}
	}
	return false
}

// fenceKeeper writes the abort marker for g in the decision keeper, if one
// is configured, and reports whether the keeper holds a commit decision
// instead.
func (r *Recoverer) fenceKeeper(ctx context.Context, g drivers.GlobalID) (committed bool, err error) {
	if r.fence == nil {
		return false, nil
	}
	return r.fence.FenceAbort(ctx, g)
}

// keptRetention is how long past its deadline an abort marker is kept; like
// the log's abort records, the deadline alone fences after that.
const keptRetention = 10 * time.Minute

// forgetKept deletes from the keepers the commit decisions none of whose
// branches is still prepared, and abort markers past their retention.
func (r *Recoverer) forgetKept(ctx context.Context, rep *Report, still map[drivers.GlobalID]bool) {
	byKeeper := map[decisionlog.Keeper][]drivers.GlobalID{}
	for g, k := range rep.kept {
		if g.Node() != r.cfg.NodeID || still[g] || (r.cfg.Active != nil && r.cfg.Active(g)) {
			continue
		}
		if !k.Abort {
			if !r.coversAll(k.Decision) {
				continue
			}
		} else if rep.At.Before(g.Deadline().Add(r.cfg.Skew + keptRetention)) {
			continue
		}
		byKeeper[k.keeper] = append(byKeeper[k.keeper], g)
	}
	for k, gs := range byKeeper {
		if err := k.ForgetDecisions(ctx, gs); err != nil {
			r.logger.Warn("could not delete finished decisions from a decision table", "resource", k.Name(), "err", err)
			continue
		}
		for _, g := range gs {
			if !rep.kept[g].Abort {
				rep.Ended = append(rep.Ended, g.String())
			}
		}
	}
}

// stillPrepared returns the transactions with a branch the report leaves
// prepared: ours not finished by an action, and ours a resource listed as
// not ours to finish (prepared by another role, say): their decisions are
// still needed.
func stillPrepared(rep *Report) map[drivers.GlobalID]bool {
	still := map[drivers.GlobalID]bool{}
	for _, b := range rep.Branches {
		if b.XID.Global.IsZero() {
			continue
		}
		if !b.Ours || b.Result == "" || b.Err != nil || b.Result == ResultBusy {
			still[b.XID.Global] = true
		}
	}
	return still
}

// endFinished marks commit decisions ended when no resource lists any of
// their branches any more. It only does so when every resource was scanned:
// a resource that could not be scanned may still hold a branch.
func (r *Recoverer) endFinished(ctx context.Context, rep *Report) {
	if len(rep.ScanErrors) > 0 {
		return
	}
	r.forgetKept(ctx, rep, stillPrepared(rep))
	still := stillPrepared(rep)
	for _, d := range r.cfg.Log.Pending() {
		if d.GTRID.Node() != r.cfg.NodeID || still[d.GTRID] {
			continue
		}
		if r.cfg.Active != nil && r.cfg.Active(d.GTRID) {
			continue // its coordinator is finishing phase 2 itself
		}
		if !r.coversAll(d) {
			continue
		}
		if err := r.cfg.Log.End(d.GTRID); err == nil {
			rep.Ended = append(rep.Ended, d.GTRID.String())
		}
	}
}

// coversAll reports whether every participant of d is a configured resource,
// so "not listed anywhere" really means finished.
func (r *Recoverer) coversAll(d decisionlog.Decision) bool {
	for _, p := range d.Participants {
		if _, ok := r.res[p.Resource]; !ok {
			return false
		}
	}
	return true
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

// Errors Resolve returns.
var (
	// ErrContradictsLog: the requested outcome contradicts the decision log;
	// it is refused unless forced.
	ErrContradictsLog = errors.New("refused: the requested outcome contradicts the decision log")
	// ErrUnknownTransaction: neither the log nor any resource knows the
	// global transaction.
	ErrUnknownTransaction = errors.New("unknown global transaction: no log record and no prepared branch")
	// ErrOtherNode: the transaction belongs to another coordinator node.
	ErrOtherNode = errors.New("the transaction belongs to another coordinator node")
)

// Resolve settles one global transaction by hand: every prepared branch of
// g on every resource is committed (commit true) or rolled back.
//
// An outcome that contradicts the log (commit without a commit decision,
// rollback after one) is refused with ErrContradictsLog unless force is
// set; a forced outcome is recorded in the log as a heuristic action and
// the branches it acted on are reported with class Heuristic. A rollback
// that agrees with the log (no decision) first records an abort, which
// fences out any later commit decision.
func (r *Recoverer) Resolve(ctx context.Context, g drivers.GlobalID, commit, force bool, actor string) (*Report, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	start := time.Now()
	if actor == "" {
		actor = r.cfg.Actor
	}
	if g.Node() != r.cfg.NodeID {
		return nil, fmt.Errorf("%w: %s belongs to node %q, this is %q (use that node's --node-id and --log-dir)", ErrOtherNode, g, g.Node(), r.cfg.NodeID)
	}
	// Two scans Settle apart: act only on branches present in both, so no
	// owner session can still be closing (see Config.Settle).
	first := map[drivers.XID]bool{}
	firstRep := r.scan(ctx)
	for _, b := range firstRep.Branches {
		if b.Ours && b.XID.Global == g {
			first[b.XID] = true
		}
	}
	if len(first) > 0 && r.settle() > 0 {
		t := time.NewTimer(r.settle())
		select {
		case <-ctx.Done():
			t.Stop()
			return nil, ctx.Err()
		case <-t.C:
		}
	}
	rep := r.scan(ctx)
	defer r.report(rep, KindResolve, start)
	// A resource the first scan missed may hold a branch seen only once:
	// it is reported, waiting, and the transaction is not ended.
	for _, e := range firstRep.ScanErrors {
		if !slices.ContainsFunc(rep.ScanErrors, func(x ResourceError) bool { return x.Resource == e.Resource }) {
			rep.ScanErrors = append(rep.ScanErrors, e)
		}
	}
	var mine, waiting []Branch
	for _, b := range rep.Branches {
		if !b.Ours && b.XID.Global == g {
			waiting = append(waiting, b) // ours, but this resource may not finish it (another role)
			continue
		}
		if b.Ours && b.XID.Global == g {
			b.Age = rep.At.Sub(g.Begin())
			if !first[b.XID] {
				b.Class, b.Action, b.Reason = Live, ActionWait, "listed by one of the two scans only; run resolve again"
				waiting = append(waiting, b)
				continue
			}
			mine = append(mine, b)
		}
	}
	rep.Branches = mine
	entry, logged := r.cfg.Log.Lookup(g)
	if _, kok := rep.kept[g]; !logged && !kok && len(mine) == 0 {
		if len(rep.ScanErrors) > 0 {
			return rep, fmt.Errorf("%w (and %d resource(s) could not be scanned)", ErrUnknownTransaction, len(rep.ScanErrors))
		}
		return rep, ErrUnknownTransaction
	}
	k, kok := rep.kept[g]
	decided := logged && (entry.State == decisionlog.StateCommitted || entry.State == decisionlog.StateDone) || kok && !k.Abort
	if !commit && !decided {
		// Agrees with presumed abort, unless the keeper committed meanwhile:
		// fence it there first.
		committed, err := r.fenceKeeper(ctx, g)
		if err != nil {
			return rep, fmt.Errorf("fencing the transaction in the decision keeper: %w", err)
		}
		decided = committed
	}
	heuristic := false
	switch {
	case commit && !decided:
		if !force {
			return rep, fmt.Errorf("%w: %s has no commit decision, so another branch may already be rolled back; use --force to commit anyway (recorded as a heuristic outcome)", ErrContradictsLog, g)
		}
		heuristic = true
	case !commit && decided:
		if !force {
			return rep, fmt.Errorf("%w: %s has a durable commit decision, so other branches may already be committed; use --force to roll back anyway (recorded as a heuristic outcome)", ErrContradictsLog, g)
		}
		heuristic = true
	case !commit:
		// Agrees with presumed abort. Record it first: the fence.
		if err := r.cfg.Log.Abort(ctx, decisionlog.Action{GTRID: g, Op: "rollback", Reason: "operator resolve", Actor: actor, At: r.cfg.Now()}); err != nil {
			return rep, fmt.Errorf("recording the abort: %w", err)
		}
	}
	op, action := "commit", ActionCommit
	if !commit {
		op, action = "rollback", ActionRollback
	}
	if heuristic {
		if err := r.cfg.Log.Record(ctx, decisionlog.Action{
			GTRID: g, Op: "forced-" + op, Reason: "operator forced an outcome that contradicts the log", Actor: actor, At: r.cfg.Now(), Heuristic: true,
		}); err != nil {
			return rep, fmt.Errorf("recording the heuristic outcome: %w", err)
		}
		r.logger.Error("operator forced a heuristic outcome that contradicts the decision log; atomicity may be broken",
			"gtrid", g.String(), "op", op, "actor", actor, "branches", len(rep.Branches))
	}
	for i := range rep.Branches {
		b := &rep.Branches[i]
		b.LogState = entry.State
		b.Action = action
		b.Class, b.Reason = CommitPending, "operator resolve (agrees with the log)"
		if !commit {
			b.Class = AbortPending
		}
		if heuristic {
			b.Class, b.Reason = Heuristic, "operator forced an outcome that contradicts the log"
		}
		r.act(ctx, b)
	}
	if commit && !heuristic && len(waiting) == 0 {
		r.endOne(ctx, rep, g)
	}
	rep.Branches = append(rep.Branches, waiting...)
	return rep, nil
}

// endOne marks g's commit decision ended (or deletes it from its keeper)
// after Resolve committed its branches: only g, and only when every
// resource was listed in both scans and every branch of g found is
// finished. (A pass's endFinished looks at every decision; Resolve's
// report holds g's branches alone, so it must not.)
func (r *Recoverer) endOne(ctx context.Context, rep *Report, g drivers.GlobalID) {
	if len(rep.ScanErrors) > 0 || stillPrepared(rep)[g] || r.cfg.Active != nil && r.cfg.Active(g) {
		return
	}
	if k, ok := rep.kept[g]; ok && !k.Abort {
		if r.coversAll(k.Decision) && k.keeper.ForgetDecisions(ctx, []drivers.GlobalID{g}) == nil {
			rep.Ended = append(rep.Ended, g.String())
		}
	}
	for _, d := range r.cfg.Log.Pending() {
		if d.GTRID == g && r.coversAll(d) && r.cfg.Log.End(g) == nil && !slices.Contains(rep.Ended, g.String()) {
			rep.Ended = append(rep.Ended, g.String())
		}
	}
}
