package main

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"sync"
	"time"

	"github.com/spf13/cobra"

	"github.com/xabridge/xabridge/decisionlog"
	"github.com/xabridge/xabridge/drivers"
	"github.com/xabridge/xabridge/internal/bank"
	"github.com/xabridge/xabridge/internal/demo"
	"github.com/xabridge/xabridge/metrics"
	"github.com/xabridge/xabridge/recovery"
	"github.com/xabridge/xabridge/xa"
)

// demoOpts are the demo's options and the CLI's own: the metrics endpoint
// and the recovery loop beside the coordinator.
type demoOpts struct {
	demo.Options
	metricsAddr  string
	recoverEvery time.Duration
	store        storeFlags
}

func newDemoCmd() *cobra.Command {
	cmd := &cobra.Command{
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
	cmd.AddCommand(newDemoTransferCmd(), newDemoCheckCmd())
	return cmd
}

func addDemoDBFlags(cmd *cobra.Command, o *demoOpts) {
	f := cmd.Flags()
	f.StringVar(&o.Prefix, "table-prefix", bank.DefaultPrefix, "name prefix of the demo tables (PREFIX_accounts, PREFIX_transfers), [a-z][a-z0-9_]*")
	addURLFlags(cmd, &o.PGURL, &o.MyURL)
}

func newDemoTransferCmd() *cobra.Command {
	o := &demoOpts{}
	cmd := &cobra.Command{
		Use:   "transfer",
		Short: "Move money between PostgreSQL and MySQL accounts, atomically, and check the invariants",
		Long: `transfer moves money between the demo's PostgreSQL and MySQL/MariaDB accounts,
each transfer one global transaction, then checks the invariants.

At start, before any transfer, it runs one recovery pass for its node: an
earlier demo of the same --node-id and --log-dir that was killed may have
left prepared branches holding row locks. This process holds the log, so
that earlier one is dead: its undecided branches are rolled back at once
(not after their fence, the 30s transaction timeout) and its commit
decisions finished. With --metrics-addr, a recovery loop keeps running
beside the coordinator. Two demos at once with the same --node-id on the
same databases, even with different --log-dir, would each take the other's
running transactions for a dead run's: so the demo first takes a node lock
in both databases, held until it exits, and a second live demo with the
same --node-id is refused (exit 2) before it changes anything. A killed
demo's lock is released by the servers as its connections close.

Interrupted (Ctrl-C, SIGTERM), it stops starting transfers, lets those in
flight finish, and checks the invariants. Aborts other than insufficient funds are counted by reason, each with its
first error. Exit 1 when the invariants do not hold, and also when the run
shows a broken setup: no transfer committed, or at least half of them
aborted for a reason other than insufficient funds or contention (for
example a PostgreSQL without max_prepared_transactions).

With --store the coordinator keeps its decisions in the shared decision
store (a PostgreSQL database; its tables are created on first use) instead
of a log directory, and runs as a replica: it holds its node id's lease,
recovers its own transactions in-process and takes over the transactions
of any node whose lease expired (a killed peer), every --recover-interval
(default: half the lease TTL). It prints its node and epoch when it starts
and, when it stops, which nodes it took over. Start a second one with
another --node-id and --reset=false (the first created the tables). With
--store and --reset=false the final check does not compare the balances with
a start total (peers may be moving money while the two databases are read):
it checks, as demo check does, that the money the transfers took from
PostgreSQL arrived in MySQL and that each transfer is in both or neither.`,
		Example: `  eval "$(scripts/devdb env)"
  xabridge demo transfer --count 10000 --concurrency 16
  xabridge demo transfer --count 2000 --baseline   # also time the same transfers without atomicity
  xabridge demo transfer --count 1000000 --metrics-addr 127.0.0.1:9464   # a long run to watch in Prometheus
  xabridge demo transfer --count 10000 --concurrency 32 --decision-resource pg --baseline   # decision kept in PostgreSQL

  # Two coordinators on one shared store; kill one, watch the other take over:
  xabridge demo transfer --store "$XABRIDGE_PG" --node-id demo-a --count 1000000 --lease-ttl 3s &
  xabridge demo transfer --store "$XABRIDGE_PG" --node-id demo-b --count 1000000 --lease-ttl 3s --reset=false &
  kill -9 %1; watch xabridge nodes --store "$XABRIDGE_PG"`,
		Args: noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			so, err := o.store.options(cmd.Flags().Changed("log-dir"))
			if err != nil {
				return err
			}
			o.Store = so
			if so.Enabled() && cmd.Flags().Changed("recover-interval") {
				o.RecoverEvery = o.recoverEvery
			}
			if err := o.Validate(); err != nil {
				return usageError{err}
			}
			if o.recoverEvery <= 0 {
				return usagef("--recover-interval must be positive")
			}
			if err := checkMetricsAddr(o.metricsAddr); err != nil {
				return err
			}
			if o.metricsAddr != "" {
				obs, err := newObserver(o.NodeID)
				if err != nil {
					return err
				}
				o.Hook = obs.m.Hook
				o.OnReport = obs.m.ObserveReport
				o.Observe = func(ctx context.Context, coord *xa.Coordinator, deadBeforeValid func() bool, logger *slog.Logger) (func(), error) {
					return observeDemo(ctx, cmd.ErrOrStderr(), o, obs, coord, deadBeforeValid, logger)
				}
			}
			return demo.Transfer(cmd.Context(), cmd.OutOrStdout(), cmd.ErrOrStderr(), o.Options)
		},
	}
	addDemoDBFlags(cmd, o)
	f := cmd.Flags()
	f.IntVar(&o.Count, "count", 1000, "number of transfers")
	f.IntVar(&o.Concurrency, "concurrency", 8, "concurrent workers")
	f.IntVar(&o.Accounts, "accounts", 100, "accounts on each database")
	f.Int64Var(&o.Balance, "balance", 1000, "starting balance of each account")
	f.StringVar(&o.LogDir, "log-dir", envOr("XABRIDGE_LOG_DIR", ".xabridge/log"), "decision log directory (env XABRIDGE_LOG_DIR)")
	f.StringVar(&o.NodeID, "node-id", envOr("XABRIDGE_NODE_ID", "demo"), "coordinator node id, [a-z0-9-]{1,24} (env XABRIDGE_NODE_ID)")
	f.BoolVar(&o.Baseline, "baseline", false, "also run the same transfers as two independent local commits (not atomic) and compare")
	f.BoolVar(&o.Reset, "reset", true, "recreate the demo tables first (--reset=false continues on the existing ones)")
	f.StringVar(&o.metricsAddr, "metrics-addr", "", "serve Prometheus metrics at http://ADDR/metrics while the demo runs, and run a recovery loop next to the coordinator (host:port; an empty host means 127.0.0.1)")
	f.DurationVar(&o.recoverEvery, "recover-interval", 10*time.Second, "with --metrics-addr, or --store (default there: half the lease TTL): time between the in-process recovery passes")
	f.StringVar(&o.Keeper, "decision-resource", "", "keep the commit decisions in a participant instead of the log: pg or mysql (MariaDB only); see docs/PERFORMANCE.md")
	f.DurationVar(&o.CommitDelay, "commit-delay", 0, "hold a decision-log group commit open this long for more decisions to share its fsync (e.g. 2ms)")
	o.store.add(f)
	f.DurationVar(&o.LeaseTTL, "lease-ttl", 0, "with --store: the node lease's time to live (default 15s): a killed coordinator's transactions are taken over this long after its last renewal")
	return cmd
}

func newDemoCheckCmd() *cobra.Command {
	o := &demoOpts{}
	cmd := &cobra.Command{
		Use:   "check",
		Short: "Check the demo's invariants: money conserved, every transfer in both databases or neither",
		Long: `check reads the demo tables and says whether money is conserved and every
transfer is in both databases or in neither (exit 1 if not). A state that
holds them is judged at once. One that breaks them while branches of ours
are still prepared (a coordinator killed, or stopped before phase 2
finished) is not final: the check says how many and exits 3; run xabridge
recover first. A prepared branch does not say which tables it touched, so
every xabridge node's branches count unless --nodes names the demo's own.
The two databases are read one after the other, so while coordinators run,
a transfer between its two commits shows in one database only: a state that
breaks an invariant with nothing prepared is read again for up to 2s before
it is reported.`,
		Args: noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := o.ValidateDatabases(); err != nil {
				return usageError{err}
			}
			for _, n := range o.CheckNodes {
				if err := drivers.ValidateNodeID(n); err != nil {
					return usageError{fmt.Errorf("--nodes: %w", err)}
				}
			}
			return demo.Check(cmd.Context(), cmd.OutOrStdout(), o.Options)
		},
	}
	addDemoDBFlags(cmd, o)
	cmd.Flags().StringSliceVar(&o.CheckNodes, "nodes", nil, "count only these coordinator nodes' prepared branches (comma-separated node ids; default: every xabridge node's, as a branch does not say which tables it touched)")
	return cmd
}

// observeDemo serves the demo's metrics and runs a recovery loop next to its
// coordinator (Active: coord.Active leaves its running transactions alone),
// so that the recovery gauges are live. stop ends both.
func observeDemo(ctx context.Context, errw io.Writer, o *demoOpts, obs *observer, coord *xa.Coordinator, deadBeforeValid func() bool, logger *slog.Logger) (stop func(), err error) {
	if fl, ok := coord.Log().(*decisionlog.FileLog); ok {
		obs.labeled.MustRegister(metrics.NewFileLogCollector(fl))
	}
	if o.Store.Enabled() {
		// The replica runs recovery in-process already (its reports feed
		// the metrics through Options.OnReport): serve the metrics only.
		if err := obs.serve(o.metricsAddr, errw); err != nil {
			return nil, err
		}
		return obs.close, nil
	}
	rec, err := recovery.New(recovery.Config{
		NodeID: o.NodeID, Log: coord.Log(), Resources: coord.Resources(), Active: coord.Active,
		DecisionResource: o.Keeper, Logger: logger, OnReport: obs.m.ObserveReport,
		// This process holds the log's lock (and, while deadBeforeValid,
		// the node's lock in the databases): what began before its
		// coordinator is a dead process's (see demo's start-up pass).
		DeadBefore: coord.Started(), DeadBeforeValid: deadBeforeValid,
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
