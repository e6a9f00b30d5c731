// Package demo is the bank-transfer demo of `xabridge demo`: transfers
// between PostgreSQL and MySQL/MariaDB accounts through a coordinator,
// optionally the same as two local commits for comparison, and the check
// of the invariants (money conserved, every transfer in both databases or
// in neither).
package demo

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"sync/atomic"
	"time"

	"github.com/xabridge/xabridge/decisionlog"
	"github.com/xabridge/xabridge/drivers"
	"github.com/xabridge/xabridge/internal/bank"
	"github.com/xabridge/xabridge/internal/redact"
	"github.com/xabridge/xabridge/internal/startup"
	"github.com/xabridge/xabridge/internal/storeopt"
	"github.com/xabridge/xabridge/recovery"
	"github.com/xabridge/xabridge/xa"
)

// Options configure the demo; the CLI flag of each field is named in
// Validate's errors.
type Options struct {
	PGURL, MyURL string // the databases
	Prefix       string // table prefix (--table-prefix)
	Count        int    // transfers
	Concurrency  int    // concurrent workers
	Accounts     int    // accounts on each database
	Balance      int64  // starting balance of each account
	LogDir       string // decision log directory
	NodeID       string // coordinator node id
	Baseline     bool   // also run the transfers as two local commits
	Reset        bool   // recreate the tables first
	// Keeper is "", "pg" or "mysql": xa.Config.DecisionResource.
	Keeper      string
	CommitDelay time.Duration // decisionlog.FileLogOptions.CommitDelay
	// Hook, if set, is the coordinator's xa.Config.Hook (metrics).
	Hook func(xa.Step, xa.StepInfo)
	// Observe, if set, is called once the coordinator runs (to serve its
	// metrics, run recovery beside it); stop is called before the
	// coordinator closes. deadBeforeValid says when that recovery may use
	// the restart fast path (recovery.Config.DeadBeforeValid): while the
	// node's lock is held.
	Observe func(ctx context.Context, coord *xa.Coordinator, deadBeforeValid func() bool, logger *slog.Logger) (stop func(), err error)

	// Store, if set, is the shared decision store the coordinator runs on
	// instead of LogDir, as a replica (package replica): it holds its node's
	// lease, recovers in-process and takes over expired peers, so that two
	// demos on one store (different NodeIDs, the second with Reset false)
	// show a takeover when one is killed.
	Store storeopt.Options
	// LeaseTTL is the store's lease TTL (pgstore.Options.LeaseTTL; 0: the
	// default).
	LeaseTTL time.Duration
	// RecoverEvery is the replica's pass interval with a store (0: LeaseTTL/2).
	RecoverEvery time.Duration
	// OnReport, with a store, sees every recovery report of the replica.
	OnReport func(*recovery.Report)
	// CheckNodes, if set, limits Check's count of prepared branches to
	// these nodes' (default: every xabridge node's, since a prepared branch
	// does not say which tables it touched).
	CheckNodes []string
}

// ErrSetup is returned when the transfers show that the setup is broken
// (runStats.brokenSetup): none committed, or half of them aborted for a
// reason other than insufficient funds or contention. The invariants held.
var ErrSetup = errors.New("the demo's transfers failed")

// ErrViolated is returned when the invariants do not hold.
var ErrViolated = errors.New("demo invariants violated")

// ValidateDatabases checks what Check needs: the databases and the
// tables' prefix. Every error is a usage error.
func (o *Options) ValidateDatabases() error {
	if o.PGURL == "" || o.MyURL == "" {
		return errors.New("both --pg and --mysql are needed (or XABRIDGE_PG and XABRIDGE_MYSQL; scripts/devdb env prints them)")
	}
	var b bank.Bank
	if err := b.SetPrefix(o.Prefix); err != nil {
		return fmt.Errorf("--table-prefix: %w", err)
	}
	return nil
}

// Validate checks what Transfer needs. Every error is a usage error.
func (o *Options) Validate() error {
	if err := o.ValidateDatabases(); err != nil {
		return err
	}
	if o.Count < 0 || o.Concurrency < 1 || o.Accounts < 1 || o.Balance < 0 {
		return errors.New("--count must be >= 0, --concurrency and --accounts >= 1, --balance >= 0")
	}
	switch o.Keeper {
	case "", "pg", "mysql":
	default:
		return fmt.Errorf("--decision-resource %q: want pg, mysql or empty (the decision log)", o.Keeper)
	}
	if o.CommitDelay < 0 || o.CommitDelay > time.Second {
		return errors.New("--commit-delay must be between 0 and 1s")
	}
	if err := drivers.ValidateNodeID(o.NodeID); err != nil {
		return fmt.Errorf("--node-id: %w", err)
	}
	if err := o.Store.Validate(); err != nil {
		return err
	}
	if !o.Store.Enabled() && o.LeaseTTL != 0 {
		return errors.New("--lease-ttl goes with --store")
	}
	if o.LeaseTTL != 0 && (o.LeaseTTL < 500*time.Millisecond || o.LeaseTTL > time.Hour) {
		return errors.New("--lease-ttl must be between 500ms and 1h")
	}
	if o.RecoverEvery < 0 {
		return errors.New("--recover-interval must be positive")
	}
	return nil
}

// openBank connects to both databases and selects the demo tables.
func (o *Options) openBank(ctx context.Context, conns int) (*bank.Bank, error) {
	b, err := bank.Open(ctx, o.PGURL, o.MyURL, conns)
	if err != nil {
		return nil, err
	}
	if err := b.SetPrefix(o.Prefix); err != nil {
		b.Close()
		return nil, err
	}
	return b, nil
}

// Check prints the invariants of the demo tables to out; ErrViolated if
// one does not hold.
func Check(ctx context.Context, out io.Writer, o Options) error {
	if err := o.ValidateDatabases(); err != nil {
		return err
	}
	b, err := o.openBank(ctx, 2)
	if err != nil {
		return err
	}
	defer b.Close()
	return check(ctx, out, b, -1, o.CheckNodes...)
}

// ErrInDoubt is returned by the checks when the state breaks an invariant
// while branches of ours are still prepared: it can only be judged once
// recovery finished them.
var ErrInDoubt = errors.New("demo transfers in doubt: branches still prepared")

// checkSettle is how long check reads again a state that breaks an
// invariant before calling it a violation: the two databases are read one
// after the other, so another coordinator's transfer whose phase 2 ran
// between the reads shows in one database only (and its amount on one
// side), though it ends in both a moment later. A real violation stays.
const checkSettle = 2 * time.Second

// check prints the invariants; want is the expected total (-1: unknown).
// A state that holds them is judged at once, whatever is prepared
// elsewhere: the committed state is consistent, and a branch still prepared
// (of a coordinator killed, or of any other on these servers) cannot make
// it inconsistent unless its transaction committed on one side, which then
// shows. A state that breaks one while branches of ours are prepared is
// not (yet) a violation: it is in doubt. One that breaks it with nothing
// prepared is read again for checkSettle before it is reported (see there).
// Branches of nodes count as ours (none given: of every xabridge node).
func check(ctx context.Context, out io.Writer, b *bank.Bank, want int64, nodes ...string) error {
	if len(nodes) == 0 {
		nodes = []string{""} // startup.InDoubt's "any node"
	}
	return checkWith(ctx, out, b, want, func(ctx context.Context) (int, error) {
		total := 0
		for _, node := range nodes {
			n, err := startup.InDoubt(ctx, node, b.PG, b.My)
			if err != nil {
				return 0, err
			}
			total += n
		}
		return total, nil
	})
}

// checkWith is check with the count of our prepared branches from
// countPrepared (on both servers).
func checkWith(ctx context.Context, out io.Writer, b *bank.Bank, want int64, countPrepared func(context.Context) (int, error)) error {
	deadline := time.Now().Add(checkSettle)
	for {
		st, err := b.Check(ctx)
		if err != nil {
			return err
		}
		broken := st.Violations() > 0 || st.NetPG != st.NetMy || (want >= 0 && st.Total() != want)
		if !broken {
			return printState(out, st, want)
		}
		prepared, err := countPrepared(ctx)
		if err != nil {
			return err
		}
		if prepared > 0 {
			_ = printState(out, st, want) // the verdict is "in doubt", whatever it says
			fmt.Fprintf(out, "in doubt:  %d branch(es) of ours still prepared, so the check is not final: run `xabridge recover` (--log-dir or --store of the node), then `xabridge demo check`\n", prepared)
			return fmt.Errorf("%w: %d", ErrInDoubt, prepared)
		}
		if !time.Now().Before(deadline) {
			return printState(out, st, want)
		}
		select {
		case <-ctx.Done():
			return printState(out, st, want)
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// Transfer runs the demo: Count transfers over Concurrency workers through
// a coordinator (and as two local commits with Baseline), their numbers on
// out, then the invariants; ErrViolated if one does not hold. The
// coordinator's warnings go to errw.
func Transfer(ctx context.Context, out, errw io.Writer, o Options) error {
	if err := o.Validate(); err != nil {
		return err
	}
	b, err := o.openBank(ctx, o.Concurrency)
	if err != nil {
		return err
	}
	defer b.Close()
	logger := slog.New(slog.NewTextHandler(errw, &slog.HandlerOptions{Level: slog.LevelWarn}))
	xc := xa.Config{
		NodeID:           o.NodeID,
		Resources:        []drivers.Resource{b.PG, b.My},
		DecisionResource: o.Keeper,
		Logger:           logger,
		Hook:             o.Hook,
	}
	var coord *xa.Coordinator
	// With a store the replica holds the node's lease and lock and runs the
	// fast path in its own passes; the metrics loop beside it keeps the fence.
	held := func() bool { return false }
	if o.Store.Enabled() {
		rp, done, err := openReplica(ctx, out, o, xc, logger)
		if err != nil {
			return err
		}
		defer done() // prints what this process took over
		coord = rp.Coordinator()
	} else {
		// The node's lock in both databases, before the log is opened:
		// another live demo with this node id (from another directory, so
		// another log) is refused here with nothing changed, since the
		// start-up pass below would roll back its in-flight branches.
		locks, err := recovery.LockNode(ctx, o.NodeID, xc.Resources, recovery.DefaultNodeLockWait, logger)
		if err != nil {
			return err
		}
		defer locks.Close() // after coord.Close and the recovery loop
		held = locks.Held
		fl, err := decisionlog.OpenFileLog(o.LogDir, decisionlog.FileLogOptions{CommitDelay: o.CommitDelay, Node: o.NodeID})
		if err != nil {
			return err
		}
		defer fl.Close() // after coord.Close
		xc.Log = fl
		coord, err = xa.New(ctx, xc)
		if err != nil {
			return err
		}
		defer coord.Close()
		// The restart fast path: this process holds the log's lock and the
		// node lock, so an earlier demo of this node that died left its
		// undecided branches (and their row locks) to no one; roll them back
		// now, not after their fence. Before Observe, whose recovery loop
		// would race it.
		if err := startupRecovery(ctx, out, coord, o.Keeper, held, logger); err != nil {
			return err
		}
	}
	if o.Observe != nil {
		stop, err := o.Observe(ctx, coord, held, logger)
		if err != nil {
			return err
		}
		defer stop() // before coord.Close: a recovery loop uses its log
	}

	if o.Reset {
		if n, err := startup.InDoubt(ctx, o.NodeID, b.PG, b.My); err != nil {
			return err
		} else if n > 0 {
			return fmt.Errorf("%d prepared branch(es) of node %s are in doubt and may hold locks on the demo tables; run `xabridge recover` first", n, o.NodeID)
		}
		if err := b.Setup(ctx, o.Accounts, o.Balance); err != nil {
			return err
		}
	}
	before, err := b.Check(ctx)
	if err != nil {
		return err
	}
	// The money to find at the end. On a shared store without --reset,
	// peers may be moving money while the two databases are read one after
	// the other: a start total read then can be off by a transfer in
	// flight, so only what the transfers themselves say is checked (money
	// that left PostgreSQL arrived in MySQL), as `demo check` does.
	want := before.Total()
	if o.Store.Enabled() && !o.Reset {
		want = -1
	}
	fmt.Fprintf(out, "xabridge demo: %d transfers, %d workers, %d accounts on each of postgres %s and mysql %s\n",
		o.Count, o.Concurrency, o.Accounts, redact.URL(o.PGURL), redact.URL(o.MyURL))

	var xs runStats
	workers(ctx, o.Count, o.Concurrency, 1, func(ctx context.Context, rng *rand.Rand) error {
		_, err := b.Do(ctx, coord, randomTransfer(rng, o.Accounts))
		return err
	}, &xs)
	label := "atomic (two-phase commit)"
	if o.Keeper != "" {
		label = "atomic (decision in " + o.Keeper + ")"
	}
	fmt.Fprintln(out, xs.line(label))
	for _, l := range xs.reasonLines() {
		fmt.Fprintln(out, l)
	}
	broken := ""
	if ctx.Err() == nil {
		broken = xs.brokenSetup()
	}
	if fl, ok := coord.Log().(*decisionlog.FileLog); ok && xs.committed.Load() > 0 {
		s := fl.Stats()
		fmt.Fprintf(out, "%-26s %d fsyncs for %d records (%.3f per committed transfer)\n", "decision log", s.Syncs, s.Appends,
			float64(s.Syncs)/float64(xs.committed.Load()))
	}
	if o.Baseline && ctx.Err() == nil {
		var bs runStats
		var seq atomic.Int64
		workers(ctx, o.Count, o.Concurrency, 1, func(ctx context.Context, rng *rand.Rand) error {
			id := fmt.Sprintf("baseline-%d-%d", time.Now().UnixNano(), seq.Add(1))
			return b.DoBaseline(ctx, id, randomTransfer(rng, o.Accounts))
		}, &bs)
		fmt.Fprintln(out, bs.line("baseline (not atomic)"))
		if bt := float64(bs.committed.Load()) / bs.elapsed.Seconds(); bt > 0 {
			xt := float64(xs.committed.Load()) / xs.elapsed.Seconds()
			fmt.Fprintf(out, "%-26s %.2fx baseline throughput\n", "atomic / baseline", xt/bt)
		}
	}
	if ctx.Err() != nil {
		// Interrupted: no new transfer was started, those in flight
		// finished; check what is there, with a context of its own.
		fmt.Fprintln(out, "xabridge demo: interrupted: stopped starting transfers, those in flight finished")
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(context.WithoutCancel(ctx), 30*time.Second)
		defer cancel()
	}
	if err := check(ctx, out, b, want); err != nil {
		return err
	}
	if broken != "" {
		return fmt.Errorf("%w: %s (the reasons are above; `xabridge doctor` checks the setup)", ErrSetup, broken)
	}
	return nil
}

// startupRecovery is the restart fast path (startup.Recover) beside the
// coordinator that just started: the log's lock and the node's lock in
// the databases are ours (deadBeforeValid says whether all of them are
// held), so what an earlier demo of the node left is a dead process's. It
// prints a line when it found anything.
func startupRecovery(ctx context.Context, out io.Writer, coord *xa.Coordinator, keeper string, deadBeforeValid func() bool, logger *slog.Logger) error {
	r, err := startup.Recover(ctx, coord, keeper, deadBeforeValid, logger)
	if err != nil {
		return err
	}
	if r.Found() {
		fmt.Fprintf(out, "xabridge demo: start-up recovery of node %s: %d branch(es) of an earlier run rolled back, %d committed, %d still in doubt (%s)\n",
			coord.NodeID(), r.RolledBack, r.Committed, r.Left, r.Took.Round(time.Millisecond))
	}
	return ctx.Err()
}
