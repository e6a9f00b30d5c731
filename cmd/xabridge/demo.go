package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/spf13/cobra"

	"github.com/xabridge/xabridge/drivers"
	"github.com/xabridge/xabridge/internal/bank"
	"github.com/xabridge/xabridge/metrics"
	"github.com/xabridge/xabridge/recovery"
	"github.com/xabridge/xabridge/xa"
)

type demoOpts struct {
	pgURL, myURL string
	count        int
	concurrency  int
	accounts     int
	balance      int64
	logDir       string
	nodeID       string
	baseline     bool
	reset        bool
	prefix       string
	metricsAddr  string
	recoverEvery time.Duration
	keeper       string        // "", "pg" or "mysql": xa.Config.DecisionResource
	commitDelay  time.Duration // xa.FileLogOptions.CommitDelay
}

func newDemoCmd() *cobra.Command {
	demo := &cobra.Command{
		Use:   "demo",
		Short: "Run the bank-transfer demo across PostgreSQL and MySQL/MariaDB",
		Args:  cobra.ArbitraryArgs,
		RunE:  unknownSubcommand,
		Long: `The demo moves money between accounts held in a PostgreSQL table and a
MySQL/MariaDB table, each transfer one atomic global transaction.

Schema (the same on both databases):
  xab_demo_accounts(id BIGINT PRIMARY KEY, balance BIGINT NOT NULL)
  xab_demo_transfers(id VARCHAR(64) PRIMARY KEY, amount BIGINT NOT NULL)
Every committed transfer inserts its id into both xab_demo_transfers tables, so
atomicity can be checked with plain SQL: the total balance never changes and
each transfer id is in both databases or in neither.`,
	}
	demo.AddCommand(newDemoTransferCmd(), newDemoCheckCmd())
	return demo
}

func addDemoDBFlags(cmd *cobra.Command, o *demoOpts) {
	f := cmd.Flags()
	f.StringVar(&o.prefix, "table-prefix", bank.DefaultPrefix, "name prefix of the demo tables (PREFIX_accounts, PREFIX_transfers), [a-z][a-z0-9_]*")
	addURLFlags(cmd, &o.pgURL, &o.myURL)
}

// openBank connects to both databases and selects the demo tables.
func (o *demoOpts) openBank(ctx context.Context, conns int) (*bank.Bank, error) {
	b, err := bank.Open(ctx, o.pgURL, o.myURL, conns)
	if err != nil {
		return nil, err
	}
	if err := b.SetPrefix(o.prefix); err != nil {
		b.Close()
		return nil, usageError{err}
	}
	return b, nil
}

func (o *demoOpts) checkURLs() error {
	if o.pgURL == "" || o.myURL == "" {
		return usagef("both --pg and --mysql are needed (or XABRIDGE_PG and XABRIDGE_MYSQL; scripts/devdb env prints them)")
	}
	return nil
}

func newDemoTransferCmd() *cobra.Command {
	o := &demoOpts{}
	cmd := &cobra.Command{
		Use:   "transfer",
		Short: "Move money between PostgreSQL and MySQL accounts, atomically, and check the invariants",
		Example: `  eval "$(scripts/devdb env)"
  xabridge demo transfer --count 10000 --concurrency 16
  xabridge demo transfer --count 2000 --baseline   # also time the same transfers without atomicity
  xabridge demo transfer --count 1000000 --metrics-addr 127.0.0.1:9464   # a long run to watch in Prometheus
  xabridge demo transfer --count 10000 --concurrency 32 --decision-resource pg --baseline   # decision kept in PostgreSQL`,
		Args: noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := o.checkURLs(); err != nil {
				return err
			}
			if o.count < 0 || o.concurrency < 1 || o.accounts < 1 || o.balance < 0 {
				return usagef("--count must be >= 0, --concurrency and --accounts >= 1, --balance >= 0")
			}
			if o.recoverEvery <= 0 {
				return usagef("--recover-interval must be positive")
			}
			switch o.keeper {
			case "", "pg", "mysql":
			default:
				return usagef("--decision-resource %q: want pg, mysql or empty (the decision log)", o.keeper)
			}
			if o.commitDelay < 0 || o.commitDelay > time.Second {
				return usagef("--commit-delay must be between 0 and 1s")
			}
			if err := checkMetricsAddr(o.metricsAddr); err != nil {
				return err
			}
			return runDemoTransfer(cmd.Context(), cmd.OutOrStdout(), cmd.ErrOrStderr(), o)
		},
	}
	addDemoDBFlags(cmd, o)
	f := cmd.Flags()
	f.IntVar(&o.count, "count", 1000, "number of transfers")
	f.IntVar(&o.concurrency, "concurrency", 8, "concurrent workers")
	f.IntVar(&o.accounts, "accounts", 100, "accounts on each database")
	f.Int64Var(&o.balance, "balance", 1000, "starting balance of each account")
	f.StringVar(&o.logDir, "log-dir", envOr("XABRIDGE_LOG_DIR", ".xabridge/log"), "decision log directory (env XABRIDGE_LOG_DIR)")
	f.StringVar(&o.nodeID, "node-id", envOr("XABRIDGE_NODE_ID", "demo"), "coordinator node id, [a-z0-9-]{1,24} (env XABRIDGE_NODE_ID)")
	f.BoolVar(&o.baseline, "baseline", false, "also run the same transfers as two independent local commits (not atomic) and compare")
	f.BoolVar(&o.reset, "reset", true, "recreate the demo tables first (--reset=false continues on the existing ones)")
	f.StringVar(&o.metricsAddr, "metrics-addr", "", "serve Prometheus metrics at http://ADDR/metrics while the demo runs, and run a recovery loop next to the coordinator (host:port; an empty host means 127.0.0.1)")
	f.DurationVar(&o.recoverEvery, "recover-interval", 10*time.Second, "with --metrics-addr: time between the in-process recovery passes")
	f.StringVar(&o.keeper, "decision-resource", "", "keep the commit decisions in a participant instead of the log: pg or mysql (MariaDB only); see docs/PERFORMANCE.md")
	f.DurationVar(&o.commitDelay, "commit-delay", 0, "hold a decision-log group commit open this long for more decisions to share its fsync (e.g. 2ms)")
	return cmd
}

func newDemoCheckCmd() *cobra.Command {
	o := &demoOpts{}
	cmd := &cobra.Command{
		Use:   "check",
		Short: "Check the demo's invariants: money conserved, every transfer in both databases or neither",
		Args:  noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := o.checkURLs(); err != nil {
				return err
			}
			ctx := cmd.Context()
			b, err := o.openBank(ctx, 2)
			if err != nil {
				return err
			}
			defer b.Close()
			st, err := b.Check(ctx)
			if err != nil {
				return err
			}
			return printState(cmd.OutOrStdout(), st, -1)
		},
	}
	addDemoDBFlags(cmd, o)
	return cmd
}

// printState prints the invariant check; want < 0 means "the starting total
// is unknown", so conservation is checked against the transfer amounts.
func printState(w io.Writer, st bank.State, want int64) error {
	fmt.Fprintf(w, "balances:  postgres %d + mysql %d = %d", st.PGTotal, st.MyTotal, st.Total())
	conserved := true
	if want >= 0 {
		conserved = st.Total() == want
		fmt.Fprintf(w, " (start %d)", want)
	}
	// Independent of the start: money that left PostgreSQL arrived in MySQL.
	if st.NetPG != st.NetMy {
		conserved = false
	}
	fmt.Fprintf(w, "  %s\n", mark(conserved, "conserved", "NOT CONSERVED"))
	fmt.Fprintf(w, "transfers: %d in postgres, %d in mysql, %d in only one  %s\n",
		st.PGTransfers, st.MyTransfers, len(st.OnlyPG)+len(st.OnlyMy), mark(st.Violations() == 0, "atomic", "ATOMICITY VIOLATED"))
	for _, id := range st.OnlyPG {
		fmt.Fprintf(w, "  only in postgres: %s\n", id)
	}
	for _, id := range st.OnlyMy {
		fmt.Fprintf(w, "  only in mysql: %s\n", id)
	}
	if !conserved || st.Violations() > 0 {
		return errors.New("demo invariants violated")
	}
	return nil
}

func mark(ok bool, yes, no string) string {
	if ok {
		return "ok: " + yes
	}
	return "FAIL: " + no
}

// runStats is what a batch of transfers did.
type runStats struct {
	committed, aborted, noFunds, inDoubt, pending atomic.Int64
	elapsed                                       time.Duration
	lat                                           []time.Duration
}

func (s *runStats) line(label string) string {
	slices.Sort(s.lat)
	tps := float64(s.committed.Load()) / s.elapsed.Seconds()
	return fmt.Sprintf("%-26s committed %6d  aborted %5d (insufficient funds %d)  in doubt %d  pending %d  %8.1f tx/s  p50 %s  p99 %s",
		label, s.committed.Load(), s.aborted.Load(), s.noFunds.Load(), s.inDoubt.Load(), s.pending.Load(), tps,
		fmtDur(percentile(s.lat, 0.50)), fmtDur(percentile(s.lat, 0.99)))
}

func percentile(sorted []time.Duration, q float64) time.Duration {
	if len(sorted) == 0 {
		return 0
	}
	i := int(float64(len(sorted)-1) * q)
	return sorted[i]
}

func fmtDur(d time.Duration) string {
	return fmt.Sprintf("%.2fms", float64(d)/float64(time.Millisecond))
}

// workers runs count jobs over n goroutines; job(i, rng) returns the
// outcome. It stops early when ctx ends.
func workers(ctx context.Context, count, n int, seed uint64, job func(ctx context.Context, rng *rand.Rand) error, st *runStats) {
	var next atomic.Int64
	var mu sync.Mutex
	var wg sync.WaitGroup
	start := time.Now()
	for w := 0; w < n; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			rng := rand.New(rand.NewPCG(seed, uint64(w)))
			var lat []time.Duration
			for ctx.Err() == nil && next.Add(1) <= int64(count) {
				t0 := time.Now()
				err := job(ctx, rng)
				d := time.Since(t0)
				switch {
				case err == nil:
					st.committed.Add(1)
					lat = append(lat, d)
				case errors.Is(err, bank.ErrInsufficientFunds):
					st.aborted.Add(1)
					st.noFunds.Add(1)
				case errors.Is(err, xa.ErrCommitPending):
					st.pending.Add(1)
					lat = append(lat, d)
				case errors.Is(err, xa.ErrOutcomeUnknown):
					st.inDoubt.Add(1)
				default:
					st.aborted.Add(1)
				}
			}
			mu.Lock()
			st.lat = append(st.lat, lat...)
			mu.Unlock()
		}()
	}
	wg.Wait()
	st.elapsed = time.Since(start)
}

func randomTransfer(rng *rand.Rand, accounts int) bank.Transfer {
	amt := rng.Int64N(100) + 1
	if rng.IntN(2) == 0 {
		amt = -amt
	}
	return bank.Transfer{PGAccount: rng.Int64N(int64(accounts)) + 1, MyAccount: rng.Int64N(int64(accounts)) + 1, Amount: amt}
}

func runDemoTransfer(ctx context.Context, out, errw io.Writer, o *demoOpts) error {
	b, err := o.openBank(ctx, o.concurrency)
	if err != nil {
		return err
	}
	defer b.Close()
	logger := slog.New(slog.NewTextHandler(errw, &slog.HandlerOptions{Level: slog.LevelWarn}))
	var obs *observer
	var hook func(xa.Step, xa.StepInfo)
	if o.metricsAddr != "" {
		if obs, err = newObserver(o.nodeID); err != nil {
			return err
		}
		hook = obs.m.Hook
	}
	fl, err := xa.OpenFileLog(o.logDir, xa.FileLogOptions{CommitDelay: o.commitDelay})
	if err != nil {
		return err
	}
	defer fl.Close() // after coord.Close
	coord, err := xa.New(ctx, xa.Config{
		NodeID:           o.nodeID,
		Log:              fl,
		Resources:        []drivers.Resource{b.PG, b.My},
		DecisionResource: o.keeper,
		Logger:           logger,
		Hook:             hook,
	})
	if err != nil {
		return err
	}
	defer coord.Close()
	if obs != nil {
		stop, err := observeDemo(ctx, errw, o, obs, coord, logger)
		if err != nil {
			return err
		}
		defer stop() // before coord.Close: the recovery loop uses its log
	}

	if o.reset {
		if n, err := inDoubtBranches(ctx, b, o.nodeID); err != nil {
			return err
		} else if n > 0 {
			return fmt.Errorf("%d prepared branch(es) of node %s are in doubt and may hold locks on the demo tables; run `xabridge recover` first", n, o.nodeID)
		}
		if err := b.Setup(ctx, o.accounts, o.balance); err != nil {
			return err
		}
	}
	before, err := b.Check(ctx)
	if err != nil {
		return err
	}
	fmt.Fprintf(out, "xabridge demo: %d transfers, %d workers, %d accounts on each of postgres %s and mysql %s\n",
		o.count, o.concurrency, o.accounts, hostOf(o.pgURL), hostOf(o.myURL))

	var xs runStats
	workers(ctx, o.count, o.concurrency, 1, func(ctx context.Context, rng *rand.Rand) error {
		_, err := b.Do(ctx, coord, randomTransfer(rng, o.accounts))
		return err
	}, &xs)
	label := "atomic (two-phase commit)"
	if o.keeper != "" {
		label = "atomic (decision in " + o.keeper + ")"
	}
	fmt.Fprintln(out, xs.line(label))
	if fl, ok := coord.Log().(*xa.FileLog); ok && xs.committed.Load() > 0 {
		s := fl.Stats()
		fmt.Fprintf(out, "%-26s %d fsyncs for %d records (%.3f per committed transfer)\n", "decision log", s.Syncs, s.Appends,
			float64(s.Syncs)/float64(xs.committed.Load()))
	}
	if o.baseline && ctx.Err() == nil {
		var bs runStats
		var seq atomic.Int64
		workers(ctx, o.count, o.concurrency, 1, func(ctx context.Context, rng *rand.Rand) error {
			id := fmt.Sprintf("baseline-%d-%d", time.Now().UnixNano(), seq.Add(1))
			return b.DoBaseline(ctx, id, randomTransfer(rng, o.accounts))
		}, &bs)
		fmt.Fprintln(out, bs.line("baseline (not atomic)"))
		if bt := float64(bs.committed.Load()) / bs.elapsed.Seconds(); bt > 0 {
			xt := float64(xs.committed.Load()) / xs.elapsed.Seconds()
			fmt.Fprintf(out, "%-26s %.2fx baseline throughput\n", "atomic / baseline", xt/bt)
		}
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	after, err := b.Check(ctx)
	if err != nil {
		return err
	}
	return printState(out, after, before.Total())
}

// observeDemo serves the demo's metrics and runs a recovery loop next to its
// coordinator (Active: coord.Active leaves its running transactions alone),
// so that the recovery gauges are live. stop ends both.
func observeDemo(ctx context.Context, errw io.Writer, o *demoOpts, obs *observer, coord *xa.Coordinator, logger *slog.Logger) (stop func(), err error) {
	if fl, ok := coord.Log().(*xa.FileLog); ok {
		obs.labeled.MustRegister(metrics.NewFileLogCollector(fl))
	}
	rec, err := recovery.New(recovery.Config{
		NodeID: o.nodeID, Log: coord.Log(), Resources: coord.Resources(), Active: coord.Active,
		DecisionResource: o.keeper, Logger: logger, OnReport: obs.m.ObserveReport,
	})
	if err != nil {
		return nil, err
	}
	if err := obs.serve(o.metricsAddr, errw); err != nil {
		return nil, err
	}
	loopCtx, cancel := context.WithCancel(ctx)
	var wg sync.WaitGroup
	wg.Go(func() { _ = rec.Loop(loopCtx, o.recoverEvery, nil) })
	return func() {
		cancel()
		wg.Wait()
		obs.close()
	}, nil
}

// inDoubtBranches counts prepared branches of node on the demo's databases.
func inDoubtBranches(ctx context.Context, b *bank.Bank, node string) (int, error) {
	n := 0
	for _, r := range []drivers.Resource{b.PG, b.My} {
		ps, err := r.Recover(ctx)
		if err != nil {
			return 0, err
		}
		for _, p := range ps {
			if p.Ours && p.XID.Global.Node == node {
				n++
			}
		}
	}
	return n, nil
}

// hostOf shows a URL without its credentials.
func hostOf(rawURL string) string {
	return drivers.RedactURL(rawURL)
}
