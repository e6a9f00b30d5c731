package recovery

import (
	"context"
	"errors"
	"log/slog"
	"slices"
	"time"

	"github.com/xabridge/xabridge/decisionlog"
	"github.com/xabridge/xabridge/drivers"
)

// act carries out b's action and records it in b. Two decisions can turn
// up only now, and change what is done: a commit decision the keeper's
// fence finds (b is classified again with it), and one written to the log
// while recovery scanned.
func (r *Recoverer) act(ctx context.Context, s *snapshot, b *Branch) {
	if b.Action != ActionCommit && b.Action != ActionRollback {
		return
	}
	ctx, cancel := context.WithTimeout(ctx, opTimeout)
	defer cancel()
	res := r.res[b.Resource]
	g := b.XID.Global
	if b.Action == ActionRollback && b.Class == Orphan {
		// The keeper's fence first: an abort marker there excludes a
		// decision in the keeper's table, and if the decision is already
		// there nothing contradicting it must reach the log.
		committed, err := r.fenceKeeper(ctx, g)
		if err != nil {
			b.Err, b.Result = err, "not rolled back: "+err.Error()
			r.logger.Error("could not fence the transaction in the decision keeper; leaving the branch", "gtrid", g.String(), labelAttr(b.XID), "err", err)
			return
		}
		if r.fence != nil {
			s.fenced[g] = committed
			*b = s.classifyBranch(*b)
		}
	}
	if e, ok := r.cfg.Log.Lookup(g); b.Action == ActionRollback && b.Class == Orphan && !(ok && e.State == decisionlog.StateAborted) {
		// The fence: record the abort before touching the branch. Once it is
		// durable, the coordinator can no longer write a commit decision
		// for this transaction (the log refuses it), so rolling back is safe.
		err := r.cfg.Log.Abort(ctx, decisionlog.Action{GTRID: g, Op: "presume-abort", Reason: b.Reason, Actor: r.cfg.Actor, At: r.cfg.Now()})
		if err != nil {
			// A decision may have raced in: look again.
			if e, ok := r.cfg.Log.Lookup(g); ok && (e.State == decisionlog.StateCommitted || e.State == decisionlog.StateDone) {
				b.Class, b.Action, b.Reason = CommitPending, ActionCommit, "commit decision written during the scan"
			} else {
				b.Err, b.Result = err, "not rolled back: "+err.Error()
				r.logger.Error("could not record the presumed abort; leaving the branch", "gtrid", g.String(), labelAttr(b.XID), "err", err)
				return
			}
		}
	}
	op := "commit"
	if b.Action == ActionRollback {
		op = "rollback"
	}
	if err := r.cfg.Log.Record(ctx, decisionlog.Action{
		GTRID: g, Resource: b.Resource, Branch: b.XID.Branch, Op: op, Reason: b.Reason, Actor: r.cfg.Actor, At: r.cfg.Now(),
		Heuristic: b.Class == Heuristic,
	}); err != nil {
		b.Err, b.Result = err, "not done: cannot record the action: "+err.Error()
		r.logger.Error("could not record a recovery action; not acting", "gtrid", g.String(), labelAttr(b.XID), "err", err)
		return
	}
	var err error
	if b.Action == ActionCommit {
		err = res.CommitPrepared(ctx, b.XID)
	} else {
		err = res.RollbackPrepared(ctx, b.XID)
	}
	switch {
	case err == nil:
		if b.Action == ActionCommit {
			b.Result = ResultCommitted
		} else {
			b.Result = ResultRolledBack
		}
		lvl := slog.LevelInfo
		if b.Class == Heuristic {
			lvl = slog.LevelWarn
		}
		r.logger.Log(ctx, lvl, "recovery resolved a branch", "gtrid", g.String(), labelAttr(b.XID), "resource", b.Resource, "action", string(b.Action), "class", string(b.Class), "reason", b.Reason)
	case errors.Is(err, drivers.ErrNotFound):
		b.Result = ResultAlreadyFinished
	case errors.Is(err, drivers.ErrBusy):
		b.Result = ResultBusy
	default:
		b.Err, b.Result = err, "failed: "+err.Error()
		r.logger.Warn("recovery action failed; retried on the next pass", "gtrid", g.String(), labelAttr(b.XID), "resource", b.Resource, "action", string(b.Action), "err", err)
	}
}

// fenceKeeper writes the abort marker for g in the decision keeper, if one
// is configured, and reports whether the keeper holds a commit decision
// instead.
func (r *Recoverer) fenceKeeper(ctx context.Context, g drivers.GlobalID) (committed bool, err error) {
	if r.fence == nil {
		return false, nil
	}
	return r.fence.FenceAbort(ctx, g)
}

// keptRetention is how long past its deadline an abort marker is kept; like
// the log's abort records, the deadline alone fences after that.
const keptRetention = 10 * time.Minute

// forgetKept deletes from the keepers the commit decisions none of whose
// branches is still prepared, and abort markers past their retention.
func (r *Recoverer) forgetKept(ctx context.Context, rep *Report, still map[drivers.GlobalID]bool) {
	byKeeper := map[decisionlog.Keeper][]drivers.GlobalID{}
	for g, k := range rep.kept {
		if g.Node() != r.cfg.NodeID || still[g] || r.active(g) {
			continue
		}
		if !k.Abort {
			if !r.coversAll(rep, k.Decision) {
				continue
			}
		} else if rep.At.Before(g.Deadline().Add(r.cfg.Skew + keptRetention)) {
			continue
		}
		byKeeper[k.keeper] = append(byKeeper[k.keeper], g)
	}
	for k, gs := range byKeeper {
		if err := k.ForgetDecisions(ctx, gs); err != nil {
			r.logger.Warn("could not delete finished decisions from a decision table", "resource", k.Name(), "err", err)
			continue
		}
		for _, g := range gs {
			if !rep.kept[g].Abort {
				rep.Ended = append(rep.Ended, g.String())
			}
		}
	}
}

// stillPrepared returns the transactions with a branch the report leaves
// prepared: ours not finished by an action, and ours a resource listed as
// not ours to finish (prepared by another role, say): their decisions are
// still needed.
func stillPrepared(rep *Report) map[drivers.GlobalID]bool {
	still := map[drivers.GlobalID]bool{}
	for _, b := range rep.Branches {
		if b.XID.Global.IsZero() {
			continue
		}
		if !b.Ours || b.Result == "" || b.Err != nil || b.Result == ResultBusy {
			still[b.XID.Global] = true
		}
	}
	return still
}

// endFinished marks commit decisions ended when no resource lists any of
// their branches any more. It only does so when every resource was scanned:
// a resource that could not be scanned may still hold a branch.
func (r *Recoverer) endFinished(ctx context.Context, rep *Report) {
	if len(rep.ScanErrors) > 0 || rep.LogErr != nil {
		return
	}
	r.forgetKept(ctx, rep, stillPrepared(rep))
	still := stillPrepared(rep)
	for _, d := range r.cfg.Log.Pending() {
		if d.GTRID.Node() != r.cfg.NodeID || still[d.GTRID] {
			continue
		}
		if r.active(d.GTRID) {
			continue // its coordinator is finishing phase 2 itself
		}
		if !r.coversAll(rep, d) {
			continue
		}
		if err := r.cfg.Log.End(d.GTRID); err == nil {
			rep.Ended = append(rep.Ended, d.GTRID.String())
		}
	}
}

// endOne marks g's commit decision ended (or deletes it from its keeper)
// after Resolve committed its branches: only g, and only when every
// resource was listed in both scans and every branch of g found is
// finished. (A pass's endFinished looks at every decision; Resolve's
// report holds g's branches alone, so it must not.)
func (r *Recoverer) endOne(ctx context.Context, rep *Report, g drivers.GlobalID) {
	if len(rep.ScanErrors) > 0 || rep.LogErr != nil || stillPrepared(rep)[g] || r.active(g) {
		return
	}
	if k, ok := rep.kept[g]; ok && !k.Abort {
		if r.coversAll(rep, k.Decision) && k.keeper.ForgetDecisions(ctx, []drivers.GlobalID{g}) == nil {
			rep.Ended = append(rep.Ended, g.String())
		}
	}
	for _, d := range r.cfg.Log.Pending() {
		if d.GTRID == g && r.coversAll(rep, d) && r.cfg.Log.End(g) == nil && !slices.Contains(rep.Ended, g.String()) {
			rep.Ended = append(rep.Ended, g.String())
		}
	}
}

// coversAll reports whether every participant of d is a configured
// resource that rep listed and, where d recorded its identity, that it is
// that database, so "not listed anywhere" is positive evidence that d is
// finished (and not a listing of the wrong server).
func (r *Recoverer) coversAll(rep *Report, d decisionlog.Decision) bool {
	for _, p := range d.Participants {
		if _, ok := r.res[p.Resource]; !ok || scanFailed(rep, p.Resource) || rep.wrong[p.Resource] != nil {
			return false
		}
		if p.ID != "" {
			id, ok := rep.ids[p.Resource]
			if !ok || drivers.CheckIdentity(p.Resource, p.ID, id) != nil {
				return false
			}
		}
	}
	return true
}

// active reports whether g runs in a coordinator of this process now
// (Config.Active). Acting edges ask again rather than trust the snapshot:
// a transaction that started since is left to its coordinator.
func (r *Recoverer) active(g drivers.GlobalID) bool {
	return r.cfg.Active != nil && r.cfg.Active(g)
}

// labelAttr is the transaction's label (carried by its XIDs) as a log
// attribute, or the empty Attr, which slog's handlers leave out.
func labelAttr(x drivers.XID) slog.Attr {
	if x.Label == "" {
		return slog.Attr{}
	}
	return slog.String("label", x.Label)
}
