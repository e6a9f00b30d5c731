package crashcheck

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"strings"
	"time"

	"github.com/xabridge/xabridge/drivers"
	"github.com/xabridge/xabridge/internal/bank"
	"github.com/xabridge/xabridge/internal/startup"
	"github.com/xabridge/xabridge/recovery"
	"github.com/xabridge/xabridge/xa"
)

// ChildConfig configures the workload process the crash tests and
// selfcheck start and kill: a coordinator on LogDir running transfers, or,
// with Store set, a replica on a shared decision store (package replica):
// several such processes with distinct node ids share one store, each
// running its own recovery and the takeover of expired peers.
type ChildConfig struct {
	PGURL, MyURL string
	Prefix       string // bank table prefix
	LogDir, Node string
	// Store, if set, is the PostgreSQL URL of the shared decision store;
	// LogDir is then not used.
	Store    StoreConfig
	Order    Order
	Workers  int
	Count    int // 0: until ctx ends
	Accounts int
	Seed     uint64
	Timeout  time.Duration // per global transaction (xa.Config.Timeout; default 5s)
	// Keeper, if set, keeps the commit decisions in a participant instead
	// of the log (xa.Config.DecisionResource): KeeperPG or KeeperMy.
	Keeper Keeper
	// Crash, if set, kills the process with SIGKILL at the CrashNth event
	// of that protocol step.
	Crash    *CrashPoint
	CrashNth int
	// CrashStop makes the crash point stop the process (SIGSTOP, after a
	// "note pause" line) instead of killing it; it goes on after SIGCONT.
	CrashStop bool
	// RecoverAtStart runs the restart fast path before the workload: a
	// recovery pass (PassSettled) with DeadBefore set to the coordinator's
	// start, which rolls back an earlier, killed process's undecided
	// branches without waiting for their fence. It writes a
	// "note restart-recovery ..." line (see StartupRecovery).
	RecoverAtStart bool
	Logger         *slog.Logger
}

// Validate checks the configuration and names the first problem.
func (c *ChildConfig) Validate() error {
	switch {
	case c.PGURL == "" || c.MyURL == "":
		return errors.New("crashcheck: both database URLs are needed")
	case c.LogDir == "" && c.Store.URL == "":
		return errors.New("crashcheck: no decision log directory and no store")
	case c.Store.URL != "" && c.Store.LeaseTTL < 0:
		return errors.New("crashcheck: the lease TTL must not be negative")
	case c.Store.URL != "" && c.Store.RecoverEvery < 0:
		return errors.New("crashcheck: the recovery interval must not be negative")
	case c.Accounts < 1:
		return errors.New("crashcheck: accounts must be at least 1")
	case c.Workers < 1:
		return errors.New("crashcheck: workers must be at least 1")
	case c.Count < 0:
		return errors.New("crashcheck: count must not be negative")
	}
	if _, err := ParseOrder(string(c.Order)); err != nil {
		return err
	}
	if _, err := ParseKeeper(string(c.Keeper)); err != nil {
		return err
	}
	return drivers.ValidateNodeID(c.Node)
}

// RunChild runs the workload of one child process and writes its journal to
// out. If a crash point is armed, the process dies by SIGKILL when it is
// reached (after a "note crash" line); otherwise RunChild returns once the
// workload is done, after a "stats" line.
func RunChild(ctx context.Context, cfg ChildConfig, out io.Writer) error {
	if err := cfg.Validate(); err != nil {
		return err
	}
	if cfg.Timeout <= 0 {
		cfg.Timeout = 5 * time.Second
	}
	b, err := bank.Open(ctx, cfg.PGURL, cfg.MyURL, cfg.Workers)
	if err != nil {
		return err
	}
	defer b.Close()
	if err := b.SetPrefix(cfg.Prefix); err != nil {
		return err
	}
	j := NewJournalWriter(out)
	xcfg := xa.Config{
		NodeID:    cfg.Node,
		LogDir:    cfg.LogDir,
		Resources: []drivers.Resource{b.PG, b.My},
		Timeout:   cfg.Timeout,
		Logger:    cfg.Logger,

		DecisionResource: cfg.Keeper.resource(b),
	}
	if cfg.Crash != nil {
		xcfg.Hook = cfg.Crash.Hook(cfg.CrashNth, func(s xa.Step, info xa.StepInfo) {
			if cfg.CrashStop {
				j.line(fmt.Sprintf("note pause %s %s\n", cfg.Crash.Name, info.GTRID))
				StopSelf()
				return
			}
			j.line(fmt.Sprintf("note crash %s %s\n", cfg.Crash.Name, info.GTRID))
			KillSelf()
		})
	}
	var coord *xa.Coordinator
	closeAll := func() error { return coord.Close() }
	held := func() bool { return false }
	var lockWait time.Duration
	if cfg.Store.URL != "" {
		// The replica holds the node's lease and lock and runs the fast
		// path in its own first pass.
		xcfg.LogDir = ""
		r, closeStore, err := openReplica(ctx, cfg, xcfg)
		if err != nil {
			return err
		}
		coord, closeAll = r.Coordinator(), closeStore
		j.line(fmt.Sprintf("note ready %s %d\n", cfg.Node, r.Store().Epoch()))
	} else {
		if cfg.RecoverAtStart {
			// The node's lock in both databases before the fast path: a
			// killed predecessor's is released by the servers as its
			// sessions end (LockNode waits for that, bounded); a live one
			// refuses us.
			start := time.Now()
			locks, err := recovery.LockNode(ctx, cfg.Node, xcfg.Resources, recovery.DefaultNodeLockWait, cfg.Logger)
			if err != nil {
				return err
			}
			lockWait = time.Since(start)
			defer locks.Close()
			held = locks.Held
		}
		var err error
		if coord, err = xa.New(ctx, xcfg); err != nil {
			return err
		}
		j.line(fmt.Sprintf("note ready %s 0\n", cfg.Node))
	}
	if cfg.RecoverAtStart {
		line, err := StartupRecovery(ctx, coord, cfg.Keeper.resource(b), held, cfg.Logger)
		if err != nil {
			_ = closeAll()
			return err
		}
		j.line(strings.TrimSuffix(line, "\n") + fmt.Sprintf(" lock-wait %d\n", lockWait.Milliseconds()))
	}
	// The end of ctx stops the workload from starting transfers; those in
	// flight finish, so that a clean stop leaves nothing in doubt.
	w := &Workload{Bank: b, Coord: coord, Order: cfg.Order, Workers: cfg.Workers, Count: cfg.Count,
		Accounts: cfg.Accounts, Seed: cfg.Seed, Journal: j, Stop: ctx.Done()}
	st := w.Run(context.WithoutCancel(ctx))
	j.line("stats " + st.String() + "\n")
	return closeAll()
}

// Keeper names the participant that keeps the commit decisions, if any.
type Keeper string

// Decision keepers.
const (
	KeeperNone Keeper = ""      // the decision log
	KeeperPG   Keeper = "pg"    // the PostgreSQL participant
	KeeperMy   Keeper = "mysql" // the MariaDB participant
)

// ParseKeeper checks a decision keeper name ("" or "log" for none).
func ParseKeeper(s string) (Keeper, error) {
	switch k := Keeper(s); k {
	case KeeperNone, KeeperPG, KeeperMy:
		return k, nil
	case "log":
		return KeeperNone, nil
	}
	return "", fmt.Errorf("crashcheck: decision keeper %q: want log, pg or mysql", s)
}

// resource returns the name of b's resource that keeps the decisions, or
// "" for the log.
func (k Keeper) resource(b *bank.Bank) string {
	switch k {
	case KeeperPG:
		return b.PG.Name()
	case KeeperMy:
		return b.My.Name()
	}
	return ""
}

// StartupRecovery is the restart fast path of a coordinator process
// (startup.Recover): one recovery.PassSettled beside coord with
// DeadBefore = coord.Started(), so
// that the branches an earlier, dead process of the node left undecided
// are rolled back now, not after their fence (coord holds the log's lock,
// and the caller the node's lock in the databases while deadBeforeValid
// says so: that process is dead). keeper is the decision resource, if any. It
// returns the journal line that reports it:
//
//	note restart-recovery MS rolled-back N committed N left N
//
// with MS the time the pass took in milliseconds and left the node's
// branches still prepared after it. RunChild appends "lock-wait MS", the
// time taken by the node's lock (a killed predecessor's sessions ending).
func StartupRecovery(ctx context.Context, coord *xa.Coordinator, keeper string, deadBeforeValid func() bool, logger *slog.Logger) (string, error) {
	r, err := startup.Recover(ctx, coord, keeper, deadBeforeValid, logger)
	if err != nil {
		return "", err
	}
	return fmt.Sprintf("note restart-recovery %d rolled-back %d committed %d left %d\n",
		r.Took.Milliseconds(), r.RolledBack, r.Committed, r.Left), nil
}
