package pgstore

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/xabridge/xabridge/decisionlog"
	"github.com/xabridge/xabridge/drivers"
)

// Defaults of Options.
const (
	DefaultLeaseTTL = 15 * time.Second
	// DefaultClaimWait: how long Open waits at most for a peer taking the
	// node over to finish (Options.ClaimWait); a takeover runs at most
	// replica.DefaultTakeoverPasses passes a second or so apart.
	DefaultClaimWait    = 30 * time.Second
	DefaultMaxBatch     = 1000
	DefaultWriteTimeout = 10 * time.Second
	DefaultReadTimeout  = 10 * time.Second
	DefaultSweepEvery   = time.Minute
	// DefaultEndDelay: how long the writer holds a batch of only End
	// records for a decision to share its round trip (Options.EndDelay).
	// Short: under load the next decision comes within it, and an idle
	// moment still sees every end written (with 50 ms, a replica
	// committing without pause always showed its last decision pending
	// in the store, and the HA test waiting for none never saw one).
	DefaultEndDelay       = 5 * time.Millisecond
	DefaultEndedRetention = time.Minute
	// DefaultAbortRetention: how long past its deadline an abort row is
	// kept. The fence needs it only until the deadline (then the deadline,
	// by the same database clock, refuses the commit); the margin is for
	// operators reading the log.
	DefaultAbortRetention = 10 * time.Minute
	// DefaultActionRetention: how long an action with no decision row (a
	// recovery's rollback of a presumed-aborted branch, say) is kept.
	DefaultActionRetention = 24 * time.Hour
)

// Options configures Open.
type Options struct {
	// Node is this coordinator's node id (drivers.ValidateNodeID). The
	// store holds its lease while open.
	Node string

	// Schema is the PostgreSQL schema holding the store's tables, created
	// if missing; empty means the connection's search_path (usually
	// public). Letters a-z, digits and _ only.
	Schema string

	// LeaseTTL is how long a lease lives without renewal, by the
	// database's clock (default DefaultLeaseTTL). A dead node's
	// transactions can be taken over that long after its last renewal.
	LeaseTTL time.Duration

	// RenewEvery is how often the lease is renewed (default LeaseTTL/3).
	RenewEvery time.Duration

	// ClaimWait is how long Open waits while a claimant holds the node's
	// lease (a peer's process taking this node over, as replica.TakeOver
	// or xabridge recover --store do: it settles what the node left, then
	// releases the lease) for the claim to be released or to lapse, instead
	// of failing with ErrNodeLeased. A lease held by a process of this
	// node itself is refused at once. Default DefaultClaimWait, or twice
	// LeaseTTL if that is longer; negative: no wait.
	ClaimWait time.Duration

	// Margin is taken off the store's local estimate of its lease's life:
	// the store stops writing at (local start of the last successful
	// renewal) + LeaseTTL - Margin (default LeaseTTL/5). It covers clock
	// rate drift and a decision statement in flight; the database checks
	// the lease again in the statement anyway.
	Margin time.Duration

	// MaxBatch is the most requests written by one statement (default
	// DefaultMaxBatch).
	MaxBatch int

	// CommitDelay, if positive, is how long the writer waits after the
	// first request of a batch that a caller waits for (a commit decision,
	// an abort, an action) before sending the batch, so that more
	// decisions share its round trip and commit (as
	// decisionlog.FileLogOptions.CommitDelay, PostgreSQL's commit_delay).
	// It only waits when the previous batch held more than one such
	// request, a sign that decisions arrive concurrently, so a lone client
	// never pays it; a full batch or Close ends the wait early. It trades up
	// to that much latency for fewer round trips. The default, zero, never
	// waits: a batch is what was queued while the previous one was in
	// flight.
	CommitDelay time.Duration

	// EndDelay is how long the writer holds a batch holding only End
	// records (which nobody waits for) before sending it on its own, so
	// that the ends ride the next batch a caller waits for (a decision, an
	// abort, an action) instead of costing a round trip and a commit of
	// their own. The hold ends as soon as such a request is queued, a full
	// batch of ends is, or at Close or Release; until then the ends are
	// invisible to other processes (this store's Lookup and Pending show
	// them at once), and if the store dies they are lost, which End allows
	// (recovery commits the branches again). Keep it short: an end waits
	// for the next decision, so under decisions that never pause other
	// processes see a node's latest ones pending for as long as decisions
	// keep coming within EndDelay of each other. Zero means
	// DefaultEndDelay; negative, never hold: ends are written with
	// whatever is queued.
	EndDelay time.Duration

	// WriteTimeout bounds one batch statement; a batch that times out has
	// an unknown outcome and fail-stops the store (default
	// DefaultWriteTimeout).
	WriteTimeout time.Duration

	// ReadTimeout bounds Lookup and Pending, which take no context
	// (default DefaultReadTimeout).
	ReadTimeout time.Duration

	// SweepEvery is how often finished rows are deleted (default
	// DefaultSweepEvery; negative: never, call Sweep).
	SweepEvery time.Duration
	// EndedRetention: ended commit decisions are deleted this long after
	// their end by the database's clock (default DefaultEndedRetention).
	EndedRetention time.Duration
	// AbortRetention: abort rows are deleted this long after their
	// transaction's deadline (default DefaultAbortRetention).
	AbortRetention time.Duration
	// ActionRetention: actions of transactions without a decision row are
	// deleted this long after they were written (default
	// DefaultActionRetention). Heuristic actions are kept forever.
	ActionRetention time.Duration

	// Now stamps Decision.At and Action.At when they are zero (default
	// time.Now). It is never used for the fence or the lease: those use
	// the database's clock.
	Now func() time.Time

	// hooks lets tests inject faults.
	hooks *testHooks
}

// testHooks are test-only injection points.
type testHooks struct {
	// renew, if set, runs before each renewal; an error fails it.
	renew func() error
	// beforeBatch, if set, runs in the writer before a batch of n
	// requests is sent, waiters of which a caller waits for (not End).
	beforeBatch func(n, waiters int)
	// fenceNow, if set, is the clock of the fence (a commit's deadline)
	// instead of the database's: the conformance suite sets it. The lease
	// is still checked on the database's clock.
	fenceNow func() time.Time
	// failBatch, if set, runs before a batch is sent; an error fails the
	// batch as a write of unknown outcome (fail-stop) without sending it.
	failBatch func() error
	// claimWait, if set, runs each time Open waits for a claimant.
	claimWait func(*LeasedError)
}

// processStarted approximates the process start time for lease holders.
var processStarted = time.Now()

// Store is a decision log in PostgreSQL shared by several coordinators,
// each holding a lease on its node id. It implements decisionlog.Log for
// its own node; see the package documentation.
type Store struct {
	pool  *pgxpool.Pool
	names sqlNames
	opts  Options
	node  string
	me    Holder

	// Statements, expanded for the schema at Open.
	sqlBatch, sqlLookup, sqlPending, sqlSweep, sqlSweepActions    string
	sqlAcquire, sqlClaim, sqlRenew, sqlRelease, sqlNode, sqlNodes string

	ctx    context.Context // cancelled by Close: stops background work
	cancel context.CancelFunc

	// Leases held, by node: the own node and claimed ones.
	lmu    sync.Mutex
	leases map[string]*lease

	// Queue between callers and the writer goroutine.
	qmu    sync.Mutex
	qcond  sync.Cond
	queue  []*request
	closed bool
	failed error // fail-stop: set once, returned by every later write until Reacquire
	// failedEpoch is the own lease's epoch when the store failed: a
	// Reacquire that takes a later one clears the failure.
	failedEpoch int64
	writerDone  chan struct{}
	// CommitDelay and EndDelay: while the writer waits, the queue length
	// that ends the wait (0: not waiting), whether a queued request a
	// caller waits for ends it too (EndDelay), and the wake-up that ends
	// it early.
	delayNeed     int
	delayOnWaiter bool
	delayWake     chan struct{}
	// endFlush counts callers (Release) that need queued ends written now:
	// while positive the writer does not hold ends.
	endFlush int
	// lastWaiters: requests a caller waited for in the writer's last batch
	// (the writer's own; read and written only by it, or before it sees a
	// request).
	lastWaiters int

	// Coherence of End: gtrids known committed by this process and not
	// ended (End needs no read for them), and ends queued but not yet
	// written (Lookup and Pending show them ended at once).
	cmu      sync.Mutex
	known    map[string]struct{}
	ending   map[string]struct{}
	bgDone   sync.WaitGroup // renewer and sweeper
	closing  sync.Once
	closeErr error

	stats counters
}

var _ decisionlog.Log = (*Store)(nil)

type counters struct {
	batches, requests, commits, aborts, records, ends        atomic.Int64
	fenced, leaseRefused, endsDropped, refusedBatches        atomic.Int64
	renewals, renewFailures, reads, swept, localLeaseRefused atomic.Int64
	batchNanos                                               atomic.Int64
	batchSizes                                               [decisionlog.BatchSizeBuckets]atomic.Int64
}

// Stats are counters of a Store since it was opened.
type Stats struct {
	Batches int64 // write statements sent (one round trip and one commit each)
	// BatchTime is the time spent in them, from sending to the last answer.
	BatchTime time.Duration
	Requests  int64 // requests written by them (commits, aborts, records, ends)
	Commits   int64 // commit decisions answered nil (new or repeated)
	Aborts    int64 // aborts recorded
	Records   int64 // actions recorded
	Ends      int64 // end records written
	Fenced    int64 // commits refused with decisionlog.ErrFenced by the deadline or an abort row
	// LeaseRefused: requests the database refused because the lease check
	// failed; LocalLeaseRefused: requests refused before sending because the
	// local estimate said the lease may have expired.
	LeaseRefused, LocalLeaseRefused int64
	EndsDropped                     int64 // end records not written (lease lost, failure): harmless, phase 2 is redone
	RefusedBatches                  int64 // batches the database refused with an error (known outcome)
	Renewals, RenewFailures         int64
	Reads                           int64 // Lookup and Pending queries
	Swept                           int64 // rows deleted by Sweep
	Failed                          bool  // fail-stopped (unknown outcome of a write)
	// BatchSizes is the histogram of requests per batch, with the buckets
	// of decisionlog.FileLogStats.BatchSizes.
	BatchSizes [decisionlog.BatchSizeBuckets]int64
}

// Stats returns the store's counters.
func (s *Store) Stats() Stats {
	c := &s.stats
	st := Stats{
		Batches: c.batches.Load(), BatchTime: time.Duration(c.batchNanos.Load()), Requests: c.requests.Load(), Commits: c.commits.Load(),
		Aborts: c.aborts.Load(), Records: c.records.Load(), Ends: c.ends.Load(), Fenced: c.fenced.Load(),
		LeaseRefused: c.leaseRefused.Load(), LocalLeaseRefused: c.localLeaseRefused.Load(),
		EndsDropped: c.endsDropped.Load(), RefusedBatches: c.refusedBatches.Load(),
		Renewals: c.renewals.Load(), RenewFailures: c.renewFailures.Load(), Reads: c.reads.Load(),
		Swept: c.swept.Load(), Failed: s.failure() != nil,
	}
	for i := range st.BatchSizes {
		st.BatchSizes[i] = c.batchSizes[i].Load()
	}
	return st
}

// Open creates the store's tables if needed, acquires the lease on
// opts.Node and starts the writer, the lease renewer and the sweeper. It
// fails with an error matching ErrNodeLeased (a *LeasedError) while a live
// holder has the node. The pool stays the caller's: Close does not close
// it.
func Open(ctx context.Context, pool *pgxpool.Pool, opts Options) (*Store, error) {
	if pool == nil {
		return nil, errors.New("pgstore: nil pool")
	}
	if err := drivers.ValidateNodeID(opts.Node); err != nil {
		return nil, fmt.Errorf("pgstore: %w", err)
	}
	names, err := newSQLNames(opts.Schema)
	if err != nil {
		return nil, err
	}
	if opts.LeaseTTL <= 0 {
		opts.LeaseTTL = DefaultLeaseTTL
	}
	if opts.LeaseTTL < 100*time.Millisecond {
		return nil, fmt.Errorf("pgstore: lease TTL %s is too short", opts.LeaseTTL)
	}
	if opts.RenewEvery <= 0 {
		opts.RenewEvery = opts.LeaseTTL / 3
	}
	if opts.ClaimWait == 0 {
		opts.ClaimWait = max(DefaultClaimWait, 2*opts.LeaseTTL)
	}
	if opts.Margin <= 0 {
		opts.Margin = opts.LeaseTTL / 5
	}
	if opts.RenewEvery >= opts.LeaseTTL-opts.Margin {
		return nil, fmt.Errorf("pgstore: RenewEvery %s leaves no time to renew within LeaseTTL %s - Margin %s",
			opts.RenewEvery, opts.LeaseTTL, opts.Margin)
	}
	if opts.MaxBatch <= 0 {
		opts.MaxBatch = DefaultMaxBatch
	}
	if opts.EndDelay == 0 {
		opts.EndDelay = DefaultEndDelay
	}
	if opts.WriteTimeout <= 0 {
		opts.WriteTimeout = DefaultWriteTimeout
	}
	if opts.ReadTimeout <= 0 {
		opts.ReadTimeout = DefaultReadTimeout
	}
	if opts.SweepEvery == 0 {
		opts.SweepEvery = DefaultSweepEvery
	}
	if opts.EndedRetention <= 0 {
		opts.EndedRetention = DefaultEndedRetention
	}
	if opts.AbortRetention <= 0 {
		opts.AbortRetention = DefaultAbortRetention
	}
	if opts.ActionRetention <= 0 {
		opts.ActionRetention = DefaultActionRetention
	}
	if opts.Now == nil {
		opts.Now = time.Now
	}
	host, _ := os.Hostname()
	var inc [8]byte
	_, _ = rand.Read(inc[:]) // never fails (crypto/rand panics instead)
	s := &Store{
		pool:  pool,
		names: names,
		opts:  opts,
		node:  opts.Node,
		me: Holder{Node: opts.Node, Host: host, PID: os.Getpid(), Started: processStarted,
			Incarnation: hex.EncodeToString(inc[:])},
		leases:     map[string]*lease{},
		writerDone: make(chan struct{}),
		delayWake:  make(chan struct{}, 1),
		known:      map[string]struct{}{},
		ending:     map[string]struct{}{},
	}
	s.qcond.L = &s.qmu
	s.prepareSQL()
	if err := ensureSchema(ctx, pool, names); err != nil {
		return nil, err
	}
	l, err := s.acquireOwn(ctx)
	if err != nil {
		return nil, err
	}
	s.leases[s.node] = l
	s.ctx, s.cancel = context.WithCancel(context.Background())
	go s.run()
	s.bgDone.Add(1)
	go s.renewLoop()
	if opts.SweepEvery > 0 {
		s.bgDone.Add(1)
		go s.sweepLoop()
	}
	return s, nil
}

// Node returns the store's own node id.
func (s *Store) Node() string { return s.node }

// Holder returns how this store identifies itself as a lease holder.
func (s *Store) Holder() Holder { return s.me }

// Close writes what is queued (End records), stops the writer, the renewer
// and the sweeper, and releases the leases it holds (their expiry is set to
// the database's now, so a restart, or a peer, can take them at once).
// Later writes return decisionlog.ErrLogClosed; reads keep working while
// the pool is open. It returns the store's failure, if it failed.
func (s *Store) Close() error {
	s.closing.Do(func() {
		s.qmu.Lock()
		s.closed = true
		s.qcond.Broadcast()
		s.wakeDelay()
		s.qmu.Unlock()
		<-s.writerDone
		s.cancel()
		s.bgDone.Wait()
		var errs []error
		ctx, cancel := context.WithTimeout(context.Background(), s.opts.WriteTimeout)
		defer cancel()
		s.lmu.Lock()
		held := make([]*lease, 0, len(s.leases))
		for _, l := range s.leases {
			held = append(held, l)
		}
		s.lmu.Unlock()
		for _, l := range held {
			if err := s.release(ctx, l); err != nil {
				errs = append(errs, err)
			}
		}
		if err := s.failure(); err != nil {
			errs = append(errs, err)
		}
		s.closeErr = errors.Join(errs...)
	})
	return s.closeErr
}

func (s *Store) failure() error {
	s.qmu.Lock()
	defer s.qmu.Unlock()
	return s.failed
}

// failStop records the failure that stops the store's writes and returns it.
// epoch is the own lease's epoch the failed writes were sent under (0: the
// current one). A failure under an epoch older than the one the store now
// holds stops nothing: Reacquire took a new epoch since, which no late
// write of the old one can match. Otherwise the store stops writing and
// gives up its own lease (marks it lost, so it is no longer renewed and
// expires by the database's clock): Reacquire, which succeeds only after
// that expiry, then starts a new epoch and clears the failure.
func (s *Store) failStop(err error, epoch int64) error {
	f := fmt.Errorf("%w (pgstore: refusing writes until the lease is reacquired or the store reopened): %w", decisionlog.ErrLogFailed, err)
	own, _ := s.leaseFor(s.node, "")
	own.mu.Lock()
	cur := own.epoch
	if epoch == 0 {
		epoch = cur
	}
	if epoch < cur {
		own.mu.Unlock()
		return f
	}
	own.loseLocked(&LeaseLostError{Node: s.node, Epoch: cur,
		Why: "a decision write's outcome is unknown: the store stopped writing and gave the lease up, so that a new epoch fences that write"})
	own.mu.Unlock()
	s.qmu.Lock()
	if s.failed == nil {
		s.failed, s.failedEpoch = f, cur
	}
	f = s.failed
	s.qmu.Unlock()
	return f
}

// canonical validates g and returns it as stored: parsed back from its text
// form, so times are the milliseconds every branch's XID carries.
func canonical(g drivers.GlobalID) (drivers.GlobalID, error) {
	if err := g.Validate(); err != nil {
		return drivers.GlobalID{}, err
	}
	return drivers.ParseGlobalID(g.String())
}

// The two fields of drivers.GlobalID this package reads, in one place.
func nodeOf(g drivers.GlobalID) string        { return g.Node() }
func deadlineOf(g drivers.GlobalID) time.Time { return g.Deadline() }

func (s *Store) timeOr(t time.Time) time.Time {
	if t.IsZero() {
		t = s.opts.Now()
	}
	return t.UTC()
}

// Commit makes the commit decision durable in the database and returns
// once its row is committed. The decision must be for a transaction of the
// store's own node. Errors: decisionlog.ErrFenced, nothing written, when
// the database's clock is at or past the deadline or an abort row exists;
// ErrLeaseLost and decisionlog.ErrFenced, nothing written, when the lease
// is lost (by the database's answer or the local estimate);
// decisionlog.ErrLogFailed when the outcome is unknown (fail-stop);
// ErrRefused when the database refused the statement. A decision that is
// already durable returns nil.
func (s *Store) Commit(ctx context.Context, d decisionlog.Decision) error {
	if d.Abort {
		return fmt.Errorf("pgstore: commit %s: an abort marker is not a commit decision", d.GTRID)
	}
	g, err := canonical(d.GTRID)
	if err != nil {
		return fmt.Errorf("pgstore: commit decision: %w", err)
	}
	if len(d.Participants) > drivers.MaxBranches {
		return fmt.Errorf("pgstore: commit decision for %s names %d participants, more than %d", g, len(d.Participants), drivers.MaxBranches)
	}
	if nodeOf(g) != s.node {
		return fmt.Errorf("pgstore: commit %s: a store writes commit decisions only for its own node %s: %w", g, s.node, ErrNotHolder)
	}
	// A labelled decision's participants are an object carrying the label
	// (decisionlog.EncodeDecision): no schema change, and a reader from
	// before labels refuses the row instead of losing the label.
	parts, err := decisionlog.EncodeDecision(d)
	if err != nil {
		return fmt.Errorf("pgstore: commit %s: %w", g, err)
	}
	r := &request{kind: kindCommit, g: g, key: g.String(), parts: string(parts), at: s.timeOr(d.At)}
	return s.submit(ctx, r)
}

// Abort durably records an abort row (and an "abort" action) for a.GTRID;
// from then on Commit for it returns ErrFenced, in every process. The
// transaction's node must be this store's or one it claimed. It returns an
// error wrapping decisionlog.ErrAlreadyCommitted, nothing written, when a
// commit decision exists.
func (s *Store) Abort(ctx context.Context, a decisionlog.Action) error {
	if a.Op == "" {
		a.Op = "abort"
	}
	r, err := s.actionRequest(kindAbort, a)
	if err != nil {
		return err
	}
	return s.submit(ctx, r)
}

// Record durably appends an action to a.GTRID's entry. The transaction's
// node must be this store's or one it claimed.
func (s *Store) Record(ctx context.Context, a decisionlog.Action) error {
	r, err := s.actionRequest(kindRecord, a)
	if err != nil {
		return err
	}
	return s.submit(ctx, r)
}

func (s *Store) actionRequest(k kind, a decisionlog.Action) (*request, error) {
	g, err := canonical(a.GTRID)
	if err != nil {
		return nil, fmt.Errorf("pgstore: %s: %w", k, err)
	}
	return &request{kind: k, g: g, key: g.String(), at: s.timeOr(a.At),
		resource: pgText(a.Resource), branch: a.Branch, op: pgText(a.Op), reason: pgText(a.Reason),
		actor: pgText(a.Actor), heuristic: a.Heuristic}, nil
}

// pgText makes s storable as PostgreSQL text, which refuses NUL bytes and
// invalid UTF-8: one such byte in a reason (say, from a driver's error
// message) would otherwise fail the whole batch, and with it other
// transactions' decisions.
func pgText(s string) string {
	s = strings.ToValidUTF8(s, "\uFFFD")
	return strings.ReplaceAll(s, "\x00", "\uFFFD")
}

// End records that phase 2 of a committed transaction finished. It returns
// once the end is queued: the row is marked with the next batch that
// carries a request a caller waits for (a decision, an abort, an action),
// or after Options.EndDelay, or at Close. Lookup and
// Pending of this store show it ended at once; other processes see it once
// written. If it is never written (a crash, a lost lease), the transaction
// is pending again and recovery commits its branches again, which is
// harmless. Ending a transaction without a commit decision is an error (it
// costs a read when the decision was not made by this store instance);
// ending it twice is not.
func (s *Store) End(gtrid drivers.GlobalID) error {
	g, err := canonical(gtrid)
	if err != nil {
		return fmt.Errorf("pgstore: end: %w", err)
	}
	key := g.String()
	if err := s.writable(); err != nil {
		return fmt.Errorf("pgstore: end %s: %w", key, err)
	}
	l, err := s.leaseFor(nodeOf(g), "end "+key)
	if err != nil {
		return err
	}
	epoch, err := l.usable(time.Now())
	if err != nil {
		return fmt.Errorf("pgstore: end %s: %w", key, err)
	}
	s.cmu.Lock()
	_, known := s.known[key]
	_, ending := s.ending[key]
	s.cmu.Unlock()
	if ending {
		return nil
	}
	if !known {
		ctx, cancel := context.WithTimeout(context.Background(), s.opts.ReadTimeout)
		e, found, err := s.LookupContext(ctx, g)
		cancel()
		switch {
		case err != nil:
			return fmt.Errorf("pgstore: end %s: %w", key, err)
		case found && e.State == decisionlog.StateDone:
			return nil
		case !found || e.State != decisionlog.StateCommitted:
			return fmt.Errorf("pgstore: end %s: the store holds no commit decision for it", key)
		}
	}
	s.cmu.Lock()
	if _, dup := s.ending[key]; dup {
		s.cmu.Unlock()
		return nil
	}
	delete(s.known, key)
	s.ending[key] = struct{}{}
	s.cmu.Unlock()
	if err := s.enqueue(&request{kind: kindEnd, g: g, key: key, epoch: epoch}); err != nil {
		s.endDone(key)
		return fmt.Errorf("pgstore: end %s: %w", key, err)
	}
	return nil
}

func (s *Store) endDone(key string) {
	s.cmu.Lock()
	delete(s.ending, key)
	s.cmu.Unlock()
}

func (s *Store) noteCommitted(key string) {
	s.cmu.Lock()
	if _, ending := s.ending[key]; !ending {
		s.known[key] = struct{}{}
	}
	s.cmu.Unlock()
}
