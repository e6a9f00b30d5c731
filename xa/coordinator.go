// Package xa is the xabridge protocol core: the coordinator that runs one
// global transaction across several databases with two-phase commit, the
// durable decision log, and the outcome classes its errors carry.
//
// It contains no SQL; databases take part through the drivers contract
// (see the postgres and mysql packages).
//
// Optimisations, all keeping the protocol's guarantees: a single branch
// commits in one phase and read-only branches leave phase 2; concurrent
// decisions share one fsync of the FileLog (FileLogOptions.CommitDelay widens
// the window); with Config.DecisionResource the commit decision is a row
// committed in one participant's own local transaction (that participant
// never prepares and the log is not written); Config.AsyncPhase2 answers as
// soon as the decision is durable.
package xa

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

// Config configures a Coordinator.
type Config struct {
	// NodeID names this coordinator in every global id it creates: 1 to 24
	// characters of [a-z0-9-]. It must be stable across restarts and
	// unique among coordinators that share databases; recovery only ever
	// acts on its own node's transactions.
	NodeID string

	// Log is the decision log. If nil, a FileLog is opened in LogDir and
	// closed by Close.
	Log decisionlog.Log
	// LogDir is where the default file log lives when Log is nil.
	LogDir string

	// Resources are all the databases transactions may enlist. They must be
	// registered up front so that commit decisions can be finished after a
	// restart; names must be unique.
	Resources []drivers.Resource

	// Timeout bounds a global transaction from begin to commit decision
	// (default 30s). It is also the fence: after it, no commit decision can
	// be written, so recovery may presume the transaction aborted.
	Timeout time.Duration

	// Phase2Timeout is how long Commit waits for phase 2 before returning
	// ErrCommitPending and finishing in the background (default 10s).
	Phase2Timeout time.Duration

	// ResumeDelay is how long New waits before it resumes phase 2 of the
	// commit decisions it finds (default 1s; negative: no wait). Right
	// after a crash the dead process's MariaDB sessions may still be
	// detaching from their prepared branches, and a commit by XID in that
	// moment can answer OK yet commit nothing; recovery waits the same way
	// (recovery.Config.Settle).
	ResumeDelay time.Duration

	// AsyncPhase2 makes Commit return nil as soon as the commit decision is
	// durable; phase 2 finishes in the background (and through recovery
	// after a crash). The transaction is committed, but other readers may
	// not see its writes until phase 2 reaches each database, and its locks
	// are held until then: a next transaction on the same rows waits for
	// them.
	AsyncPhase2 bool

	// DecisionResource, if set, names one of Resources whose adapter
	// implements decisionlog.Keeper (postgres.Resource does, and
	// mysql.Resource on MariaDB, whose keeper branch is a plain local
	// transaction: decisionlog.KeptBeginner). A
	// transaction that enlists it keeps its commit decision there instead
	// of in Log: its other branches prepare, then the keeper's branch
	// inserts the decision row into its own transaction and commits in one
	// phase. That local commit is the decision: the keeper never prepares
	// and no log fsync is needed; the coordinator deletes finished rows in
	// batches, in the background. Configure recovery with the same resource
	// (recovery.Config.DecisionResource) so that it fences orphans there
	// before presuming them aborted. Transactions that do not enlist it use
	// Log as usual.
	DecisionResource string

	// RollbackTimeout bounds how long an abort waits for branches to roll
	// back before leaving the rest to recovery (default 5s).
	RollbackTimeout time.Duration

	// Logger receives one event per state change worth knowing (decision
	// write failures, in-doubt branches, background phase 2). Default: a
	// discarding logger.
	Logger *slog.Logger

	// Now is the clock (default time.Now). Tests replace it.
	Now func() time.Time

	// Hook, if set, is called at each protocol step (see Step), on the
	// goroutine that reached it: several at once for one transaction, since
	// branches prepare and commit in parallel. It is meant for metrics,
	// tracing and, in tests, fault injection; it must be safe for
	// concurrent use and must not block. Hooks combines several. When it is
	// nil the coordinator does not even read the clock for it.
	Hook func(Step, StepInfo)
}

// Step names a point in the protocol, for Config.Hook.
type Step string

// Protocol steps reported to Config.Hook. Per-branch steps set
// StepInfo.Resource and Branch; the others set Branch to -1. Steps that end
// a phase set StepInfo.Elapsed to the phase's duration.
const (
	StepBegin           Step = "begin"            // global id allocated (Context set)
	StepEnlisted        Step = "enlisted"         // a branch began on a resource
	StepWorkDone        Step = "work-done"        // Commit was called: the work is over (Elapsed: since begin)
	StepPreparing       Step = "preparing"        // one branch's prepare starts
	StepPrepared        Step = "prepared"         // one branch prepared
	StepPrepareFailed   Step = "prepare-failed"   // one branch's prepare failed (Err set); the transaction aborts
	StepAllPrepared     Step = "all-prepared"     // every branch voted (Elapsed: phase 1)
	StepDeciding        Step = "deciding"         // the commit decision is being made durable
	StepDecided         Step = "decided"          // commit decision is durable (Elapsed: the decision write)
	StepCommitting      Step = "committing"       // one branch's commit starts (phase 2, or one phase)
	StepCommitted       Step = "committed"        // one branch committed
	StepCommitFailed    Step = "commit-failed"    // a commit attempt on one branch failed (Err set); phase 2 retries it in the background unless the coordinator is closing
	StepAllCommitted    Step = "all-committed"    // phase 2 finished, before the end record (Elapsed: phase 2)
	StepEnded           Step = "ended"            // end record queued
	StepRolledBack      Step = "rolled-back"      // one branch rolled back
	StepOnePhaseCommit  Step = "one-phase-commit" // single-branch commit done (Elapsed: the commit)
	StepPhase2Handoff   Step = "phase2-handoff"   // Commit returned before phase 2 finished
	StepDecisionRefused Step = "decision-refused" // the log fenced the decision out
	StepFinished        Step = "finished"         // Commit or Rollback returned: Outcome, Err, Branches, Elapsed (the whole transaction) set
)

// StepInfo describes a protocol step for Config.Hook.
type StepInfo struct {
	GTRID drivers.GlobalID
	// Label is the transaction's label ("" for none), set from StepEnlisted
	// on (a label is set before the first branch) and on StepFinished.
	Label    string
	Resource string // for per-branch steps
	Branch   int    // branch number, -1 when not per-branch
	Err      error  // for steps that report a failure; for StepFinished, what the caller got
	// Elapsed is how long the phase a step ends took (see Step), measured
	// on the monotonic clock.
	Elapsed time.Duration
	// Outcome is, for StepFinished, the outcome the caller was given.
	Outcome Outcome
	// Branches is, for StepFinished, how many branches were enlisted.
	Branches int
	// Context is, for StepBegin, the context Begin was called with (a
	// tracer finds the caller's span in it).
	Context context.Context
}

// Hooks returns a Config.Hook that calls each non-nil hook in turn, or nil
// when there is none (so an unset hook stays free).
func Hooks(hooks ...func(Step, StepInfo)) func(Step, StepInfo) {
	var hs []func(Step, StepInfo)
	for _, h := range hooks {
		if h != nil {
			hs = append(hs, h)
		}
	}
	switch len(hs) {
	case 0:
		return nil
	case 1:
		return hs[0]
	}
	return func(s Step, info StepInfo) {
		for _, h := range hs {
			h(s, info)
		}
	}
}

// Coordinator runs global transactions. It is safe for concurrent use;
// one Coordinator (one node id, one decision log) per process.
type Coordinator struct {
	cfg       Config
	log       decisionlog.Log
	ownsLog   bool
	ids       *idGen
	logger    *slog.Logger
	resources map[string]drivers.Resource
	keeper    decisionlog.Keeper // Config.DecisionResource, or nil
	forget    *forgetter         // batched deletes of finished kept decisions

	// The two ways a commit decision is made durable (decide.go).
	logDecider    decider
	keeperDecider decider // nil without a keeper

	// bg owns every goroutine that outlives a call: background phase 2.
	bgCtx    context.Context
	bgCancel context.CancelFunc
	bgWG     sync.WaitGroup

	mu sync.Mutex
	// active counts, per global transaction begun and not finished (phase 2
	// included), its holders: the caller's Commit or Rollback, and phase 2
	// in the background.
	active map[drivers.GlobalID]int
	closed bool

	closeOnce sync.Once
	closeErr  error
}

// New validates cfg, opens the decision log if needed, and starts finishing
// every commit decision the log holds whose phase 2 did not end (a previous
// process crashed or gave up). That work runs in the background until it
// succeeds or Close is called.
func New(ctx context.Context, cfg Config) (*Coordinator, error) {
	if err := drivers.ValidateNodeID(cfg.NodeID); err != nil {
		return nil, fmt.Errorf("xa: config: %w", err)
	}
	if cfg.Timeout <= 0 {
		cfg.Timeout = 30 * time.Second
	}
	if cfg.ResumeDelay == 0 {
		cfg.ResumeDelay = time.Second
	}
	if cfg.Phase2Timeout <= 0 {
		cfg.Phase2Timeout = 10 * time.Second
	}
	if cfg.RollbackTimeout <= 0 {
		cfg.RollbackTimeout = 5 * time.Second
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	logger := cfg.Logger
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	res := make(map[string]drivers.Resource, len(cfg.Resources))
	for _, r := range cfg.Resources {
		if r == nil {
			return nil, errors.New("xa: config: nil resource")
		}
		if r.Name() == "" {
			return nil, errors.New("xa: config: a resource has an empty name")
		}
		if _, dup := res[r.Name()]; dup {
			return nil, fmt.Errorf("xa: config: two resources are named %q", r.Name())
		}
		res[r.Name()] = r
	}
	c := &Coordinator{
		cfg:       cfg,
		log:       cfg.Log,
		ids:       newIDGen(cfg.NodeID, cfg.Now()),
		logger:    logger.With("node", cfg.NodeID),
		resources: res,
		active:    map[drivers.GlobalID]int{},
	}
	if c.log == nil {
		if cfg.LogDir == "" {
			return nil, errors.New("xa: config: neither Log nor LogDir is set")
		}
		fl, err := decisionlog.OpenFileLog(cfg.LogDir, decisionlog.FileLogOptions{Now: cfg.Now, Node: cfg.NodeID})
		if err != nil {
			return nil, fmt.Errorf("xa: %w", err)
		}
		c.log, c.ownsLog = fl, true
	}
	if cfg.DecisionResource != "" {
		r, ok := res[cfg.DecisionResource]
		if !ok {
			c.closeOwnedLog()
			return nil, fmt.Errorf("xa: config: DecisionResource %q is not one of the resources", cfg.DecisionResource)
		}
		k, ok := r.(decisionlog.Keeper)
		if !ok {
			c.closeOwnedLog()
			return nil, fmt.Errorf("xa: config: DecisionResource %q (%T) cannot keep decisions (it does not implement decisionlog.Keeper)", cfg.DecisionResource, r)
		}
		c.keeper = k
	}
	c.bgCtx, c.bgCancel = context.WithCancel(context.WithoutCancel(ctx))
	c.logDecider = logDecider{log: c.log}
	for _, r := range cfg.Resources {
		participant(r, 0) // start reading each identity now, before the first decision needs it
	}
	for _, d := range c.log.Pending() {
		if d.GTRID.Node() != cfg.NodeID {
			continue // another node's log mounted here; its own coordinator or recovery finishes it
		}
		c.resume(d, c.logDecider)
	}
	if c.keeper != nil {
		c.forget = newForgetter(c)
		c.keeperDecider = keeperDecider{k: c.keeper, forget: c.forget}
		c.resumeKept(ctx)
	}
	return c, nil
}

func (c *Coordinator) closeOwnedLog() {
	if c.ownsLog {
		_ = c.log.Close()
	}
}

// InFlight returns how many global transactions are running in the
// coordinator now, background phase 2 included.
func (c *Coordinator) InFlight() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.active)
}

// NodeID returns the coordinator's node id.
func (c *Coordinator) NodeID() string { return c.cfg.NodeID }

// Started returns when the coordinator started (by Config.Now, to the
// millisecond): every global id it creates begins at or after it, even if
// the wall clock steps back.
//
// So a global id of this node that begins before Started is not this
// coordinator's. While this process is the only live one with its node id
// (it holds the file log's lock, or the node's lease in a shared store),
// such a transaction belongs to an earlier incarnation that is dead, and no
// one can still decide it: pass Started as recovery.Config.DeadBefore to a
// recovery pass at start-up, and that incarnation's undecided branches are
// rolled back at once instead of after their fence (Timeout). An earlier
// incarnation's id that begins at or after Started (the clock stepped back
// across the restart) still waits for its fence.
func (c *Coordinator) Started() time.Time { return c.ids.started() }

// Log returns the decision log.
func (c *Coordinator) Log() decisionlog.Log { return c.log }

// Resource returns the registered resource with that name.
func (c *Coordinator) Resource(name string) (drivers.Resource, bool) {
	r, ok := c.resources[name]
	return r, ok
}

// Resources returns the registered resources.
func (c *Coordinator) Resources() []drivers.Resource {
	return append([]drivers.Resource(nil), c.cfg.Resources...)
}

// Active reports whether the global transaction is running in this
// coordinator now (begun and not finished, phase 2 included). Recovery
// leaves active transactions alone.
func (c *Coordinator) Active(g drivers.GlobalID) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	_, ok := c.active[g]
	return ok
}

// Close stops background phase 2 (unfinished branches are detached and left
// to recovery; their decisions stay in the log), waits for it, and closes
// the log if the coordinator opened it.
func (c *Coordinator) Close() error {
	// Every call returns once the coordinator is closed, with the same
	// error: a second, concurrent Close waits for the first.
	c.closeOnce.Do(func() { c.closeErr = c.close() })
	return c.closeErr
}

func (c *Coordinator) close() error {
	c.mu.Lock()
	c.closed = true
	c.mu.Unlock()
	c.bgCancel()
	c.bgWG.Wait()
	if c.forget != nil {
		// After background phase 2 stopped, so that it queues nothing after
		// the last flush. A row queued later still (by a transaction
		// finishing phase 2 on its caller's goroutine) stays in the table
		// until recovery or the next start-up deletes it.
		c.forget.stop()
	}
	if c.ownsLog {
		return c.log.Close()
	}
	return nil
}

// Run runs fn inside a new global transaction and commits it: all branches
// commit or none do. fn enlists resources through tx (usually with an
// adapter's Enlist, e.g. postgres.Resource.Enlist) and does its work on
// them; the ctx it receives ends at the transaction's deadline.
//
// If fn returns an error or panics, or ctx ends, every branch is rolled back
// and Run returns an error matching ErrAborted (and fn's error). Otherwise
// Run commits and returns nil, or an error matching ErrAborted,
// ErrOutcomeUnknown or ErrCommitPending; see OutcomeOf.
// RunRetry runs it again after an abort a new attempt may cure (a
// deadlock, say).
func (c *Coordinator) Run(ctx context.Context, fn func(ctx context.Context, tx *Tx) error) (err error) {
	tx, err := c.Begin(ctx)
	if err != nil {
		return err
	}
	workCtx, cancel := tx.untilDeadline(ctx)
	defer cancel()
	defer func() {
		if p := recover(); p != nil {
			_ = tx.rollback(context.WithoutCancel(ctx), "panic", tx.errorf(Aborted, OpPanic, "", fmt.Errorf("callback panicked: %v", p)))
			panic(p)
		}
	}()
	if ferr := fn(workCtx, tx); ferr != nil {
		e := tx.errorf(Aborted, OpWork, "", ferr)
		_ = tx.rollback(ctx, "work", e)
		return e
	}
	if cerr := workCtx.Err(); cerr != nil {
		e := tx.errorf(Aborted, OpWork, "", context.Cause(workCtx))
		_ = tx.rollback(ctx, "work", e)
		return e
	}
	return tx.Commit(ctx)
}

// Begin starts a global transaction. The caller must end it with Commit or
// Rollback; Run does both for you.
func (c *Coordinator) Begin(ctx context.Context) (*Tx, error) {
	if err := ctx.Err(); err != nil {
		return nil, &Error{Outcome: Aborted, Op: OpBegin, Err: err}
	}
	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		return nil, &Error{Outcome: Aborted, Op: OpBegin, Err: errors.New("coordinator is closed")}
	}
	g, err := c.ids.next(c.cfg.Now(), c.cfg.Timeout)
	if err != nil {
		c.mu.Unlock()
		return nil, &Error{Outcome: Aborted, Op: OpBegin, Err: fmt.Errorf("global id: %w", err)}
	}
	c.active[g]++
	c.mu.Unlock()
	tx := &Tx{c: c, gtrid: g, byRes: map[drivers.Resource]*txBranch{}, began: c.stamp()}
	c.hook(StepBegin, StepInfo{GTRID: g, Branch: -1, Context: ctx})
	return tx, nil
}

// track adds a holder of g: Active reports g until every holder untracks.
func (c *Coordinator) track(g drivers.GlobalID) {
	c.mu.Lock()
	c.active[g]++
	c.mu.Unlock()
}

// untrack removes a holder of g.
func (c *Coordinator) untrack(g drivers.GlobalID) {
	c.mu.Lock()
	if c.active[g] <= 1 {
		delete(c.active, g)
	} else {
		c.active[g]--
	}
	c.mu.Unlock()
}

func (c *Coordinator) hook(s Step, info StepInfo) {
	if h := c.cfg.Hook; h != nil {
		h(s, info)
	}
}

// stamp reads the monotonic clock for a phase duration, or returns the
// zero time when no hook would see it.
func (c *Coordinator) stamp() time.Time {
	if c.cfg.Hook == nil {
		return time.Time{}
	}
	return time.Now()
}

// since is the time elapsed since a stamp (0 for a zero stamp).
func since(t time.Time) time.Duration {
	if t.IsZero() {
		return 0
	}
	return time.Since(t)
}

// resume drives a commit decision found at start-up (in the log or in the
// decision keeper, as dec says) to completion by XID, in the background,
// with the same phase 2 as Commit's.
func (c *Coordinator) resume(d decisionlog.Decision, dec decider) {
	tx := &Tx{c: c, gtrid: d.GTRID, label: d.Label, finished: true}
	tx.handedOff.Store(true) // its caller is gone
	voters := make([]*txBranch, 0, len(d.Participants))
	for _, p := range d.Participants {
		r, ok := c.resources[p.Resource]
		if !ok {
			c.logger.Error("commit decision names a resource that is not configured; leaving it to recovery",
				"gtrid", d.GTRID.String(), "label", d.Label, "resource", p.Resource)
			continue
		}
		// No connection: phase 2 commits it by XID (closed: nothing to close).
		voters = append(voters, &txBranch{res: r, xid: d.XID(p), num: int(p.Branch), vote: drivers.VoteCommit, closed: true})
	}
	complete := len(voters) == len(d.Participants)
	c.track(d.GTRID)
	c.logger.Info("resuming phase 2 of a logged commit decision", "gtrid", d.GTRID.String(), "label", d.Label, "branches", len(d.Participants))
	c.goBackground(func() {
		defer c.untrack(d.GTRID)
		if c.cfg.ResumeDelay > 0 {
			t := time.NewTimer(c.cfg.ResumeDelay)
			select {
			case <-t.C:
			case <-c.bgCtx.Done():
				t.Stop()
				return // Close: recovery or the next start finishes it
			}
		}
		start := c.stamp()
		if !complete {
			// The decision does not end while a participant is missing.
			tx.commitBranches(c.bgCtx, voters, true)
			return
		}
		tx.finishPhase2(voters, dec, start)
	})
}

// goBackground runs f on a goroutine owned by the coordinator: Close cancels
// bgCtx and waits for it. After Close, f runs on the caller's goroutine with
// bgCtx already cancelled, so it gives up at once and leaves its work to
// recovery.
func (c *Coordinator) goBackground(f func()) {
	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		f()
		return
	}
	c.bgWG.Add(1)
	c.mu.Unlock()
	go func() {
		defer c.bgWG.Done()
		f()
	}()
}

// attemptTimeout bounds one phase 2 or rollback attempt.
const attemptTimeout = 15 * time.Second

// retry runs op until it succeeds or ctx ends, with exponential backoff
// from 10ms to 2s. Phase 2 is relentless: every error is retried, and
// errors that will not cure themselves are logged loudly.
func retry(ctx context.Context, op func(context.Context) error, logger *slog.Logger, attrs ...any) error {
	delay := 10 * time.Millisecond
	for attempt := 1; ; attempt++ {
		// A bound per attempt: a hung connection (a black-holed network)
		// must surface as an error so the next attempt can use a fresh one.
		actx, cancel := context.WithTimeout(ctx, attemptTimeout)
		err := op(actx)
		cancel()
		if err == nil {
			return nil
		}
		if cerr := ctx.Err(); cerr != nil {
			return errors.Join(cerr, err)
		}
		lvl := slog.LevelDebug
		switch {
		case errors.Is(err, drivers.ErrFailed), errors.Is(err, drivers.ErrUnsupported):
			lvl = slog.LevelError
		case attempt%10 == 0:
			lvl = slog.LevelWarn
		}
		logger.Log(ctx, lvl, "phase 2 retry", append(attrs, "attempt", attempt, "err", err)...)
		t := time.NewTimer(delay)
		select {
		case <-ctx.Done():
			t.Stop()
			return errors.Join(ctx.Err(), err)
		case <-t.C:
		}
		if delay < 2*time.Second {
			delay *= 2
		}
	}
}
