package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"os"
	"os/exec"
	"strconv"
	"sync"
	"syscall"
	"time"

	"github.com/schollz/progressbar/v3"
	"github.com/spf13/cobra"
	"golang.org/x/term"

	"github.com/xabridge/xabridge/drivers"
	"github.com/xabridge/xabridge/internal/bank"
	"github.com/xabridge/xabridge/internal/chaos"
)

// Environment variables that pass the database URLs to selfcheck's child
// processes (not their command lines, which other users can read).
const (
	envSelfcheckPG    = "XABRIDGE_SELFCHECK_PG"
	envSelfcheckMySQL = "XABRIDGE_SELFCHECK_MYSQL"
)

type selfcheckOpts struct {
	pgURL, myURL   string
	prefix         string
	accounts       int
	balance        int64
	nodeID, logDir string
	duration       time.Duration
	workers        int
	seed           uint64
	progress       bool
	keep           bool
}

func newSelfcheckCmd() *cobra.Command {
	o := &selfcheckOpts{}
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

Exit codes: 0 all invariants held, 1 a violation or an error, 2 usage error,
3 prepared branches were left behind.`,
		Example: `  xabridge selfcheck --pg postgres://u:p@db1/app --mysql mysql://u:p@db2/app --duration 2m`,
		Args:    noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			// Environment defaults are read here, not shown as flag
			// defaults: --help must not print a URL with its password.
			o.pgURL, o.myURL = first(o.pgURL, os.Getenv("XABRIDGE_PG")), first(o.myURL, os.Getenv("XABRIDGE_MYSQL"))
			if o.pgURL == "" || o.myURL == "" {
				return usagef("both --pg and --mysql are needed (or XABRIDGE_PG and XABRIDGE_MYSQL)")
			}
			if o.duration <= 0 || o.workers < 1 || o.accounts < 1 || o.balance < 1 {
				return usagef("--duration must be positive, --workers, --accounts and --balance at least 1")
			}
			if err := drivers.ValidateNodeID(o.nodeID); err != nil {
				return usagef("--node-id: %v", err)
			}
			return runSelfcheck(cmd.Context(), cmd.OutOrStdout(), cmd.ErrOrStderr(), o)
		},
	}
	f := cmd.Flags()
	f.StringVar(&o.pgURL, "pg", "", "PostgreSQL URL, postgres://user:pass@host:port/db (env XABRIDGE_PG)")
	f.StringVar(&o.myURL, "mysql", "", "MySQL/MariaDB URL, mysql://user:pass@host:port/db (env XABRIDGE_MYSQL)")
	f.StringVar(&o.prefix, "table-prefix", "xab_selfcheck", "name prefix of the check's tables, [a-z][a-z0-9_]* (at most 40 characters)")
	f.DurationVar(&o.duration, "duration", 30*time.Second, "how long to run")
	f.IntVar(&o.workers, "workers", 4, "concurrent transfers in each child process")
	f.IntVar(&o.accounts, "accounts", 20, "accounts on each database")
	f.Int64Var(&o.balance, "balance", 1000, "starting balance of each account")
	f.StringVar(&o.nodeID, "node-id", "selfcheck", "coordinator node id of the check's transactions, [a-z0-9-]{1,24}; must not be a production node's")
	f.StringVar(&o.logDir, "log-dir", "", "decision log directory for the check (default: a fresh temporary directory)")
	f.Uint64Var(&o.seed, "seed", 0, "random seed (default: from the clock)")
	f.BoolVar(&o.progress, "progress", true, "show a progress bar on stderr when it is a terminal")
	f.BoolVar(&o.keep, "keep", false, "keep the check's tables afterwards")
	cmd.AddCommand(newSelfcheckChildCmd())
	return cmd
}

// newSelfcheckChildCmd is the hidden child: one coordinator process running
// transfers until it is killed (or its crash point kills it).
func newSelfcheckChildCmd() *cobra.Command {
	var cfg chaos.ChildConfig
	var order string
	cmd := &cobra.Command{
		Use:    "child",
		Short:  "selfcheck's workload process (internal)",
		Hidden: true,
		Args:   noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			cfg.PGURL, cfg.MyURL = os.Getenv(envSelfcheckPG), os.Getenv(envSelfcheckMySQL)
			cfg.Order = chaos.Order(order)
			cp, nth, armed, err := chaos.CrashFromEnv()
			if err != nil {
				return usageError{err}
			}
			if armed {
				cfg.Crash, cfg.CrashNth = &cp, nth
			}
			cfg.Logger = slog.New(slog.NewTextHandler(cmd.ErrOrStderr(), &slog.HandlerOptions{Level: slog.LevelError}))
			return chaos.RunChild(cmd.Context(), cfg, cmd.OutOrStdout())
		},
	}
	f := cmd.Flags()
	f.StringVar(&cfg.Prefix, "table-prefix", "", "")
	f.StringVar(&cfg.LogDir, "log-dir", "", "")
	f.StringVar(&cfg.Node, "node-id", "", "")
	f.StringVar(&order, "order", string(chaos.Mixed), "")
	f.IntVar(&cfg.Workers, "workers", 4, "")
	f.IntVar(&cfg.Accounts, "accounts", 20, "")
	f.Uint64Var(&cfg.Seed, "seed", 1, "")
	return cmd
}

// selfcheckTotals is what the check counted.
type selfcheckTotals struct {
	kills, transactions, violations, stranded int
	transfers                                 int
	viol                                      []string
}

func runSelfcheck(ctx context.Context, out, errw io.Writer, o *selfcheckOpts) (err error) {
	exe, err := os.Executable()
	if err != nil {
		return fmt.Errorf("selfcheck: cannot find its own executable to start children: %w", err)
	}
	b, err := bank.Open(ctx, o.pgURL, o.myURL, 4)
	if err != nil {
		return err
	}
	defer b.Close()
	if err := b.SetPrefix(o.prefix); err != nil {
		return usageError{err}
	}
	if err := claimTables(ctx, b, o.prefix); err != nil {
		return err
	}
	if err := b.Setup(ctx, o.accounts, o.balance); err != nil {
		return err
	}
	if o.logDir == "" {
		if o.logDir, err = os.MkdirTemp("", "xabridge-selfcheck-"); err != nil {
			return err
		}
		defer os.RemoveAll(o.logDir)
	}
	seed := o.seed
	if seed == 0 {
		seed = uint64(time.Now().UnixNano())
	}
	rng := rand.New(rand.NewPCG(seed, 0x5e1f))
	total := int64(o.accounts) * o.balance * 2
	fmt.Fprintf(out, "xabridge selfcheck: %s of random SIGKILLs against postgres %s and mysql %s, tables %s_*, node %s, seed %d\n",
		o.duration, hostOf(o.pgURL), hostOf(o.myURL), o.prefix, o.nodeID, seed)

	var tot selfcheckTotals
	var mu sync.Mutex
	start := time.Now()
	stopBar := startBar(errw, o.progress && isTerminal(errw), o.duration, start, func() string {
		mu.Lock()
		defer mu.Unlock()
		return fmt.Sprintf("kills %d, transactions %d, violations %d", tot.kills, tot.transactions, tot.violations)
	})
	points := append(chaos.MatrixPoints(), "after-all-prepared", "after-end")
	for round := 0; time.Since(start) < o.duration && ctx.Err() == nil; round++ {
		crash, nth, killAfter := "", 1, time.Duration(0)
		if round%2 == 0 {
			killAfter = time.Duration(100+rng.IntN(900)) * time.Millisecond
		} else {
			crash, nth = points[rng.IntN(len(points))], 1+rng.IntN(30)
		}
		j, killed, err := o.runChild(ctx, exe, crash, nth, killAfter, rng.Uint64())
		if err != nil {
			stopBar()
			return err
		}
		rr, err := chaos.RecoverAfterCrash(ctx, chaos.RecoverConfig{
			Bank: b, LogDir: o.logDir, Node: o.nodeID, RecoveryOnly: round%4 >= 2, Timeout: 2 * time.Minute,
		})
		if err != nil {
			stopBar()
			return fmt.Errorf("selfcheck: recovery after kill %d: %w", tot.kills+1, err)
		}
		res, err := chaos.Check(ctx, b, chaos.Expect{Node: o.nodeID, Total: total, Journal: j, Entries: rr.Entries, LogCompacted: rr.Compacted})
		if err != nil {
			stopBar()
			return fmt.Errorf("selfcheck: checking the invariants: %w", err)
		}
		mu.Lock()
		if killed {
			tot.kills++
		}
		tot.transactions += len(j)
		tot.violations += len(res.Violations)
		tot.viol = append(tot.viol, res.Violations...)
		tot.stranded = res.Stranded
		tot.transfers = res.Transfers
		mu.Unlock()
	}
	stopBar()
	if err := ctx.Err(); err != nil {
		return err
	}
	fmt.Fprintf(out, "kills         %d\ntransactions  %d\ntransfers     %d committed (in both databases)\nviolations    %d\nstranded      %d prepared branches left\nelapsed       %s\n",
		tot.kills, tot.transactions, tot.transfers, tot.violations, tot.stranded, time.Since(start).Round(time.Second))
	for _, v := range tot.viol {
		fmt.Fprintln(out, "  violation:", v)
	}
	switch {
	case tot.violations > 0:
		fmt.Fprintf(out, "FAIL: atomicity violated; tables %s_* kept for inspection\n", o.prefix)
		return fmt.Errorf("selfcheck found %d violation(s)", tot.violations)
	case tot.stranded > 0:
		fmt.Fprintf(out, "FAIL: prepared branches left behind; tables %s_* kept for inspection\n", o.prefix)
		return fmt.Errorf("%w: %d prepared branch(es) of node %s", errInDoubtRemain, tot.stranded, o.nodeID)
	case tot.kills == 0:
		return errors.New("selfcheck: no child was killed; run it longer (--duration)")
	}
	fmt.Fprintln(out, "ok: every invariant held after every kill")
	if !o.keep {
		if err := dropTables(ctx, b, o.prefix); err != nil {
			return err
		}
	}
	return nil
}

// runChild starts one workload child and waits for its death: by its armed
// crash point, or by SIGKILL from here after killAfter. killed reports
// whether it died by SIGKILL.
func (o *selfcheckOpts) runChild(ctx context.Context, exe, crash string, nth int, killAfter time.Duration, seed uint64) (chaos.Journal, bool, error) {
	cmd := exec.CommandContext(ctx, exe, "selfcheck", "child",
		"--table-prefix", o.prefix, "--log-dir", o.logDir, "--node-id", o.nodeID, "--order", string(chaos.Mixed),
		"--workers", strconv.Itoa(o.workers), "--accounts", strconv.Itoa(o.accounts), "--seed", strconv.FormatUint(seed, 10))
	cmd.Env = append(os.Environ(), envSelfcheckPG+"="+o.pgURL, envSelfcheckMySQL+"="+o.myURL,
		chaos.EnvCrashPoint+"="+crash, chaos.EnvCrashNth+"="+strconv.Itoa(nth))
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Start(); err != nil {
		return nil, false, fmt.Errorf("selfcheck: starting a child: %w", err)
	}
	if killAfter > 0 {
		t := time.AfterFunc(killAfter, func() { _ = cmd.Process.Signal(syscall.SIGKILL) })
		defer t.Stop()
	}
	werr := cmd.Wait()
	killed := false
	if ws, ok := cmd.ProcessState.Sys().(syscall.WaitStatus); ok && ws.Signaled() && ws.Signal() == syscall.SIGKILL {
		killed = true
	}
	if ctx.Err() != nil {
		return nil, false, ctx.Err()
	}
	if werr != nil && !killed {
		return nil, false, fmt.Errorf("selfcheck: a child failed: %v\n%s", werr, bytes.TrimSpace(stderr.Bytes()))
	}
	j, err := chaos.ReadJournal(&stdout)
	if err != nil {
		return nil, false, err
	}
	return j, killed, nil
}

// startBar shows a progress bar over the duration, refreshed until the
// returned stop function is called.
func startBar(w io.Writer, show bool, d time.Duration, start time.Time, describe func() string) (stop func()) {
	if !show {
		return func() {}
	}
	bar := progressbar.NewOptions64(int64(d/time.Second),
		progressbar.OptionSetWriter(w),
		progressbar.OptionSetWidth(30),
		progressbar.OptionSetDescription(describe()),
		progressbar.OptionShowDescriptionAtLineEnd(),
		progressbar.OptionSetPredictTime(false),
		progressbar.OptionThrottle(200*time.Millisecond),
	)
	done := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		t := time.NewTicker(250 * time.Millisecond)
		defer t.Stop()
		for {
			select {
			case <-done:
				return
			case <-t.C:
				bar.Describe(describe())
				_ = bar.Set64(min(int64(time.Since(start)/time.Second), int64(d/time.Second)))
			}
		}
	}()
	var once sync.Once
	return func() {
		once.Do(func() {
			close(done)
			wg.Wait()
			bar.Describe(describe())
			_ = bar.Finish()
			fmt.Fprintln(w)
		})
	}
}

// isTerminal reports whether w is a terminal (a progress bar redrawn in a
// log file is noise).
func isTerminal(w io.Writer) bool {
	f, ok := w.(*os.File)
	return ok && term.IsTerminal(int(f.Fd()))
}

// markerTable names the table that marks a prefix's tables as selfcheck's.
func markerTable(prefix string) string { return prefix + "_selfcheck" }

const markerText = "created by xabridge selfcheck; its tables may be dropped and recreated"

// claimTables makes sure the prefix's tables are selfcheck's to reset: on
// each database either none of them exists (then the marker is created) or
// the marker says selfcheck made them. Anything else is refused.
func claimTables(ctx context.Context, b *bank.Bank, prefix string) error {
	marker := markerTable(prefix)
	names := []string{b.Table("accounts"), b.Table("transfers"), marker}
	pgHas, myHas := map[string]bool{}, map[string]bool{}
	for _, n := range names {
		var reg *string
		if err := b.PGPool.QueryRow(ctx, "SELECT to_regclass($1)::text", n).Scan(&reg); err != nil {
			return fmt.Errorf("postgres: %w", err)
		}
		pgHas[n] = reg != nil
		var c int
		if err := b.MyDB.QueryRowContext(ctx,
			"SELECT COUNT(*) FROM information_schema.tables WHERE table_schema = DATABASE() AND table_name = ?", n).Scan(&c); err != nil {
			return fmt.Errorf("mysql: %w", err)
		}
		myHas[n] = c > 0
	}
	for _, side := range []struct {
		name string
		has  map[string]bool
	}{{"postgres", pgHas}, {"mysql", myHas}} {
		if side.has[marker] {
			continue
		}
		for _, n := range names[:2] {
			if side.has[n] {
				return fmt.Errorf("selfcheck: refusing to touch table %s on %s: it exists and selfcheck did not create it (no %s table); choose another --table-prefix", n, side.name, marker)
			}
		}
	}
	create := "CREATE TABLE IF NOT EXISTS " + marker + " (note VARCHAR(200) NOT NULL)"
	if !pgHas[marker] {
		if _, err := b.PGPool.Exec(ctx, create); err != nil {
			return fmt.Errorf("postgres: %w", err)
		}
		if _, err := b.PGPool.Exec(ctx, "INSERT INTO "+marker+" VALUES ($1)", markerText); err != nil {
			return fmt.Errorf("postgres: %w", err)
		}
	}
	if !myHas[marker] {
		if _, err := b.MyDB.ExecContext(ctx, create); err != nil {
			return fmt.Errorf("mysql: %w", err)
		}
		if _, err := b.MyDB.ExecContext(ctx, "INSERT INTO "+marker+" VALUES (?)", markerText); err != nil {
			return fmt.Errorf("mysql: %w", err)
		}
	}
	return nil
}

// dropTables removes the check's tables and their marker.
func dropTables(ctx context.Context, b *bank.Bank, prefix string) error {
	if err := b.Drop(ctx); err != nil {
		return err
	}
	q := "DROP TABLE IF EXISTS " + markerTable(prefix)
	if _, err := b.PGPool.Exec(ctx, q); err != nil {
		return fmt.Errorf("postgres: %w", err)
	}
	if _, err := b.MyDB.ExecContext(ctx, q); err != nil {
		return fmt.Errorf("mysql: %w", err)
	}
	return nil
}
