package main

import (
	"io"
	"os"
	"time"

	"github.com/spf13/cobra"
	"golang.org/x/term"

	"github.com/xabridge/xabridge/internal/selfcheck"
)

func newSelfcheckCmd() *cobra.Command {
	var o selfcheck.Options
	var sf storeFlags
	cmd := &cobra.Command{
		Use:   "selfcheck",
		Short: "Kill the coordinator at random while it moves money, recover, and check nothing was lost",
		Long: `selfcheck proves atomicity on your own databases: it runs the bank-transfer
workload (see "xabridge demo") in child processes of its own, kills each one
with SIGKILL at a random moment or at a random step of the two-phase commit
protocol, restarts a coordinator on the same decision log or runs recovery
alone, and checks the invariants after every kill: the total money is
unchanged, every transfer is in both databases or in neither, what each
caller was told is what the databases hold, the decision log agrees with
them, and no prepared branch is left behind.

It works in its own tables (PREFIX_accounts, PREFIX_transfers) and marks them
with a PREFIX_selfcheck table; it refuses to touch tables of that name that
it did not create. Its transactions use their own node id and a decision log
in a fresh directory, never a production coordinator's. The tables are
dropped afterwards unless a check failed (then they are kept to look at) or
--keep is given. Run one selfcheck per --node-id at a time: its recovery
rolls back that node's branches it finds unfinished.

With --store the children keep their decisions in the shared decision store
(a PostgreSQL database) and run as replicas holding the node's lease; the
check's tables go in --store-schema (default PREFIX_store, dropped
afterwards if the check created it), never mixed with a coordinator's. After
each kill it waits for the killed child's lease to expire (--lease-ttl),
then either restarts a coordinator under the node id or takes the node over
from another node id (selfcheck-op), as a surviving replica would.

Exit codes: 0 all invariants held, 1 a violation or an error, 2 usage error,
3 prepared branches were left behind.`,
		Example: `  xabridge selfcheck --pg postgres://u:p@db1/app --mysql mysql://u:p@db2/app --duration 2m
  xabridge selfcheck --store postgres://u:p@db1/app --duration 2m   # coordinators as replicas on a shared store`,
		Args: noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			so, err := sf.options(cmd.Flags().Changed("log-dir"))
			if err != nil {
				return err
			}
			o.Store = so
			if err := o.Validate(); err != nil {
				return usageError{err}
			}
			o.Progress = o.Progress && isTerminal(cmd.ErrOrStderr())
			return selfcheck.Run(cmd.Context(), cmd.OutOrStdout(), cmd.ErrOrStderr(), o)
		},
	}
	f := cmd.Flags()
	addURLFlags(cmd, &o.PGURL, &o.MyURL)
	f.StringVar(&o.Prefix, "table-prefix", "xab_selfcheck", "name prefix of the check's tables, [a-z][a-z0-9_]* (at most 40 characters)")
	f.DurationVar(&o.Duration, "duration", 30*time.Second, "how long to run")
	f.IntVar(&o.Workers, "workers", 4, "concurrent transfers in each child process")
	f.IntVar(&o.Accounts, "accounts", 20, "accounts on each database")
	f.Int64Var(&o.Balance, "balance", 1000, "starting balance of each account")
	f.StringVar(&o.NodeID, "node-id", "selfcheck", "coordinator node id of the check's transactions, [a-z0-9-]{1,24}; must not be a production node's")
	f.StringVar(&o.LogDir, "log-dir", "", "decision log directory for the check (default: a fresh temporary directory)")
	f.Uint64Var(&o.Seed, "seed", 0, "random seed (default: from the clock)")
	f.BoolVar(&o.Progress, "progress", true, "show a progress bar on stderr when it is a terminal")
	f.BoolVar(&o.Keep, "keep", false, "keep the check's tables afterwards")
	sf.add(f)
	f.DurationVar(&o.LeaseTTL, "lease-ttl", 0, "with --store: the children's node lease TTL (default 2s; recovery after each kill waits for it)")
	cmd.AddCommand(&cobra.Command{
		Use:    "child",
		Short:  "selfcheck's workload process (internal)",
		Hidden: true,
		Args:   noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return selfcheck.RunChild(cmd.Context(), cmd.OutOrStdout(), cmd.ErrOrStderr())
		},
	})
	return cmd
}

// isTerminal reports whether w is a terminal (a progress bar redrawn in a
// log file is noise).
func isTerminal(w io.Writer) bool {
	f, ok := w.(*os.File)
	return ok && term.IsTerminal(int(f.Fd()))
}
