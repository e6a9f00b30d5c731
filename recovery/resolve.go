package recovery

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"time"

	"github.com/xabridge/xabridge/decisionlog"
	"github.com/xabridge/xabridge/drivers"
)

// Errors Resolve returns.
var (
	// ErrContradictsLog: the requested outcome contradicts the decision log;
	// it is refused unless forced.
	ErrContradictsLog = errors.New("refused: the requested outcome contradicts the decision log")
	// ErrUnknownTransaction: neither the log nor any resource knows the
	// global transaction.
	ErrUnknownTransaction = errors.New("unknown global transaction: no log record and no prepared branch")
	// ErrLogUnreadable: the decision log could not be read (a database
	// store unreachable, or its tables not readable): what was decided is
	// unknown, so nothing is done.
	ErrLogUnreadable = errors.New("refused: the decision log could not be read")
	// ErrNotFinishableHere: branches of the global transaction are
	// prepared on a listed server, but none where these resources may
	// finish them (another database, another role); the error says where.
	ErrNotFinishableHere = errors.New("refused: the transaction's branches are prepared where these resources cannot finish them")
	// ErrOtherNode: the transaction belongs to another coordinator node.
	ErrOtherNode = errors.New("the transaction belongs to another coordinator node")
)

// Resolve settles one global transaction by hand: every prepared branch of
// g on every resource is committed (commit true) or rolled back.
//
// An outcome that contradicts the log (commit without a commit decision,
// rollback after one) is refused with ErrContradictsLog unless force is
// set; a forced outcome is recorded in the log as a heuristic action and
// the branches it acted on are reported with class Heuristic. A rollback
// that agrees with the log (no decision) first records an abort, which
// fences out any later commit decision.
func (r *Recoverer) Resolve(ctx context.Context, g drivers.GlobalID, commit, force bool, actor string) (*Report, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	start := time.Now()
	if actor == "" {
		actor = r.cfg.Actor
	}
	if g.Node() != r.cfg.NodeID {
		return nil, fmt.Errorf("%w: %s belongs to node %q, this is %q (use that node's --node-id and --log-dir)", ErrOtherNode, g, g.Node(), r.cfg.NodeID)
	}
	// Two scans Settle apart: act only on branches present in both, so no
	// owner session can still be closing (see Config.Settle).
	first := map[drivers.XID]bool{}
	firstRep := r.scan(ctx)
	for _, b := range firstRep.Branches {
		if b.Ours && b.XID.Global == g {
			first[b.XID] = true
		}
	}
	if len(first) > 0 && r.settle() > 0 {
		t := time.NewTimer(r.settle())
		select {
		case <-ctx.Done():
			t.Stop()
			return nil, ctx.Err()
		case <-t.C:
		}
	}
	rep := r.scan(ctx)
	defer r.report(rep, KindResolve, start)
	// A resource the first scan missed may hold a branch seen only once:
	// it is reported, waiting, and the transaction is not ended.
	for _, e := range firstRep.ScanErrors {
		if !slices.ContainsFunc(rep.ScanErrors, func(x ResourceError) bool { return x.Resource == e.Resource }) {
			rep.ScanErrors = append(rep.ScanErrors, e)
		}
	}
	s := r.snapshot(ctx, rep, nil, g)
	req := resolveRequest{gtrid: g, commit: commit, force: force}
	p := s.planResolve(req, first)
	if p.fenceFirst {
		committed, err := r.fenceKeeper(ctx, g)
		if err != nil {
			rep.Branches = p.act
			return rep, fmt.Errorf("fencing the transaction in the decision keeper: %w", err)
		}
		s.fenced[g] = committed
		p = s.planResolve(req, first)
	}
	rep.Branches = p.act
	if p.err != nil {
		return rep, p.err
	}
	op := "commit"
	if !commit {
		op = "rollback"
	}
	if p.recordAbort {
		if err := r.cfg.Log.Abort(ctx, decisionlog.Action{GTRID: g, Op: "rollback", Reason: "operator resolve", Actor: actor, At: r.cfg.Now()}); err != nil {
			return rep, fmt.Errorf("recording the abort: %w", err)
		}
	}
	if p.heuristic {
		if err := r.cfg.Log.Record(ctx, decisionlog.Action{
			GTRID: g, Op: "forced-" + op, Reason: "operator forced an outcome that contradicts the log", Actor: actor, At: r.cfg.Now(), Heuristic: true,
		}); err != nil {
			return rep, fmt.Errorf("recording the heuristic outcome: %w", err)
		}
		r.logger.Error("operator forced a heuristic outcome that contradicts the decision log; atomicity may be broken",
			"gtrid", g.String(), "op", op, "actor", actor, "branches", len(rep.Branches))
	}
	for i := range rep.Branches {
		r.act(ctx, s, &rep.Branches[i])
	}
	if p.end {
		r.endOne(ctx, rep, g)
	}
	rep.Branches = append(rep.Branches, p.waiting...)
	return rep, nil
}
