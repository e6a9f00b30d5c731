package crashcheck

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/xabridge/xabridge/decisionlog"
	"github.com/xabridge/xabridge/drivers"
	"github.com/xabridge/xabridge/internal/bank"
	"github.com/xabridge/xabridge/recovery"
	"github.com/xabridge/xabridge/xa"
)

// RecoverConfig says how to recover after a coordinator was killed.
type RecoverConfig struct {
	Bank   *bank.Bank
	LogDir string // the dead coordinator's decision log
	Node   string // its node id
	// Settle is recovery's two-scan wait (recovery.Config.Settle; 0 means
	// its default of one second).
	Settle time.Duration
	// Interval between recovery passes (default 100ms).
	Interval time.Duration
	// Timeout bounds the whole recovery (default 60s).
	Timeout time.Duration
	// RecoveryOnly runs recovery alone on the log, as an operator's
	// `xabridge recover --min-age 0s` does, without restarting a
	// coordinator (which would finish logged decisions itself).
	RecoveryOnly bool
	// Keeper is where the dead coordinator kept its commit decisions; the
	// restarted coordinator and recovery are configured with it.
	Keeper Keeper
	Logger *slog.Logger
}

// RecoverResult is what recovery after a crash did.
type RecoverResult struct {
	Passes     int
	Committed  int // branches recovery committed
	RolledBack int // branches recovery rolled back
	// Entries is the decision log afterwards; Compacted says whether the
	// log was ever compacted (finished transactions dropped).
	Entries   []decisionlog.Entry
	Compacted bool
	// KeptLeft counts the node's commit decisions still in a decision
	// table afterwards (recovery deletes them once every branch is done).
	KeptLeft int
	Elapsed  time.Duration
}

// ErrNotSettled is returned when recovery could not finish every branch of
// the node within the timeout.
var ErrNotSettled = errors.New("crashcheck: recovery did not settle every branch in time")

// RecoverAfterCrash does what a service or an operator does after a
// coordinator died: it restarts a coordinator on the same log (which
// resumes phase 2 of every logged commit decision) and runs recovery passes
// beside it, as a restarted service does: without the fence for the dead
// process's transactions (DeadBefore: the restarted coordinator's start;
// the log lock proves the old process is gone) and with the two-scan Settle
// rule kept, until no branch of the node is prepared and no decision is
// pending. With RecoveryOnly it runs recovery alone, as an operator's
// `xabridge recover --min-age 0s` does (MinAge 0).
func RecoverAfterCrash(ctx context.Context, cfg RecoverConfig) (RecoverResult, error) {
	start := time.Now()
	var res RecoverResult
	if cfg.Interval <= 0 {
		cfg.Interval = 100 * time.Millisecond
	}
	if cfg.Timeout <= 0 {
		cfg.Timeout = 60 * time.Second
	}
	ctx, cancel := context.WithTimeout(ctx, cfg.Timeout)
	defer cancel()
	resources := []drivers.Resource{cfg.Bank.PG, cfg.Bank.My}
	var log decisionlog.Log
	var active func(drivers.GlobalID) bool
	var deadBefore time.Time
	var minAge *time.Duration
	closeAll := func() error { return nil }
	if cfg.RecoveryOnly {
		zero := time.Duration(0)
		minAge = &zero
		fl, err := decisionlog.OpenFileLog(cfg.LogDir, decisionlog.FileLogOptions{Node: cfg.Node})
		if err != nil {
			return res, fmt.Errorf("opening the decision log: %w", err)
		}
		log, closeAll = fl, fl.Close
	} else {
		coord, err := xa.New(ctx, xa.Config{NodeID: cfg.Node, LogDir: cfg.LogDir, Resources: resources, Logger: cfg.Logger,
			DecisionResource: cfg.Keeper.resource(cfg.Bank)})
		if err != nil {
			return res, fmt.Errorf("restarting the coordinator: %w", err)
		}
		log, active, closeAll = coord.Log(), coord.Active, coord.Close
		deadBefore = coord.Started()
	}
	closed := false
	defer func() {
		if !closed {
			_ = closeAll()
		}
	}()
	rec, err := recovery.New(recovery.Config{
		NodeID: cfg.Node, Log: log, Resources: resources, Active: active,
		MinAge: minAge, DeadBefore: deadBefore, Settle: cfg.Settle, Logger: cfg.Logger,
		DecisionResource: cfg.Keeper.resource(cfg.Bank),
	})
	if err != nil {
		return res, err
	}
	var last string
	for {
		rep := rec.Pass(ctx, false)
		res.Passes++
		ours := 0
		for _, b := range rep.Branches {
			if !b.Ours || b.XID.Global.Node() != cfg.Node {
				continue
			}
			switch b.Result {
			case "committed":
				res.Committed++
			case "rolled back":
				res.RolledBack++
			}
			if b.Result == "" || b.Err != nil || b.Result == "busy: retry later" {
				ours++
				last = fmt.Sprintf("%s on %s: %s %s (%s)", b.XID.GID(), b.Resource, b.Class, b.Action, b.Reason)
			}
		}
		pending := 0
		for _, d := range log.Pending() {
			if d.GTRID.Node() == cfg.Node {
				pending++
			}
		}
		kept, err := keptCommits(ctx, cfg)
		if err != nil {
			return res, err
		}
		if len(rep.ScanErrors) == 0 && ours == 0 && pending == 0 && kept == 0 {
			break
		}
		if len(rep.ScanErrors) > 0 {
			last = fmt.Sprintf("scan error on %s: %v", rep.ScanErrors[0].Resource, rep.ScanErrors[0].Err)
		} else if ours == 0 && pending > 0 {
			last = fmt.Sprintf("%d commit decisions still pending", pending)
		} else if ours == 0 {
			last = fmt.Sprintf("%d commit decisions still in a decision table", kept)
		}
		select {
		case <-ctx.Done():
			return res, fmt.Errorf("%w after %d passes: %s", ErrNotSettled, res.Passes, last)
		case <-time.After(cfg.Interval):
		}
	}
	if fl, ok := log.(*decisionlog.FileLog); ok {
		res.Entries = fl.Entries()
		res.Compacted = fl.Stats().Compactions > 0
	}
	res.Elapsed = time.Since(start)
	closed = true
	if err := closeAll(); err != nil {
		return res, err
	}
	// Counted again once the restarted coordinator is closed: closing
	// must not leave (or bring back) a decision row.
	if res.KeptLeft, err = keptCommits(ctx, cfg); err != nil {
		return res, err
	}
	return res, nil
}

// keptCommits counts the commit decisions of cfg.Node in the decision
// tables of both databases. Until recovery (or the restarted coordinator)
// has deleted them, the rows of finished transactions count too.
func keptCommits(ctx context.Context, cfg RecoverConfig) (int, error) {
	n := 0
	for _, k := range []decisionlog.Keeper{cfg.Bank.PG, cfg.Bank.My} {
		kept, err := k.ListDecisions(ctx)
		if err != nil {
			return 0, fmt.Errorf("listing the decisions kept in %s: %w", k.Name(), err)
		}
		for _, d := range kept {
			if !d.Abort && d.GTRID.Node() == cfg.Node {
				n++
			}
		}
	}
	return n, nil
}
