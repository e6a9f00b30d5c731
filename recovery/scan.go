package recovery

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sort"
	"sync"
	"time"

	"github.com/xabridge/xabridge/decisionlog"
	"github.com/xabridge/xabridge/drivers"
)

// opTimeout bounds each call recovery makes to a database (a listing, a
// fence, a commit or rollback), so that one unreachable resource cannot
// stall a pass, and the Loop with it, until TCP gives up.
const opTimeout = 30 * time.Second

// kept is one decision a keeper holds, and which keeper.
type kept struct {
	decisionlog.Decision
	keeper decisionlog.Keeper
}

// scan reads the keepers' decisions, then lists the prepared branches.
func (r *Recoverer) scan(ctx context.Context) *Report {
	rep := &Report{At: r.cfg.Now()}
	for _, res := range r.cfg.Resources {
		rep.Resources = append(rep.Resources, res.Name())
	}
	rep.kept = r.readKept(ctx, rep)
	r.scanBranches(ctx, rep)
	// Pending is read again where it is used (it cannot fail there
	// visibly): read it once here through CheckedReader, so that a log
	// that cannot be read shows in the report and ends nothing.
	lctx, cancel := context.WithTimeout(ctx, opTimeout)
	if _, err := decisionlog.PendingChecked(lctx, r.cfg.Log); err != nil {
		r.logUnread(ctx, rep, err)
	}
	cancel()
	return rep
}

// logUnread notes a failed read of the decision log in rep (the first
// one is kept).
func (r *Recoverer) logUnread(ctx context.Context, rep *Report, err error) {
	if rep.LogErr == nil {
		rep.LogErr = err
		r.logger.Log(ctx, errLevel(ctx), "recovery cannot read the decision log; deciding nothing from it", "err", err)
	}
}

// readKept reads the decisions every keeper holds. It runs before the
// scan: a commit decision is only written once all its other branches are
// prepared, so a branch the later scan does not list is finished. A commit
// decision wins over an abort marker in another keeper (which can only be
// a leftover fence of a transaction decided elsewhere).
func (r *Recoverer) readKept(ctx context.Context, rep *Report) map[drivers.GlobalID]kept {
	out := map[drivers.GlobalID]kept{}
	for _, k := range r.keepers {
		lctx, cancel := context.WithTimeout(ctx, opTimeout)
		var err error
		if tc, ok := k.(decisionlog.TableChecker); ok && k == r.fence {
			// An empty listing of the fence's table is "no decisions" only
			// if the table is there: a keeper URL naming the wrong
			// database must not read as a keeper holding nothing.
			if err = tc.CheckDecisionTable(lctx); errors.Is(err, decisionlog.ErrNoDecisionTable) {
				rep.noFenceTable = true
			}
		}
		var ds []decisionlog.Decision
		if err == nil {
			ds, err = k.ListDecisions(lctx)
		}
		cancel()
		if err != nil {
			rep.ScanErrors = append(rep.ScanErrors, ResourceError{k.Name(), fmt.Errorf("reading its decision table: %w", err)})
			rep.keptFailed = append(rep.keptFailed, k)
			r.logger.Log(ctx, errLevel(ctx), "recovery cannot read a decision table", "resource", k.Name(), "err", err)
			continue
		}
		for _, d := range ds {
			if prev, ok := out[d.GTRID]; ok && !prev.Abort {
				continue
			}
			out[d.GTRID] = kept{d, k}
		}
	}
	return out
}

// scanBranches lists every resource in parallel into rep.Branches, ours
// first, in global id order.
func (r *Recoverer) scanBranches(ctx context.Context, rep *Report) {
	type result struct {
		name  string
		p     []drivers.Prepared
		err   error
		id    drivers.Identity
		idErr error
	}
	results := make([]result, len(r.cfg.Resources))
	var wg sync.WaitGroup
	for i, res := range r.cfg.Resources {
		wg.Add(1)
		go func() {
			defer wg.Done()
			rctx, cancel := context.WithTimeout(ctx, opTimeout)
			defer cancel()
			p, err := res.Recover(rctx)
			results[i] = result{name: res.Name(), p: p, err: err}
			if idr, ok := res.(drivers.Identifier); ok && err == nil {
				results[i].id, results[i].idErr = idr.Identity(rctx)
			}
		}()
	}
	wg.Wait()
	rep.listed, rep.ids, rep.idErrs = map[string]bool{}, map[string]drivers.Identity{}, map[string]error{}
	for _, res := range results {
		if res.err != nil {
			rep.ScanErrors = append(rep.ScanErrors, ResourceError{res.name, res.err})
			r.logger.Log(ctx, errLevel(ctx), "recovery scan failed", "resource", res.name, "err", res.err)
			continue
		}
		rep.listed[res.name] = true
		if res.idErr != nil {
			rep.idErrs[res.name] = res.idErr
		} else if !res.id.IsZero() {
			rep.ids[res.name] = res.id
		}
		for _, p := range res.p {
			rep.Branches = append(rep.Branches, Branch{Resource: res.name, Prepared: p})
		}
	}
	sort.SliceStable(rep.Branches, func(i, j int) bool {
		a, b := rep.Branches[i], rep.Branches[j]
		if a.Ours != b.Ours {
			return a.Ours
		}
		ka, kb := a.ID, b.ID
		if a.Ours {
			ka, kb = a.XID.GID(), b.XID.GID()
		}
		if ka != kb {
			return ka < kb
		}
		return a.Resource < b.Resource
	})
}

// snapshot gathers what classification needs about the scan in rep: the
// log entries and liveness of this node's listed transactions and of
// those in also (Resolve's, which may have no branch left), and the rules.
// firstSeen is as in snapshot.firstSeen.
func (r *Recoverer) snapshot(ctx context.Context, rep *Report, firstSeen map[drivers.XID]time.Time, also ...drivers.GlobalID) *snapshot {
	s := &snapshot{
		now: rep.At, node: r.cfg.NodeID, branches: rep.Branches,
		entries: map[drivers.GlobalID]decisionlog.Entry{}, kept: rep.kept, active: map[drivers.GlobalID]bool{},
		firstSeen: firstSeen, fenced: map[drivers.GlobalID]bool{}, scanErrors: len(rep.Unscanned()),
		unread: map[drivers.GlobalID]error{},
		skew:   r.cfg.Skew, minAge: r.cfg.MinAge, deadBefore: r.deadBefore(), settle: r.settle(),
	}
	if r.fence != nil {
		s.fence = r.fence.Name()
	}
	if rep.noFenceTable {
		s.keptUnknown = true
	}
	for _, k := range rep.keptFailed {
		if k != r.fence {
			// The configured fence's FenceAbort finds a decision, or
			// excludes one, atomically; any other keeper's is unknown.
			s.keptUnknown = true
		}
	}
	look := func(g drivers.GlobalID) {
		if g.Node() != r.cfg.NodeID {
			return
		}
		if _, ok := s.entries[g]; !ok && s.unread[g] == nil {
			lctx, cancel := context.WithTimeout(ctx, opTimeout)
			e, ok, err := decisionlog.LookupChecked(lctx, r.cfg.Log, g)
			cancel()
			switch {
			case err != nil:
				s.unread[g] = err
				r.logUnread(ctx, rep, err)
			case ok:
				s.entries[g] = e
			}
		}
		if r.cfg.Active != nil && r.cfg.Active(g) {
			s.active[g] = true
		}
	}
	for _, b := range rep.Branches {
		if b.Ours {
			look(b.XID.Global)
		}
	}
	for _, g := range also {
		look(g)
	}
	r.checkIdentities(rep, s)
	return s
}

// checkIdentities compares the identity of every resource a decision names
// (in the log, pending or looked up, or in a keeper) with the identity
// recorded with the decision's participants. A resource that differs, or
// whose identity cannot be read to compare, is the wrong one: it goes into
// s.wrong (its branches are not touched) and rep.ScanErrors (no decision is
// ended, and the command exits non-zero). Decisions recorded without
// identities are not checked.
func (r *Recoverer) checkIdentities(rep *Report, s *snapshot) {
	var ds []decisionlog.Decision
	for _, e := range s.entries {
		if e.Decision != nil {
			ds = append(ds, *e.Decision)
		}
	}
	for _, k := range s.kept {
		if !k.Abort {
			ds = append(ds, k.Decision)
		}
	}
	ds = append(ds, r.cfg.Log.Pending()...)
	rep.wrong = map[string]error{}
	for _, d := range ds {
		if d.GTRID.Node() != r.cfg.NodeID {
			continue
		}
		for _, p := range d.Participants {
			// Not configured, or not listed: coversAll already keeps the
			// decision, and there is no branch of it to act on.
			if !rep.listed[p.Resource] || p.ID == "" || rep.wrong[p.Resource] != nil {
				continue
			}
			var err error
			if id, ok := rep.ids[p.Resource]; ok {
				err = drivers.CheckIdentity(p.Resource, p.ID, id)
			} else {
				cause := rep.idErrs[p.Resource]
				if cause == nil {
					cause = errors.New("it cannot tell which database it is")
				}
				err = fmt.Errorf("%w: resource %q: cannot compare it with the database %s names (%s): %v",
					drivers.ErrWrongResource, p.Resource, d.GTRID, p.ID, cause)
			}
			if err != nil {
				rep.wrong[p.Resource] = err
				rep.ScanErrors = append(rep.ScanErrors, ResourceError{p.Resource, err})
				r.logger.Error("a resource is not the database a decision names; leaving its branches and the decisions alone",
					"resource", p.Resource, "gtrid", d.GTRID.String(), "err", err)
			}
		}
	}
	s.wrong = rep.wrong
}

// scanFailed reports whether rep holds a scan error for the resource.
func scanFailed(rep *Report, name string) bool {
	for _, e := range rep.ScanErrors {
		if e.Resource == name {
			return true
		}
	}
	return false
}

// recheckDone looks again at the heuristic suspects (see suspect): each
// such branch's resource is listed once more, and confirmDone drops the
// branches no longer prepared. Only a recovery running next to a live
// coordinator can see that race.
func (r *Recoverer) recheckDone(ctx context.Context, rep *Report) {
	names := map[string]bool{}
	for _, b := range rep.Branches {
		if suspect(b) {
			names[b.Resource] = true
		}
	}
	if len(names) == 0 {
		return
	}
	still := map[string]map[drivers.XID]bool{}
	failed := map[string]error{}
	for name := range names {
		ps, err := r.res[name].Recover(ctx)
		if err != nil {
			failed[name] = err
			continue
		}
		still[name] = map[drivers.XID]bool{}
		for _, p := range ps {
			if p.Ours {
				still[name][p.XID] = true
			}
		}
	}
	rep.Branches = confirmDone(rep.Branches, still, failed)
}

// errLevel is the level of a scan failure: an error, unless the caller's
// context ended (a pass cut short at shutdown is no incident).
func errLevel(ctx context.Context) slog.Level {
	if ctx.Err() != nil {
		return slog.LevelDebug
	}
	return slog.LevelError
}

// deadBefore is Config.DeadBefore when Config.DeadBeforeValid allows it.
func (r *Recoverer) deadBefore() time.Time {
	if r.cfg.DeadBefore.IsZero() || (r.cfg.DeadBeforeValid != nil && !r.cfg.DeadBeforeValid()) {
		return time.Time{}
	}
	return r.cfg.DeadBefore
}
