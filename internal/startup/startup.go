// Package startup is the restart fast path of a coordinator process that
// holds its node (the file log's lock, or the store's lease): one recovery
// pass over what an earlier, dead process of the node left, and the count
// of a node's branches still prepared. The demo, the crash checker's child
// process and selfcheck share it.
package startup

import (
	"context"
	"log/slog"
	"time"

	"github.com/xabridge/xabridge/drivers"
	"github.com/xabridge/xabridge/recovery"
	"github.com/xabridge/xabridge/xa"
)

// Result is what a start-up pass did.
type Result struct {
	RolledBack int           // branches rolled back (undecided, of a dead process)
	Committed  int           // branches committed (decided, not finished)
	Left       int           // branches still in doubt after the pass
	Took       time.Duration // the pass's time, recovery.New included
}

// Found reports whether the pass found anything of an earlier process.
func (r Result) Found() bool { return r.RolledBack+r.Committed+r.Left > 0 }

// Recover runs one recovery pass (recovery.PassSettled) beside coord, which
// just started, with DeadBefore = coord.Started(): the node's transactions
// that began before it are an earlier, dead process's (this process holds
// the node), so their undecided branches are rolled back at once instead
// of after their fence, and their commit decisions finished, while
// deadBeforeValid (recovery.Config.DeadBeforeValid: the node's lock in the
// databases is held; nil: always) says so. keeper is
// recovery.Config.DecisionResource ("" for none).
func Recover(ctx context.Context, coord *xa.Coordinator, keeper string, deadBeforeValid func() bool, logger *slog.Logger) (Result, error) {
	start := time.Now()
	rec, err := recovery.New(recovery.Config{
		NodeID: coord.NodeID(), Log: coord.Log(), Resources: coord.Resources(), Active: coord.Active,
		DecisionResource: keeper, DeadBefore: coord.Started(), DeadBeforeValid: deadBeforeValid, Logger: logger,
	})
	if err != nil {
		return Result{}, err
	}
	var res Result
	reps := rec.PassSettled(ctx)
	for _, rep := range reps {
		for _, b := range rep.Branches {
			switch b.Result {
			case recovery.ResultRolledBack:
				res.RolledBack++
			case recovery.ResultCommitted:
				res.Committed++
			}
		}
	}
	res.Left = reps[len(reps)-1].Remaining()
	res.Took = time.Since(start)
	return res, nil
}

// InDoubt counts the prepared branches of node on resources (xabridge's
// own, whose global id names node; node "": of any node).
func InDoubt(ctx context.Context, node string, resources ...drivers.Resource) (int, error) {
	n := 0
	for _, r := range resources {
		ps, err := r.Recover(ctx)
		if err != nil {
			return 0, err
		}
		for _, p := range ps {
			if p.Ours && (node == "" || p.XID.Global.Node() == node) {
				n++
			}
		}
	}
	return n, nil
}
