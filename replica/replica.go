package replica

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/xabridge/xabridge/decisionlog/pgstore"
	"github.com/xabridge/xabridge/drivers"
	"github.com/xabridge/xabridge/recovery"
	"github.com/xabridge/xabridge/xa"
)

// DefaultFileRecoverEvery is the pass interval with a file log.
const DefaultFileRecoverEvery = 10 * time.Second

// Config configures a Replica.
type Config struct {
	// Coordinator configures the coordinator (NodeID, Resources, Timeout,
	// DecisionResource, ...). Its Log must be nil when Pool is set: the
	// shared store is the log.
	Coordinator xa.Config
	// Pool is the shared decision store's database; nil means a file log
	// (Coordinator.LogDir, or Coordinator.Log), with no leases and no
	// takeover. The pool stays the caller's.
	Pool *pgxpool.Pool
	// Store configures the shared store; Store.Node defaults to
	// Coordinator.NodeID and must equal it.
	Store pgstore.Options
	// RecoverEvery is the interval between passes (default: the lease TTL
	// divided by 2 with a store, DefaultFileRecoverEvery with a file log).
	RecoverEvery time.Duration
	// NoTakeover limits passes to this node's own recovery: peers' expired
	// leases are never claimed.
	NoTakeover bool
	// Settle is recovery.Config.Settle for the own recovery and for
	// takeovers (default 1s; negative: no wait, for tests on PostgreSQL
	// alone). It is the two-scan rule: keep it on MariaDB, whose sessions
	// of a dead process detach from their prepared branches late.
	Settle time.Duration
	// NodeLockWait is how long Open waits for the node's lock in a
	// participant to be released by another session (a server ending a
	// dead predecessor's session) before it refuses to start (default
	// recovery.DefaultNodeLockWait; negative: no wait).
	NodeLockWait time.Duration
	// Logger receives the replica's events (passes that acted, takeovers,
	// lease losses). Default: discard.
	Logger *slog.Logger
	// OnReport, if set, sees every recovery report: the own recovery's and
	// each takeover pass's (recovery.Config.OnReport). It must not block.
	OnReport func(*recovery.Report)
}

// Replica is a coordinator running as one replica: the xa.Coordinator, its
// in-process recovery, and on a shared store the takeover of dead peers.
type Replica struct {
	cfg    Config
	logger *slog.Logger
	coord  *xa.Coordinator
	store  *pgstore.Store // nil with a file log
	own    *recovery.Recoverer
	locks  *recovery.NodeLocks // the node's lock in the participants, held until Close
	every  time.Duration

	passMu sync.Mutex // serialises passes (the loop's and Pass's)
	// incarnations maps a peer node to the incarnation id last seen
	// holding its own lease (passes, under passMu): what a takeover ends
	// the sessions of, even after an earlier claimant became the holder
	// of record.
	incarnations map[string]string

	ctx    context.Context // cancelled by Close
	cancel context.CancelFunc
	wg     sync.WaitGroup

	closeOnce sync.Once
	closeErr  error

	passes, takeovers, takeoverFailures, reacquired, leaseLosses atomic.Int64
}

// Stats are counters of a Replica since it was opened.
type Stats struct {
	Passes           int64 // passes run (the loop's and Pass's)
	Takeovers        int64 // expired peers taken over to the end
	TakeoverFailures int64 // takeovers that claimed the node but left something (ErrUnfinished) or failed
	LeaseLosses      int64 // times the node's own lease was lost
	Reacquired       int64 // times it was taken again (under a new epoch)
}

// Stats returns the replica's counters.
func (r *Replica) Stats() Stats {
	return Stats{Passes: r.passes.Load(), Takeovers: r.takeovers.Load(), TakeoverFailures: r.takeoverFailures.Load(),
		LeaseLosses: r.leaseLosses.Load(), Reacquired: r.reacquired.Load()}
}

// PassReport is what one pass did.
type PassReport struct {
	// Own is the report of this node's own recovery pass.
	Own *recovery.Report
	// Takeovers lists the expired peers this pass took over (or tried to).
	Takeovers []Takeover
	// NodesErr is set when the store's node leases could not be read: no
	// takeover was tried.
	NodesErr error
	// Epoch is the node's lease epoch at the end of the pass, and LeaseErr
	// why the lease is lost, if it is (the node decides nothing until the
	// replica takes it again). Zero and nil with a file log.
	Epoch    int64
	LeaseErr error
}

// Takeover is one attempt at taking over an expired peer.
type Takeover struct {
	Node   string
	Report *recovery.Report // nil if the claim failed
	Err    error
}

// Open opens the store (taking the node's lease: an error matching
// pgstore.ErrNodeLeased if a live process holds it), takes the node's lock
// on every participant that can hold one (recovery.LockNode: an error
// matching drivers.ErrNodeInUse if another live process holds it, with a
// file log too), then opens the coordinator and starts the recovery loop.
// Close stops everything.
func Open(ctx context.Context, cfg Config) (*Replica, error) {
	logger := cfg.Logger
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	cc := cfg.Coordinator
	if err := drivers.ValidateNodeID(cc.NodeID); err != nil {
		return nil, fmt.Errorf("replica: %w", err)
	}
	if cfg.NodeLockWait == 0 {
		cfg.NodeLockWait = recovery.DefaultNodeLockWait
	}
	var st *pgstore.Store
	every := cfg.RecoverEvery
	if cfg.Pool != nil {
		if cc.Log != nil {
			return nil, errors.New("replica: Coordinator.Log must be nil with a shared store (Pool): the store is the log")
		}
		opts := cfg.Store
		if opts.Node == "" {
			opts.Node = cc.NodeID
		}
		if opts.Node != cc.NodeID {
			return nil, fmt.Errorf("replica: Store.Node %q is not Coordinator.NodeID %q", opts.Node, cc.NodeID)
		}
		if opts.LeaseTTL <= 0 {
			opts.LeaseTTL = pgstore.DefaultLeaseTTL
		}
		if every <= 0 {
			every = opts.LeaseTTL / 2
		}
		var err error
		st, err = pgstore.Open(ctx, cfg.Pool, opts)
		if err != nil {
			return nil, fmt.Errorf("replica: node %s: %w", cc.NodeID, err)
		}
		cc.Log = st
		cfg.Store = opts
	} else {
		if cfg.Store.Node != "" || cfg.Store.Schema != "" || cfg.Store.LeaseTTL != 0 {
			return nil, errors.New("replica: Store options given without a store (Pool)")
		}
		if every <= 0 {
			every = DefaultFileRecoverEvery
		}
	}
	// The node's lock in the participants, before anything else acts: a
	// second live process with this node id (a file log in another
	// directory, or a store the lease cannot see from there) is refused
	// here with nothing changed, since the fast path below would roll back
	// its in-flight branches.
	locks, err := recovery.LockNode(ctx, cc.NodeID, cc.Resources, cfg.NodeLockWait, logger.With("node", cc.NodeID))
	if err != nil {
		if st != nil {
			_ = st.Close()
		}
		return nil, fmt.Errorf("replica: %w", err)
	}
	coord, err := xa.New(ctx, cc)
	if err != nil {
		_ = locks.Close()
		if st != nil {
			_ = st.Close()
		}
		return nil, fmt.Errorf("replica: %w", err)
	}
	own, err := recovery.New(recovery.Config{
		NodeID:           cc.NodeID,
		Log:              coord.Log(),
		Resources:        cc.Resources,
		Active:           coord.Active,
		Logger:           logger,
		OnReport:         cfg.OnReport,
		Settle:           cfg.Settle,
		DecisionResource: cc.DecisionResource,
		// This process holds the node (its lease, or the file log's
		// lock): transactions of the node begun before this coordinator
		// started are a dead incarnation's, rolled back without waiting
		// for their fence.
		DeadBefore: coord.Started(),
		// ... and holds the node's lock on every participant that can
		// hold one: without it (a participant unreachable at start, a
		// lock lost since), passes fall back to the fence.
		DeadBeforeValid: locks.Held,
	})
	if err != nil {
		_ = locks.Close()
		_ = coord.Close()
		if st != nil {
			_ = st.Close()
		}
		return nil, fmt.Errorf("replica: %w", err)
	}
	if st != nil {
		// Before any branch begins: a peer taking the node over while this
		// process is paused ends exactly these sessions (TakeOver).
		if err := markSessions(cc.NodeID, cc.Resources, drivers.SessionMark(cc.NodeID, st.Holder().Incarnation)); err != nil {
			_ = locks.Close()
			_ = coord.Close()
			_ = st.Close()
			return nil, fmt.Errorf("replica: %w", err)
		}
	}
	r := &Replica{cfg: cfg, logger: logger.With("node", cc.NodeID), coord: coord, store: st, own: own, every: every, locks: locks,
		incarnations: map[string]string{}}
	r.ctx, r.cancel = context.WithCancel(context.Background())
	r.wg.Add(1)
	go r.loop()
	if st != nil {
		r.wg.Add(1)
		go r.leaseLoop()
	}
	return r, nil
}

// Coordinator returns the replica's coordinator.
func (r *Replica) Coordinator() *xa.Coordinator { return r.coord }

// Store returns the shared store, or nil with a file log.
func (r *Replica) Store() *pgstore.Store { return r.store }

// RecoverEvery returns the interval between passes.
func (r *Replica) RecoverEvery() time.Duration { return r.every }

// Close stops the loop, then closes the coordinator (unfinished phase 2 is
// left to recovery) and the store, releasing the node's lease so that a
// restart or a peer need not wait for it to expire.
func (r *Replica) Close() error {
	r.closeOnce.Do(func() {
		r.cancel()
		r.wg.Wait()
		err := r.coord.Close()
		err = errors.Join(err, r.locks.Close())
		if r.store != nil {
			// The resources may outlive this incarnation (another Open in
			// this process): their sessions stop carrying its mark.
			err = errors.Join(err, unmarkSessions(r.cfg.Coordinator.NodeID, r.cfg.Coordinator.Resources))
			err = errors.Join(err, r.store.Close())
		}
		r.closeErr = err
	})
	return r.closeErr
}

// loop runs a pass at once, then every RecoverEvery, until Close. The
// first one settles (recovery.PassSettled): a previous incarnation's
// branches go at start-up, not a pass later.
func (r *Replica) loop() {
	defer r.wg.Done()
	t := time.NewTimer(0)
	defer t.Stop()
	for first := true; ; first = false {
		select {
		case <-r.ctx.Done():
			return
		case <-t.C:
		}
		rep, err := r.pass(r.ctx, first)
		if err != nil && r.ctx.Err() == nil {
			r.logger.Warn("recovery pass", "err", err)
		}
		r.logPass(rep)
		t.Reset(r.every)
	}
}

// logPass logs what a pass did, when it did something.
func (r *Replica) logPass(rep PassReport) {
	for _, tk := range rep.Takeovers {
		switch {
		case tk.Err != nil:
			r.logger.Warn("takeover of an expired node did not finish", "peer", tk.Node, "err", tk.Err)
		default:
			r.logger.Info("took over an expired node", "peer", tk.Node, "branches", acted(tk.Report), "ended", len(tk.Report.Ended))
		}
	}
}

// acted counts the branches a report acted on successfully.
func acted(rep *recovery.Report) int {
	n := 0
	if rep == nil {
		return 0
	}
	for _, b := range rep.Branches {
		if b.Result == recovery.ResultCommitted || b.Result == recovery.ResultRolledBack || b.Result == recovery.ResultAlreadyFinished {
			n++
		}
	}
	return n
}

// Pass runs one pass now: this node's own recovery, then, on a shared
// store and unless NoTakeover, the takeover of every expired peer that
// may have work left. It returns an error only when the own pass could not
// scan every resource or the store's leases could not be read; takeovers'
// failures are in the report (another replica may win a claim: that is
// not a failure and not reported).
func (r *Replica) Pass(ctx context.Context) (PassReport, error) { return r.pass(ctx, false) }

// pass is Pass; settled makes the own recovery wait for the two-scan rule
// and pass again when a branch waits only for it.
func (r *Replica) pass(ctx context.Context, settled bool) (PassReport, error) {
	r.passMu.Lock()
	defer r.passMu.Unlock()
	var rep PassReport
	if r.ctx.Err() != nil {
		return rep, ErrClosed
	}
	if !r.locks.Held() {
		// Lost or never taken (a participant was unreachable): take it
		// again; until then the pass uses the fence, not DeadBefore.
		if err := r.locks.Retake(ctx); errors.Is(err, drivers.ErrNodeInUse) {
			r.logger.Error("node lock held by another process: restart fast path off", "err", err)
		} else if err == nil {
			r.logger.Info("node lock held on every participant: restart fast path on")
		}
	}
	if settled {
		reps := r.own.PassSettled(ctx)
		rep.Own = reps[len(reps)-1]
	} else {
		rep.Own = r.own.Pass(ctx, false)
	}
	var err error
	if len(rep.Own.ScanErrors) > 0 {
		err = fmt.Errorf("replica: own recovery could not scan %d resource(s): %s: %w",
			len(rep.Own.ScanErrors), rep.Own.ScanErrors[0].Resource, rep.Own.ScanErrors[0].Err)
	}
	if r.store != nil && !r.cfg.NoTakeover {
		rep.Takeovers, rep.NodesErr = r.takeOverPeers(ctx, rep.Own)
		if rep.NodesErr != nil {
			err = errors.Join(err, rep.NodesErr)
		}
	}
	if r.store != nil {
		rep.Epoch, rep.LeaseErr = r.store.Epoch(), r.store.LeaseErr()
	}
	r.passes.Add(1)
	return rep, err
}

// takeOverPeers takes over every expired peer that may have work left.
func (r *Replica) takeOverPeers(ctx context.Context, own *recovery.Report) ([]Takeover, error) {
	nodes, err := r.store.Nodes(ctx)
	if err != nil {
		return nil, fmt.Errorf("replica: reading node leases: %w", err)
	}
	// Nodes whose branches the own pass saw prepared (it lists every
	// resource, and reports other nodes' branches as unknown-owner).
	seen := map[string]bool{}
	for _, b := range own.Branches {
		if b.Class == recovery.UnknownOwner {
			seen[b.XID.Global.Node()] = true
		}
	}
	for _, n := range nodes {
		if n.Holder.Node == n.Node && n.Node != r.store.Node() {
			r.incarnations[n.Node] = n.Holder.Incarnation
		}
	}
	var out []Takeover
	for _, n := range nodes {
		if n.Node == r.store.Node() || n.State != pgstore.NodeExpired {
			continue
		}
		if ctx.Err() != nil {
			break
		}
		// A node that died holding its own lease is taken over once. One a
		// claimant already released, or one its own process released
		// cleanly (a stop, not a lapse: NodeInfo.Released), only when
		// something of it is left: branches prepared (this pass's scan of
		// every resource saw them; a resource it could not scan, a
		// takeover could not act on either) or decisions not ended. So
		// dead nodes do not cost a claim and a scan every pass forever,
		// and a replica stopped cleanly is not claimed just as it restarts
		// (it would have to wait for the claim to end).
		if n.GivenBack() && !seen[n.Node] {
			pending, err := r.store.PendingContext(ctx, n.Node)
			if err == nil && len(pending) == 0 {
				continue
			}
		}
		rep, err := takeOver(ctx, r.store, n.Node, r.takeoverConfig(), []string{r.incarnations[n.Node]})
		if errors.Is(err, pgstore.ErrNodeLeased) {
			continue // another replica won the claim, or the node came back
		}
		if err == nil {
			r.takeovers.Add(1)
		} else {
			r.takeoverFailures.Add(1)
		}
		out = append(out, Takeover{Node: n.Node, Report: rep, Err: err})
	}
	return out, nil
}

// takeoverConfig is the recovery configuration TakeOver completes for a
// peer.
func (r *Replica) takeoverConfig() recovery.Config {
	cc := r.cfg.Coordinator
	return recovery.Config{
		Resources:        cc.Resources,
		Logger:           r.logger,
		OnReport:         r.cfg.OnReport,
		Settle:           r.cfg.Settle,
		DecisionResource: cc.DecisionResource,
	}
}

// leaseLoop watches the store's own lease; when it is lost it calls
// Reacquire with backoff until it succeeds (only after the lease expired by
// the database's clock, so a peer's takeover may come first) or Close.
func (r *Replica) leaseLoop() {
	defer r.wg.Done()
	for {
		select {
		case <-r.ctx.Done():
			return
		case <-r.store.Lost():
		}
		r.leaseLosses.Add(1)
		r.logger.Error("node lease lost: no decision can be written until it is taken again", "err", r.store.LeaseErr())
		backoff := 50 * time.Millisecond
		other := "" // the incarnation of another process holding the node, once logged
		maxBackoff := max(r.cfg.Store.LeaseTTL/4, 100*time.Millisecond)
		for {
			epoch, err := r.store.Reacquire(r.ctx)
			if err == nil {
				r.logger.Info("node lease taken again", "epoch", epoch)
				r.reacquired.Add(1)
				break
			}
			if r.ctx.Err() != nil {
				return
			}
			var le *pgstore.LeasedError
			switch {
			case errors.As(err, &le) && le.Holder.Node == r.store.Node() && le.Holder.Incarnation != r.store.Holder().Incarnation:
				if le.Holder.Incarnation == other {
					break // said once
				}
				other = le.Holder.Incarnation
				// Not a claimant: a process of its own runs as this node
				// now. This one stays without a lease (deciding nothing)
				// until it is stopped or that one goes.
				r.logger.Error("another process holds this node's lease: this one decides nothing; stop one of them", "holder", le.Holder.String())
			case !errors.Is(err, pgstore.ErrNodeLeased):
				r.logger.Warn("taking the node lease again failed", "err", err)
			}
			wait := backoff
			if errors.As(err, &le) && le.ExpiresIn > 0 && le.ExpiresIn < wait {
				wait = le.ExpiresIn + time.Millisecond
			}
			t := time.NewTimer(wait)
			select {
			case <-r.ctx.Done():
				t.Stop()
				return
			case <-t.C:
			}
			backoff = min(2*backoff, maxBackoff)
		}
	}
}

// ErrClosed: Pass on a closed Replica.
var ErrClosed = errors.New("replica: closed")

// ErrUnfinished: a takeover released its claim with branches of the node
// still prepared or decisions not ended (a resource could not be reached,
// a branch was busy); the node stays expired and is taken over again.
var ErrUnfinished = errors.New("replica: takeover unfinished: the node's transactions are not all settled")

// DefaultTakeoverPasses bounds the recovery passes one TakeOver runs
// before it gives the claim back.
const DefaultTakeoverPasses = 5

// TakeOver claims one expired node (epoch + 1), ends the sessions its
// dead incarnation may still hold open on resources that mark them
// (drivers.SessionEnder: MariaDB finishes a prepared branch from another
// session only once its own is gone, and a paused process keeps its
// sessions), drives its commit decisions to completion, rolls back its
// undecided branches (the abort recorded first, so that a late decision of
// the old holder is refused), then releases the claim. A live node is
// refused (an error matching pgstore.ErrNodeLeased) and nothing is
// touched.
//
// cfg gives the resources (and DecisionResource in keeper mode, whose
// orphans are fenced in the keeper); NodeID, Log, Active and MinAge are
// set here: the node's log under the claim, no active transaction, and no
// fence to wait for (the node is dead, and its late decisions are refused
// by the epoch and by the abort rows). Settle, the two-scan rule, is kept:
// TakeOver runs passes, Settle apart, until nothing of the node is left or
// DefaultTakeoverPasses ran (then ErrUnfinished). It returns the last
// pass's report, with the branches earlier passes finished.
func TakeOver(ctx context.Context, st *pgstore.Store, node string, cfg recovery.Config) (*recovery.Report, error) {
	return takeOver(ctx, st, node, cfg, nil)
}

// takeOver is TakeOver; it also ends the sessions of the node's
// incarnations given (see endSessions), with the one its lease row names.
func takeOver(ctx context.Context, st *pgstore.Store, node string, cfg recovery.Config, incarnations []string) (*recovery.Report, error) {
	if st == nil {
		return nil, errors.New("replica: takeover: no store")
	}
	// The holder the claim replaces, read before it (the claim overwrites
	// it); if a claimant holds it of record, the dead incarnation is known
	// only from incarnations.
	if before, err := st.NodeInfo(ctx, node); err == nil && before.Holder.Node == node {
		incarnations = append(incarnations, before.Holder.Incarnation)
	}
	epoch, err := st.Claim(ctx, node)
	if err != nil {
		return nil, fmt.Errorf("replica: takeover of node %s: %w", node, err)
	}
	defer func() {
		rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
		defer cancel()
		_ = st.Release(rctx, node) // if it fails, the claim expires by itself
	}()
	nl, err := st.ForNode(node)
	if err != nil {
		return nil, fmt.Errorf("replica: takeover of node %s: %w", node, err)
	}
	zero := time.Duration(0)
	cfg.NodeID, cfg.Log, cfg.Active, cfg.MinAge = node, nl, nil, &zero
	if cfg.Actor == "" {
		cfg.Actor = "takeover@" + st.Node()
	}
	if cfg.Logger != nil {
		cfg.Logger = cfg.Logger.With("takeover", node, "epoch", epoch)
	}
	rec, err := recovery.New(cfg)
	if err != nil {
		return nil, fmt.Errorf("replica: takeover of node %s: %w", node, err)
	}
	// Before the first scan: the two-scan rule (Settle) then runs from a
	// state in which the dead incarnation holds no session.
	logger := cfg.Logger
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	endSessions(ctx, st, node, cfg.Resources, incarnations, logger)
	settle := cfg.Settle
	if settle == 0 {
		settle = time.Second
	}
	settle = max(settle, 20*time.Millisecond)
	var done []recovery.Branch
	var ended []string
	for pass := 1; ; pass++ {
		rep := rec.Pass(ctx, false)
		ended = append(ended, rep.Ended...)
		left, lerr := leftOf(ctx, st, node, rep)
		if lerr == nil && left == 0 {
			return merge(rep, done, ended), nil
		}
		if pass >= DefaultTakeoverPasses || ctx.Err() != nil {
			why := fmt.Sprintf("%d branch(es) or decision(s) left after %d passes", left, pass)
			if lerr != nil {
				why = lerr.Error()
			}
			return merge(rep, done, ended), fmt.Errorf("replica: takeover of node %s (epoch %d): %s: %w", node, epoch, why, ErrUnfinished)
		}
		for _, b := range rep.Branches {
			if b.Err == nil && (b.Result == recovery.ResultCommitted || b.Result == recovery.ResultRolledBack || b.Result == recovery.ResultAlreadyFinished) {
				done = append(done, b)
			}
		}
		t := time.NewTimer(settle)
		select {
		case <-ctx.Done():
			t.Stop()
		case <-t.C:
		}
	}
}

// leftOf counts what of node a takeover pass left: its branches still
// prepared, scan errors (what they hide is unknown), and commit decisions
// not ended.
func leftOf(ctx context.Context, st *pgstore.Store, node string, rep *recovery.Report) (int, error) {
	left := rep.Remaining() + len(rep.ScanErrors)
	pending, err := st.PendingContext(ctx, node)
	if err != nil {
		return left, fmt.Errorf("reading the node's pending decisions: %w", err)
	}
	return left + len(pending), nil
}

// merge returns last with the branches earlier passes finished added in
// front, and every decision ended.
func merge(last *recovery.Report, done []recovery.Branch, ended []string) *recovery.Report {
	if len(done) > 0 {
		last.Branches = append(done, last.Branches...)
	}
	last.Ended = ended
	return last
}
