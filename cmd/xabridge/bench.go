package main

import (
	"errors"
	"os"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/xabridge/xabridge/internal/bench"
)

func newBenchCmd() *cobra.Command {
	var o bench.Options
	var output, startAt string
	cmd := &cobra.Command{
		Use:   "bench",
		Short: "Measure atomic transfers against two independent local commits, side by side",
		Long: `bench runs the cross-database transfer (an UPDATE and an INSERT on PostgreSQL,
the same on MySQL/MariaDB) for --duration at each concurrency level, in every
mode, interleaved: at each level the modes take turns in --rounds rounds, so
that load from elsewhere on the machine hits every mode alike.

Modes:
` + bench.ModesHelp() + `
Each client moves money between its own pair of accounts (--hot-rows N makes
all clients share N accounts, for contention). Per mode and level it reports
committed transactions/s, latency percentiles of committed transactions,
aborts, in-doubt outcomes, decision-log fsyncs per transaction (the store
modes: decision round trips to the store per transaction), the CPU time
of this process per transaction (the coordinator and the client), the whole
machine's busy CPU per transaction (the databases included), and the ratio
of throughput and p99 latency to baseline at the same level.

At the end it checks the invariants (money conserved, every transfer id in
both databases or in neither, no prepared branch of the benchmark left) and
fails if one is violated. It uses its own tables (--table-prefix) and its own
coordinator node ids (NODE-MODE) and decision logs (LOG-DIR/MODE; the store
modes: the store's tables in the --store database, or in the --pg database
for xa-store-own, holding the lease of node NODE-MODE).

To measure several coordinator processes on one store, run one bench per
process at once, each with its own --table-prefix, --node-id and --log-dir:
scripts/bench-processes does that, interleaved with one process, and sums.`,
		Example: `  eval "$(scripts/devdb env)"
  xabridge bench --clients 1,8,32,128 --duration 10s
  xabridge bench --clients 32 --modes baseline,xa-dip --duration 5s -o json
  xabridge bench --clients 32 --modes baseline,xa,xa-store,xa-store-own --rounds 10 --duration 30s`,
		Args: noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if output != "table" && output != "json" {
				return usagef("--output must be table or json, not %q", output)
			}
			if startAt != "" {
				t, err := time.Parse(time.RFC3339Nano, startAt)
				if err != nil {
					return usagef("--start-at %q: want a time like 2006-01-02T15:04:05Z (RFC 3339)", startAt)
				}
				o.StartAt = t
			}
			if err := o.Validate(); err != nil {
				return usageError{err}
			}
			o.Progress = o.Progress && isTerminal(cmd.ErrOrStderr())
			o.Command = os.Args
			rep, err := bench.Run(cmd.Context(), cmd.ErrOrStderr(), o)
			if rep == nil {
				return err
			}
			if output == "json" {
				return errors.Join(rep.WriteJSON(cmd.OutOrStdout()), err)
			}
			rep.WriteTable(cmd.OutOrStdout())
			return err
		},
	}
	f := cmd.Flags()
	addURLFlags(cmd, &o.PGURL, &o.MyURL)
	envURLVar(f, &o.StoreURL, "store", "XABRIDGE_STORE", "PostgreSQL URL of the shared decision store of mode xa-store; if empty, the --pg database's name + \"_store\" on the same server, created if missing (xa-store-own uses the --pg database)")
	f.StringVar(&o.Prefix, "table-prefix", "xab_bench", "name prefix of the benchmark's tables (PREFIX_accounts, PREFIX_transfers), [a-z][a-z0-9_]*; they are recreated")
	f.StringVar(&o.LogDir, "log-dir", ".xabridge/bench-log", "directory of the decision logs, one subdirectory per mode (put it on the disk you want to measure)")
	f.StringVar(&o.NodeID, "node-id", "bench", "prefix of the coordinator node ids (NODE-MODE must be a valid node id)")
	f.StringVarP(&output, "output", "o", "table", "output format: table or json")
	f.IntSliceVar(&o.Clients, "clients", []int{1, 8, 32, 128}, "concurrency levels, comma separated")
	f.StringSliceVar(&o.Modes, "modes", bench.ModeNames(), "modes to run, comma separated: "+strings.Join(bench.ModeNames(), ", "))
	f.DurationVar(&o.Duration, "duration", 10*time.Second, "measured time per mode and level")
	f.DurationVar(&o.Warmup, "warmup", 2*time.Second, "unmeasured time before each mode's first round at each level")
	f.IntVar(&o.Rounds, "rounds", 5, "split each measurement into this many rounds, the modes taking turns, so that load from elsewhere hits all modes alike")
	f.IntVar(&o.HotRows, "hot-rows", 0, "if > 0, every transfer picks its accounts among the first N (contention); 0: each client has its own")
	f.DurationVar(&o.CommitDelay, "commit-delay", 0, "group-commit delay of the file log and of the shared store (decisionlog.FileLogOptions.CommitDelay, pgstore.Options.CommitDelay)")
	f.BoolVar(&o.Progress, "progress", true, "show a progress bar on stderr when it is a terminal")
	f.StringVar(&o.CPUProfile, "cpuprofile", "", "write a pprof CPU profile of the whole run to this file")
	f.StringVar(&startAt, "start-at", "", "start measuring at this time (RFC 3339), after the setup: processes started together measure the same window (scripts/bench-processes)")
	return cmd
}
