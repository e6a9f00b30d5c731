package recovery

import (
	"fmt"
	"strings"
	"time"

	"github.com/xabridge/xabridge/decisionlog"
	"github.com/xabridge/xabridge/drivers"
)

// snapshot is everything classification looks at, read once by a scan:
// the listings, what the log and the keepers say, which transactions run
// in this process, the clock, and the rules. It is plain data; building it
// is the only I/O, so classify and planResolve are pure functions of it.
type snapshot struct {
	now  time.Time
	node string // this coordinator's node id: only its transactions are acted on
	// branches are the listings of every resource that could be listed,
	// unclassified (Resource and Prepared set).
	branches []Branch
	// entries holds the log entry of every transaction of node it knows
	// and the scan listed (or Resolve asked about).
	entries map[drivers.GlobalID]decisionlog.Entry
	// kept holds the keepers' decisions, read before the listings.
	kept map[drivers.GlobalID]kept
	// keptUnknown: a keeper other than the fence could not be read, so it
	// may hold a commit decision that no fence would find.
	keptUnknown bool
	// active holds the transactions running in a coordinator of this
	// process (Config.Active).
	active map[drivers.GlobalID]bool
	// firstSeen is when each branch was first seen by an earlier pass (the
	// two-scan rule). Nil: the rule is not applied, and actions are
	// reported as they will be taken (Scan, dry runs).
	firstSeen map[drivers.XID]time.Time
	// fence names the keeper configured as DecisionResource ("" if none).
	fence string
	// fenced holds the transactions this run fenced in that keeper, and
	// whether the keeper turned out to hold a commit decision instead.
	fenced map[drivers.GlobalID]bool
	// scanErrors counts the resources that could not be listed (each
	// once: Report.Unscanned).
	scanErrors int
	// wrong holds the resources that are not the database a decision
	// names, and why (see Recoverer.checkIdentities).
	wrong map[string]error
	// unread holds the transactions whose log read failed, and why: what
	// was decided for them is unknown.
	unread map[drivers.GlobalID]error

	skew   time.Duration  // Config.Skew
	minAge *time.Duration // Config.MinAge
	// deadBefore is Config.DeadBefore: this node's transactions that began
	// before it belong to a dead incarnation (zero: none known).
	deadBefore time.Time
	settle     time.Duration // Config.Settle, 0 for no wait
}

// classify returns every listed branch with its class, action and reason.
func (s *snapshot) classify() []Branch {
	out := make([]Branch, len(s.branches))
	for i, b := range s.branches {
		out[i] = s.classifyBranch(b)
	}
	return out
}

// classifyBranch sets b's class, action, reason and attention from the
// snapshot. The order of the cases is the order of precedence.
func (s *snapshot) classifyBranch(b Branch) Branch {
	b.Class, b.Action, b.Reason, b.Attention, b.LogState, b.settling = "", ActionNone, "", false, decisionlog.StateNone, false
	if !b.Ours {
		b.Class, b.Reason = Foreign, "not created by xabridge"
		if b.Note != "" {
			b.Reason = b.Note
		}
		if !b.PreparedAt.IsZero() {
			b.Age = s.now.Sub(b.PreparedAt)
		}
		return b
	}
	g := b.XID.Global
	b.Age = s.now.Sub(g.Begin())
	if g.Node() != s.node {
		b.Class = UnknownOwner
		b.Reason = fmt.Sprintf("belongs to node %q; run recovery with that node's id and log", g.Node())
		return b
	}
	entry, logged := s.entries[g]
	if logged {
		b.LogState = entry.State
	}
	if err := s.wrong[b.Resource]; err != nil {
		// Whatever the decision says, this is not where it was made.
		b.Class, b.Action, b.Reason, b.Attention = WrongResource, ActionNone, err.Error(), true
		return b
	}
	if err := s.unread[g]; err != nil && !s.active[g] {
		// A failed read is not "no decision": presuming abort (or acting
		// on a keeper's marker) could contradict a commit the log holds.
		b.Class, b.Action, b.Attention = LogUnread, ActionNone, true
		b.Reason = "the decision log could not be read for this transaction (" + err.Error() + "): left alone until it can"
		return b
	}
	k, kok := s.kept[g]
	logCommitted := logged && (entry.State == decisionlog.StateCommitted || entry.State == decisionlog.StateDone)
	switch {
	case s.active[g]:
		// Its coordinator is still driving it (work, phase 1, or phase 2
		// on the branch's own session): finishing it from here would
		// only race that coordinator.
		b.Class, b.Reason = Live, "running in this coordinator"
	case logged && forced(entry):
		// Before the log's decision: the operator overrode it, and a
		// pass that went on by the decision would undo half of that.
		b.Class, b.Reason = Heuristic, "an operator forced an outcome for this transaction; resolve it by hand (xabridge resolve --force)"
	case !logCommitted && kok && !k.Abort:
		b.LogState = decisionlog.StateCommitted
		b.Class, b.Action, b.Reason = CommitPending, ActionCommit, "commit decision kept in "+k.keeper.Name()
		if !inDecision(&k.Decision, b.Resource, b.XID.Branch) {
			b.Class, b.Reason = Heuristic, "commit decision kept in "+k.keeper.Name()+" does not name this branch; committing with its transaction"
		}
	case !logCommitted && kok && !(logged && entry.State == decisionlog.StateAborted):
		b.Class, b.Action, b.Reason = AbortPending, ActionRollback, "abort marker in "+k.keeper.Name()
	case logged && entry.State == decisionlog.StateCommitted:
		b.Class, b.Action, b.Reason = CommitPending, ActionCommit, "commit decision in the log"
		if !inDecision(entry.Decision, b.Resource, b.XID.Branch) {
			b.Class, b.Reason = Heuristic, "commit decision in the log does not name this branch; committing with its transaction"
		}
	case logged && entry.State == decisionlog.StateDone:
		b.Class, b.Action, b.Reason = Heuristic, ActionCommit, "log says every branch committed, yet this one is prepared; committing"
	case logged && entry.State == decisionlog.StateAborted:
		b.Class, b.Action, b.Reason = AbortPending, ActionRollback, "abort recorded in the log"
	case logged && entry.Heuristic():
		b.Class, b.Reason = Heuristic, "an operator forced an outcome for this transaction; resolve it by hand"
	case s.fenced[g]:
		// Presumed an orphan, but fencing it in the keeper found the
		// commit decision there.
		b.Class, b.Action, b.Reason = CommitPending, ActionCommit, "commit decision kept in "+s.fence+" (found while fencing)"
	default:
		past, why := s.pastFence(g)
		if !past {
			b.Class, b.Reason = Live, why
			return b
		}
		b.Class, b.Action, b.Reason = Orphan, ActionRollback, "no commit decision, past its fence, seen in two scans: presumed abort"
		if why != "" {
			b.Reason = "no commit decision, " + why + ", seen in two scans: presumed abort"
		}
		if s.keptUnknown {
			// The decision may be in a table that could not be read.
			b.Action = ActionWait
			b.Reason = "no commit decision found, but a decision table could not be read: not presumed aborted until it can"
		}
	}
	if s.firstSeen != nil && (b.Action == ActionCommit || b.Action == ActionRollback) {
		if t, ok := s.firstSeen[b.XID]; !ok || s.now.Sub(t) < s.settle {
			b.Action, b.settling = ActionWait, true
			b.Reason += fmt.Sprintf(" (waiting until it has been seen for %s)", s.settle)
		}
	}
	b.Attention = s.needsAttention(b)
	return b
}

// needsAttention reports whether a classified branch of this node is
// stuck rather than in flight. Orphans, heuristics and aborts to finish
// are (the coordinator never rolls back by a logged abort: recovery or an
// operator wrote it). A commit decision is, once past the transaction's
// fence: a healthy coordinator writes it before the deadline and finishes
// phase 2 at once, so only a crashed or stuck one leaves it later.
func (s *snapshot) needsAttention(b Branch) bool {
	switch b.Class {
	case Orphan, AbortPending, WrongResource, LogUnread:
		return true
	case Heuristic:
		return !b.unconfirmed
	case CommitPending:
		past, _ := s.pastFence(b.XID.Global)
		return past
	}
	return false
}

// pastFence reports whether recovery may presume g aborted as far as time
// goes, and why not when it may not; or, when it may before the fence
// because g's incarnation is dead (deadBefore), why it may.
func (s *snapshot) pastFence(g drivers.GlobalID) (bool, string) {
	if s.deadIncarnation(g) {
		return true, "began before this process's coordinator started (its incarnation is dead)"
	}
	if s.minAge != nil && s.now.Sub(g.Begin()) >= *s.minAge {
		return true, ""
	}
	fence := g.Deadline().Add(s.skew)
	if s.now.Before(fence) {
		return false, fmt.Sprintf("within its fence (%s left)", fence.Sub(s.now).Round(time.Second))
	}
	return true, ""
}

// deadIncarnation reports whether g is this node's and began before
// deadBefore: no live process can decide it any more (Config.DeadBefore),
// so it need not wait for its fence. The begin time is read from the XID
// alone; an earlier incarnation's id that begins at or after deadBefore
// (the clock stepped back across the restart) is not recognised and waits
// for its fence, which is safe.
func (s *snapshot) deadIncarnation(g drivers.GlobalID) bool {
	return !s.deadBefore.IsZero() && g.Node() == s.node && g.Begin().Before(s.deadBefore)
}

// commitDecided reports whether the snapshot holds a commit decision for g:
// in the log (pending or done), in a keeper, or found by fencing a keeper.
func (s *snapshot) commitDecided(g drivers.GlobalID) bool {
	if e, ok := s.entries[g]; ok && (e.State == decisionlog.StateCommitted || e.State == decisionlog.StateDone) {
		return true
	}
	if k, ok := s.kept[g]; ok && !k.Abort {
		return true
	}
	return s.fenced[g]
}

// confirmDone drops from bs the heuristic suspects (branches the log says
// finished phase 2) that a second listing of their resource no longer
// shows: their coordinator finished them during the scan. still holds the
// second listings (this node's branches per resource); failed the
// resources whose second listing failed, whose suspects wait for the
// next pass unconfirmed.
func confirmDone(bs []Branch, still map[string]map[drivers.XID]bool, failed map[string]error) []Branch {
	out := bs[:0]
	for _, b := range bs {
		if suspect(b) {
			if err := failed[b.Resource]; err != nil {
				// Not confirmed: no alarm and no action on one listing
				// (a pass cut short by shutdown sees exactly this).
				b.unconfirmed, b.Action, b.Attention = true, ActionWait, false
				b.Reason += fmt.Sprintf("; not confirmed (listing %s again failed: %v): looking again at the next pass", b.Resource, err)
			} else if !still[b.Resource][b.XID] {
				continue // committed by its coordinator during the scan
			}
		}
		out = append(out, b)
	}
	return out
}

// suspect reports whether b is heuristic only because the log says its
// transaction finished phase 2: the scan may have listed it just before its
// coordinator committed it and ended the transaction.
func suspect(b Branch) bool {
	return b.Class == Heuristic && b.LogState == decisionlog.StateDone
}

// inDecision reports whether d names the branch.
func inDecision(d *decisionlog.Decision, resource string, branch uint8) bool {
	if d == nil {
		return false
	}
	for _, p := range d.Participants {
		if p.Branch == branch && p.Resource == resource {
			return true
		}
	}
	// The same MySQL/MariaDB server can be configured as two resources
	// (XA RECOVER is server-wide); match on the branch number alone then.
	for _, p := range d.Participants {
		if p.Branch == branch {
			return true
		}
	}
	return false
}

// forced reports whether an operator forced an outcome for the entry's
// transaction (xabridge resolve --force).
func forced(e decisionlog.Entry) bool {
	for _, a := range e.Actions {
		if a.Heuristic && strings.HasPrefix(a.Op, "forced-") {
			return true
		}
	}
	return false
}

// wrongFor returns the error of the first wrong resource (see s.wrong) that
// lists a branch of g or that g's decision names, or nil.
func (s *snapshot) wrongFor(g drivers.GlobalID, lists ...[]Branch) error {
	for _, bs := range lists {
		for _, b := range bs {
			if err := s.wrong[b.Resource]; err != nil {
				return err
			}
		}
	}
	var ds []*decisionlog.Decision
	if e, ok := s.entries[g]; ok {
		ds = append(ds, e.Decision)
	}
	if k, ok := s.kept[g]; ok {
		ds = append(ds, &k.Decision)
	}
	for _, d := range ds {
		if d == nil {
			continue
		}
		for _, p := range d.Participants {
			if err := s.wrong[p.Resource]; err != nil {
				return err
			}
		}
	}
	return nil
}

// resolveRequest is an operator's request to settle one transaction.
type resolveRequest struct {
	gtrid  drivers.GlobalID
	commit bool // commit every branch; false: roll back
	force  bool // even against the log (a heuristic outcome)
}

// resolvePlan is what Resolve does for a request, decided from a snapshot.
type resolvePlan struct {
	// err refuses the request (ErrContradictsLog, ErrUnknownTransaction):
	// nothing is done.
	err error
	// fenceFirst: the rollback agrees with the log as far as the snapshot
	// goes, but the fence keeper may hold a commit decision that raced in.
	// Fence it there, then plan again with its answer in snapshot.fenced.
	fenceFirst bool
	// recordAbort: record the abort in the log before touching a branch
	// (the fence of a rollback that agrees with presumed abort).
	recordAbort bool
	// heuristic: the outcome contradicts the log; record it as forced.
	heuristic bool
	// act are the transaction's branches listed by both scans, with the
	// operator's action; waiting the ones to report without acting.
	act, waiting []Branch
	// end: after acting, end the transaction's commit decision if every
	// branch is finished.
	end bool
}

// planResolve decides what Resolve does for req. first holds the branches
// the first of Resolve's two scans listed: only branches in both are acted
// on, so no owner session can still be closing (see Config.Settle).
func (s *snapshot) planResolve(req resolveRequest, first map[drivers.XID]bool) resolvePlan {
	g := req.gtrid
	var p resolvePlan
	for _, b := range s.branches {
		if b.XID.Global != g {
			continue
		}
		if !b.Ours {
			// Ours, but this resource may not finish it (another role): the
			// operator must, as that role.
			b.Attention = true
			p.waiting = append(p.waiting, b)
			continue
		}
		b.Age = s.now.Sub(g.Begin())
		if !first[b.XID] {
			b.Class, b.Action, b.Reason, b.Attention = Live, ActionWait, "listed by one of the two scans only; run resolve again", true
			p.waiting = append(p.waiting, b)
			continue
		}
		p.act = append(p.act, b)
	}
	if err := s.wrongFor(g, p.act, p.waiting); err != nil {
		p.err = err
		return p
	}
	if err := s.unread[g]; err != nil {
		// Even forced: the outcome would be chosen blind, and recording
		// it needs the same log.
		p.err = fmt.Errorf("%w: %s: %w; nothing was done", ErrLogUnreadable, g, err)
		return p
	}
	if len(p.act) == 0 {
		// Nothing these resources may finish: say what is there and why
		// (a branch prepared in another database of the same server),
		// rather than "unknown".
		var where []string
		for _, b := range p.waiting {
			if !b.Ours {
				where = append(where, fmt.Sprintf("branch %s on resource %s is %s", b.XID.BranchQualifier(), b.Resource, noteOr(b.Note)))
			}
		}
		if len(where) > 0 {
			p.err = fmt.Errorf("%w: %s: %s", ErrNotFinishableHere, g, strings.Join(where, "; "))
			return p
		}
	}
	entry, logged := s.entries[g]
	if _, kok := s.kept[g]; !logged && !kok && len(p.act) == 0 {
		p.err = ErrUnknownTransaction
		if s.scanErrors > 0 {
			p.err = fmt.Errorf("%w (and %d resource(s) could not be scanned)", ErrUnknownTransaction, s.scanErrors)
		}
		return p
	}
	decided := s.commitDecided(g)
	if _, done := s.fenced[g]; !req.commit && !decided && s.fence != "" && !done {
		// Agrees with presumed abort, unless the keeper committed
		// meanwhile: fence it there first.
		p.fenceFirst = true
		return p
	}
	switch {
	case req.commit && !decided:
		if !req.force {
			p.err = fmt.Errorf("%w: %s has no commit decision, so another branch may already be rolled back; use --force to commit anyway (recorded as a heuristic outcome)", ErrContradictsLog, g)
			return p
		}
		p.heuristic = true
	case !req.commit && decided:
		if !req.force {
			p.err = fmt.Errorf("%w: %s has a durable commit decision, so other branches may already be committed; use --force to roll back anyway (recorded as a heuristic outcome)", ErrContradictsLog, g)
			return p
		}
		p.heuristic = true
	case !req.commit:
		// Agrees with presumed abort. Record it first: the fence.
		p.recordAbort = true
	}
	action := ActionCommit
	if !req.commit {
		action = ActionRollback
	}
	for i := range p.act {
		b := &p.act[i]
		b.LogState, b.Action = entry.State, action
		b.Class, b.Reason = CommitPending, "operator resolve (agrees with the log)"
		if !req.commit {
			b.Class = AbortPending
		}
		if p.heuristic {
			b.Class, b.Reason = Heuristic, "operator forced an outcome that contradicts the log"
		}
		b.Attention = true // the operator is settling it; it counts until it is finished
	}
	p.end = req.commit && !p.heuristic && len(p.waiting) == 0
	return p
}

// noteOr is why a branch that decodes as ours may not be finished from its
// resource, as the adapter said.
func noteOr(note string) string {
	if note == "" {
		return "not finishable from it"
	}
	return note
}
