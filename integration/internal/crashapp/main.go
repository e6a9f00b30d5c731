// Command crashapp is the coordinator process the crash tests kill: it runs
// bank transfers through a real coordinator on a decision log, writes a
// journal of what each caller was told to stdout, and, when a crash point is
// armed (XABRIDGE_CRASH_POINT, XABRIDGE_CRASH_NTH), dies by SIGKILL at that
// protocol step. With -store it runs as a replica on a shared decision store
// (node lease, in-process recovery and takeover of expired peers); SIGTERM
// or SIGINT then stops it cleanly (the lease is released), and a node id
// held by a live process makes it exit with status 3. The tests build it
// with go build into a temporary directory.
package main

import (
	"context"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/xabridge/xabridge/internal/crashcheck"
)

func main() {
	if err := run(); err != nil {
		fmt.Fprintln(os.Stderr, "crashapp:", err)
		if crashcheck.IsNodeLeased(err) {
			os.Exit(crashcheck.ExitNodeLeased)
		}
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
	flag.StringVar(&cfg.Store.URL, "store", "", "shared decision store (PostgreSQL URL) instead of -log-dir")
	flag.StringVar(&cfg.Store.Schema, "store-schema", "", "the store's PostgreSQL schema")
	flag.DurationVar(&cfg.Store.LeaseTTL, "lease-ttl", 0, "node lease TTL on the store (0: the default)")
	flag.DurationVar(&cfg.Store.RecoverEvery, "recover-every", 0, "interval of the replica's recovery passes (0: TTL/2)")
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
		if cfg.CrashStop, err = crashcheck.CrashStopFromEnv(); err != nil {
			return err
		}
	}
	cfg.Logger = slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
	// SIGTERM ends the workload; the coordinator (and the lease) are
	// then closed cleanly, as a replica being rolled would be.
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, os.Interrupt)
	defer stop()
	return crashcheck.RunChild(ctx, cfg, os.Stdout)
}
