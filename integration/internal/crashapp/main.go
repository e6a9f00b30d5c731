// Command crashapp is the coordinator process the crash tests kill: it runs
// bank transfers through a real coordinator on a decision log, writes a
// journal of what each caller was told to stdout, and, when a crash point is
// armed (XABRIDGE_CRASH_POINT, XABRIDGE_CRASH_NTH), dies by SIGKILL at that
// protocol step. The tests build it with go build into a temporary directory.
package main

import (
	"context"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"time"

	"github.com/xabridge/xabridge/internal/crashcheck"
)

func main() {
	if err := run(); err != nil {
		fmt.Fprintln(os.Stderr, "crashapp:", err)
		os.Exit(1)
	}
}

func run() (err error) {
	var cfg crashcheck.ChildConfig
	var order, keeper string
	var seed uint64
	flag.StringVar(&cfg.PGURL, "pg", "", "PostgreSQL URL")
	flag.StringVar(&cfg.MyURL, "mysql", "", "MySQL/MariaDB URL")
	flag.StringVar(&cfg.Prefix, "prefix", "", "bank table prefix")
	flag.StringVar(&cfg.LogDir, "log-dir", "", "decision log directory")
	flag.StringVar(&cfg.Node, "node", "", "coordinator node id")
	flag.StringVar(&order, "order", string(crashcheck.PGFirst), "enlist order: pg-first, my-first or mixed")
	flag.IntVar(&cfg.Workers, "workers", 2, "concurrent transfers")
	flag.IntVar(&cfg.Count, "count", 20, "transfers in all (0: until killed)")
	flag.IntVar(&cfg.Accounts, "accounts", 10, "accounts on each database")
	flag.StringVar(&keeper, "keeper", "log", "where commit decisions are kept: log, pg or mysql")
	flag.Uint64Var(&seed, "seed", 1, "random seed")
	flag.DurationVar(&cfg.Timeout, "timeout", 5*time.Second, "global transaction timeout")
	flag.BoolVar(&cfg.RecoverAtStart, "recover-at-start", false, "before the workload, roll back what an earlier, killed process of the node left undecided (recovery with DeadBefore)")
	flag.Parse()
	if flag.NArg() > 0 {
		return fmt.Errorf("unexpected argument %q", flag.Arg(0))
	}
	cfg.Order = crashcheck.Order(order)
	if cfg.Keeper, err = crashcheck.ParseKeeper(keeper); err != nil {
		return err
	}
	cfg.Seed = seed
	cp, nth, armed, err := crashcheck.CrashFromEnv()
	if err != nil {
		return err
	}
	if armed {
		cfg.Crash, cfg.CrashNth = &cp, nth
	}
	cfg.Logger = slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
	return crashcheck.RunChild(context.Background(), cfg, os.Stdout)
}
