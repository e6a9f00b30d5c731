package recovery

import (
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/xabridge/xabridge/decisionlog"
	"github.com/xabridge/xabridge/drivers"
	"github.com/xabridge/xabridge/internal/fakeres"
)

// The classifier's tests need no database and no log: a snapshot is plain
// data. Times are relative to a fixed now.
var (
	tNow    = time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	tKeep   = fakeres.NewKeeper("k") // named only; classification never calls it
	tHour   = time.Hour
	tZero   = time.Duration(0)
	tSkew   = 5 * time.Second
	tSettle = time.Second
)

// tgid is a global id of node that began age before tNow, its deadline
// left after tNow (negative: past).
func tgid(node string, seq uint32, age, left time.Duration) drivers.GlobalID {
	return drivers.MustGlobalID(node, tNow.Add(-age), seq, tNow.Add(left))
}

var (
	gPast   = tgid("n1", 1, time.Hour, -time.Minute)     // past its fence
	gYoung  = tgid("n1", 2, time.Second, time.Minute)    // within its fence
	gSkew   = tgid("n1", 3, time.Minute, -2*time.Second) // past its deadline, within the skew
	gOther  = tgid("n2", 4, time.Hour, -time.Hour)       // another node's
	onA     = drivers.XID{Global: gPast, Branch: 0}
	youngA  = drivers.XID{Global: gYoung, Branch: 0}
	skewA   = drivers.XID{Global: gSkew, Branch: 0}
	otherA  = drivers.XID{Global: gOther, Branch: 0}
	namesA0 = []decisionlog.Participant{{Resource: "a", Branch: 0}}
	namesB1 = []decisionlog.Participant{{Resource: "b", Branch: 1}}
)

func ours(x drivers.XID) Branch {
	return Branch{Resource: "a", Prepared: drivers.Prepared{XID: x, ID: x.GID(), Ours: true}}
}

func committedEntry(g drivers.GlobalID, ps []decisionlog.Participant) decisionlog.Entry {
	return decisionlog.Entry{GTRID: g, State: decisionlog.StateCommitted, Decision: &decisionlog.Decision{GTRID: g, Participants: ps}}
}

// tsnap is a snapshot of branches at tNow with the default rules, every
// branch first seen long ago (settled); mod changes it.
func tsnap(bs []Branch, mod func(*snapshot)) *snapshot {
	s := &snapshot{
		now: tNow, node: "n1", branches: bs,
		entries: map[drivers.GlobalID]decisionlog.Entry{}, kept: map[drivers.GlobalID]kept{},
		active: map[drivers.GlobalID]bool{}, fenced: map[drivers.GlobalID]bool{},
		firstSeen: map[drivers.XID]time.Time{}, skew: tSkew, settle: tSettle,
	}
	for _, b := range bs {
		s.firstSeen[b.XID] = tNow.Add(-time.Minute)
	}
	if mod != nil {
		mod(s)
	}
	return s
}

func TestClassify(t *testing.T) {
	tests := []struct {
		name   string
		branch Branch
		snap   func(*snapshot)
		class  Class
		action Action
		attn   bool
		log    decisionlog.State
		reason string // a substring of the reason
	}{
		// Never ours to touch.
		{name: "foreign", branch: Branch{Resource: "a", Prepared: drivers.Prepared{ID: "other-app"}},
			class: Foreign, action: ActionNone, reason: "not created by xabridge"},
		{name: "ours, but not reachable through this resource", branch: Branch{Resource: "a", Prepared: drivers.Prepared{XID: onA, ID: onA.GID(), Note: "prepared by role other"}},
			class: Foreign, action: ActionNone, reason: "prepared by role other"},
		{name: "another node's", branch: ours(otherA),
			class: UnknownOwner, action: ActionNone, reason: `belongs to node "n2"`},

		// No decision: live, or an orphan by the fence and the two-scan rule.
		{name: "within its fence, undecided", branch: ours(youngA),
			class: Live, action: ActionNone, reason: "within its fence"},
		{name: "past its deadline but within the clock skew", branch: ours(skewA),
			class: Live, action: ActionNone, reason: "within its fence"},
		{name: "running in this process, past its fence", branch: ours(onA), snap: func(s *snapshot) { s.active[gPast] = true },
			class: Live, action: ActionNone, reason: "running in this coordinator"},
		{name: "running in this process beats a commit decision", branch: ours(onA),
			snap:  func(s *snapshot) { s.active[gPast] = true; s.entries[gPast] = committedEntry(gPast, namesA0) },
			class: Live, action: ActionNone, log: decisionlog.StateCommitted},
		{name: "orphan past its fence, seen in two scans", branch: ours(onA),
			class: Orphan, action: ActionRollback, attn: true, reason: "presumed abort"},
		{name: "orphan seen once", branch: ours(onA), snap: func(s *snapshot) { delete(s.firstSeen, onA) },
			class: Orphan, action: ActionWait, attn: true, reason: "waiting until it has been seen"},
		{name: "orphan seen less than Settle ago", branch: ours(onA), snap: func(s *snapshot) { s.firstSeen[onA] = tNow.Add(-time.Millisecond) },
			class: Orphan, action: ActionWait, attn: true},
		{name: "orphan in a scan or dry run: the action it will take", branch: ours(onA), snap: func(s *snapshot) { s.firstSeen = nil },
			class: Orphan, action: ActionRollback, attn: true},
		{name: "MinAge overrides the fence", branch: ours(youngA), snap: func(s *snapshot) { s.minAge = &tZero },
			class: Orphan, action: ActionRollback, attn: true},
		{name: "MinAge not reached: the deadline still counts", branch: ours(youngA), snap: func(s *snapshot) { s.minAge = &tHour },
			class: Live, action: ActionNone},
		{name: "decision table unreadable: not presumed aborted", branch: ours(onA), snap: func(s *snapshot) { s.keptUnknown = true },
			class: Orphan, action: ActionWait, attn: true, reason: "a decision table could not be read"},
		{name: "decision table unreadable, within the fence", branch: ours(youngA), snap: func(s *snapshot) { s.keptUnknown = true },
			class: Live, action: ActionNone},
		{name: "fencing found a commit decision", branch: ours(onA), snap: func(s *snapshot) { s.fence = "k"; s.fenced[gPast] = true },
			class: CommitPending, action: ActionCommit, attn: true, reason: "found while fencing"},
		{name: "fenced, no commit decision: still an orphan", branch: ours(onA), snap: func(s *snapshot) { s.fence = "k"; s.fenced[gPast] = false },
			class: Orphan, action: ActionRollback, attn: true},

		// The log's decisions.
		{name: "commit decision, within the fence: phase 2 in flight", branch: ours(youngA),
			snap:  func(s *snapshot) { s.entries[gYoung] = committedEntry(gYoung, namesA0) },
			class: CommitPending, action: ActionCommit, log: decisionlog.StateCommitted, reason: "commit decision in the log"},
		{name: "commit decision, past the fence: stuck", branch: ours(onA),
			snap:  func(s *snapshot) { s.entries[gPast] = committedEntry(gPast, namesA0) },
			class: CommitPending, action: ActionCommit, attn: true, log: decisionlog.StateCommitted},
		{name: "commit decision, not yet settled", branch: ours(onA),
			snap:  func(s *snapshot) { s.entries[gPast] = committedEntry(gPast, namesA0); delete(s.firstSeen, onA) },
			class: CommitPending, action: ActionWait, attn: true, log: decisionlog.StateCommitted},
		{name: "commit decision not naming the branch", branch: ours(onA),
			snap:  func(s *snapshot) { s.entries[gPast] = committedEntry(gPast, namesB1) },
			class: Heuristic, action: ActionCommit, attn: true, log: decisionlog.StateCommitted, reason: "does not name this branch"},
		{name: "log says every branch committed", branch: ours(youngA),
			snap: func(s *snapshot) {
				s.entries[gYoung] = decisionlog.Entry{GTRID: gYoung, State: decisionlog.StateDone, Decision: &decisionlog.Decision{GTRID: gYoung, Participants: namesA0}}
			},
			class: Heuristic, action: ActionCommit, attn: true, log: decisionlog.StateDone, reason: "yet this one is prepared"},
		{name: "log says aborted", branch: ours(youngA),
			snap: func(s *snapshot) {
				s.entries[gYoung] = decisionlog.Entry{GTRID: gYoung, State: decisionlog.StateAborted}
			},
			class: AbortPending, action: ActionRollback, attn: true, log: decisionlog.StateAborted, reason: "abort recorded in the log"},
		{name: "operator forced an outcome: left to the operator", branch: ours(onA),
			snap: func(s *snapshot) {
				e := committedEntry(gPast, namesA0)
				e.Actions = []decisionlog.Action{{GTRID: gPast, Op: "forced-rollback", Heuristic: true}}
				s.entries[gPast] = e
				s.kept[gPast] = kept{decisionlog.Decision{GTRID: gPast, Participants: namesA0}, tKeep}
			},
			class: Heuristic, action: ActionNone, attn: true, log: decisionlog.StateCommitted, reason: "resolve it by hand (xabridge resolve --force)"},
		{name: "a heuristic action recorded, no decision", branch: ours(onA),
			snap: func(s *snapshot) {
				s.entries[gPast] = decisionlog.Entry{GTRID: gPast, Actions: []decisionlog.Action{{GTRID: gPast, Op: "commit", Heuristic: true}}}
			},
			class: Heuristic, action: ActionNone, attn: true, reason: "resolve it by hand"},

		// The keepers' decisions.
		{name: "kept commit decision", branch: ours(youngA),
			snap: func(s *snapshot) {
				s.kept[gYoung] = kept{decisionlog.Decision{GTRID: gYoung, Participants: namesA0}, tKeep}
			},
			class: CommitPending, action: ActionCommit, log: decisionlog.StateCommitted, reason: "commit decision kept in k"},
		{name: "kept commit decision not naming the branch", branch: ours(onA),
			snap: func(s *snapshot) {
				s.kept[gPast] = kept{decisionlog.Decision{GTRID: gPast, Participants: namesB1}, tKeep}
			},
			class: Heuristic, action: ActionCommit, attn: true, log: decisionlog.StateCommitted, reason: "does not name this branch"},
		{name: "kept commit decision wins over an abort in the log", branch: ours(onA),
			snap: func(s *snapshot) {
				s.entries[gPast] = decisionlog.Entry{GTRID: gPast, State: decisionlog.StateAborted}
				s.kept[gPast] = kept{decisionlog.Decision{GTRID: gPast, Participants: namesA0}, tKeep}
			},
			class: CommitPending, action: ActionCommit, attn: true, log: decisionlog.StateCommitted, reason: "kept in k"},
		{name: "abort marker", branch: ours(youngA),
			snap:  func(s *snapshot) { s.kept[gYoung] = kept{decisionlog.Decision{GTRID: gYoung, Abort: true}, tKeep} },
			class: AbortPending, action: ActionRollback, attn: true, reason: "abort marker in k"},
		{name: "abort marker and an abort in the log", branch: ours(onA),
			snap: func(s *snapshot) {
				s.entries[gPast] = decisionlog.Entry{GTRID: gPast, State: decisionlog.StateAborted}
				s.kept[gPast] = kept{decisionlog.Decision{GTRID: gPast, Abort: true}, tKeep}
			},
			class: AbortPending, action: ActionRollback, attn: true, log: decisionlog.StateAborted, reason: "abort recorded in the log"},
		{name: "abort marker loses to a commit decision in the log", branch: ours(onA),
			snap: func(s *snapshot) {
				s.entries[gPast] = committedEntry(gPast, namesA0)
				s.kept[gPast] = kept{decisionlog.Decision{GTRID: gPast, Abort: true}, tKeep}
			},
			class: CommitPending, action: ActionCommit, attn: true, log: decisionlog.StateCommitted, reason: "commit decision in the log"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			s := tsnap([]Branch{tc.branch}, tc.snap)
			got := s.classify()
			if len(got) != 1 {
				t.Fatalf("%d branches, want 1", len(got))
			}
			b := got[0]
			if b.Class != tc.class || b.Action != tc.action || b.Attention != tc.attn || b.LogState != tc.log {
				t.Errorf("got %s/%s attention=%v log=%v, want %s/%s attention=%v log=%v (reason %q)",
					b.Class, b.Action, b.Attention, b.LogState, tc.class, tc.action, tc.attn, tc.log, b.Reason)
			}
			if !strings.Contains(b.Reason, tc.reason) {
				t.Errorf("reason %q does not say %q", b.Reason, tc.reason)
			}
			if s.branches[0].Class != "" {
				t.Error("classify changed its snapshot")
			}
		})
	}
}

// Classification depends on nothing but the snapshot: the same snapshot,
// classified twice, gives the same answer.
func TestClassifyIsDeterministic(t *testing.T) {
	bs := []Branch{ours(onA), ours(youngA), ours(otherA), ours(skewA)}
	s := tsnap(bs, func(s *snapshot) { s.entries[gYoung] = committedEntry(gYoung, namesA0) })
	a, b := s.classify(), s.classify()
	for i := range a {
		if a[i] != b[i] {
			t.Errorf("branch %d: %+v, then %+v", i, a[i], b[i])
		}
	}
}

func TestConfirmDone(t *testing.T) {
	done := func(x drivers.XID, res string) Branch {
		b := ours(x)
		b.Resource, b.Class, b.Action, b.LogState, b.Attention = res, Heuristic, ActionCommit, decisionlog.StateDone, true
		return b
	}
	orphan := ours(onA)
	orphan.Class, orphan.Action = Orphan, ActionRollback
	gone, still, unlisted := done(youngA, "a"), done(skewA, "a"), done(youngA, "b")
	out := confirmDone([]Branch{gone, orphan, still, unlisted},
		map[string]map[drivers.XID]bool{"a": {skewA: true, onA: true}},
		map[string]error{"b": errors.New("listing failed")})
	if len(out) != 3 {
		t.Fatalf("%d branches left, want 3 (the suspect gone from its resource dropped): %+v", len(out), out)
	}
	if out[0].Class != Orphan || out[0].Action != ActionRollback {
		t.Errorf("a branch that is no suspect changed: %+v", out[0])
	}
	if out[1].XID != skewA || out[1].Action != ActionCommit || out[1].unconfirmed || !out[1].Attention {
		t.Errorf("a confirmed heuristic: %+v, want it kept as it was", out[1])
	}
	if u := out[2]; !u.unconfirmed || u.Action != ActionWait || u.Attention || !strings.Contains(u.Reason, "not confirmed") {
		t.Errorf("a suspect whose resource could not be listed again: %+v, want waiting, unconfirmed, no attention", u)
	}
}

func TestPlanResolve(t *testing.T) {
	notOurs := Branch{Resource: "b", Prepared: drivers.Prepared{XID: drivers.XID{Global: gPast, Branch: 1}, ID: "x", Note: "prepared by role other"}}
	onB := ours(drivers.XID{Global: gPast, Branch: 1})
	onB.Resource = "b"
	both := map[drivers.XID]bool{onA: true, onB.XID: true}
	type want struct {
		err         error // errors.Is
		fenceFirst  bool
		recordAbort bool
		heuristic   bool
		class       Class // of the branches acted on
		action      Action
		act, wait   int
		end         bool
	}
	tests := []struct {
		name          string
		branches      []Branch
		first         map[drivers.XID]bool
		snap          func(*snapshot)
		commit, force bool
		want          want
	}{
		{name: "unknown", want: want{err: ErrUnknownTransaction}},
		{name: "unknown, a resource could not be scanned", snap: func(s *snapshot) { s.scanErrors = 1 }, want: want{err: ErrUnknownTransaction}},
		{name: "commit agreeing with the log", commit: true, branches: []Branch{ours(onA), onB}, first: both,
			snap: func(s *snapshot) { s.entries[gPast] = committedEntry(gPast, namesA0) },
			want: want{class: CommitPending, action: ActionCommit, act: 2, end: true}},
		{name: "commit agreeing with a kept decision", commit: true, branches: []Branch{ours(onA)}, first: both,
			snap: func(s *snapshot) { s.kept[gPast] = kept{decisionlog.Decision{GTRID: gPast}, tKeep} },
			want: want{class: CommitPending, action: ActionCommit, act: 1, end: true}},
		{name: "commit of a decision ended, a branch still prepared", commit: true, branches: []Branch{ours(onA)}, first: both,
			snap: func(s *snapshot) { s.entries[gPast] = decisionlog.Entry{GTRID: gPast, State: decisionlog.StateDone} },
			want: want{class: CommitPending, action: ActionCommit, act: 1, end: true}},
		{name: "commit without a decision is refused", commit: true, branches: []Branch{ours(onA)}, first: both,
			want: want{err: ErrContradictsLog, act: 1}},
		{name: "commit without a decision, forced", commit: true, force: true, branches: []Branch{ours(onA)}, first: both,
			want: want{heuristic: true, class: Heuristic, action: ActionCommit, act: 1}},
		{name: "commit after an abort is refused", commit: true, branches: []Branch{ours(onA)}, first: both,
			snap: func(s *snapshot) { s.entries[gPast] = decisionlog.Entry{GTRID: gPast, State: decisionlog.StateAborted} },
			want: want{err: ErrContradictsLog, act: 1}},
		{name: "rollback after a commit decision is refused", branches: []Branch{ours(onA)}, first: both,
			snap: func(s *snapshot) { s.entries[gPast] = committedEntry(gPast, namesA0) },
			want: want{err: ErrContradictsLog, act: 1}},
		{name: "rollback after a kept commit decision is refused", branches: []Branch{ours(onA)}, first: both,
			snap: func(s *snapshot) { s.fence = "k"; s.kept[gPast] = kept{decisionlog.Decision{GTRID: gPast}, tKeep} },
			want: want{err: ErrContradictsLog, act: 1}},
		{name: "rollback after a commit decision, forced", force: true, branches: []Branch{ours(onA)}, first: both,
			snap: func(s *snapshot) { s.entries[gPast] = committedEntry(gPast, namesA0) },
			want: want{heuristic: true, class: Heuristic, action: ActionRollback, act: 1}},
		{name: "rollback without a decision: the abort is recorded first", branches: []Branch{ours(onA)}, first: both,
			want: want{recordAbort: true, class: AbortPending, action: ActionRollback, act: 1}},
		{name: "rollback of a transaction only the log knows", snap: func(s *snapshot) {
			s.entries[gPast] = decisionlog.Entry{GTRID: gPast, State: decisionlog.StateAborted}
		}, want: want{recordAbort: true}},
		{name: "rollback without a decision, a fence keeper: fence it first", branches: []Branch{ours(onA)}, first: both,
			snap: func(s *snapshot) { s.fence = "k" },
			want: want{fenceFirst: true, act: 1}},
		{name: "rollback, the fence found a commit decision: refused", branches: []Branch{ours(onA)}, first: both,
			snap: func(s *snapshot) { s.fence = "k"; s.fenced[gPast] = true },
			want: want{err: ErrContradictsLog, act: 1}},
		{name: "rollback, the fence found none", branches: []Branch{ours(onA)}, first: both,
			snap: func(s *snapshot) { s.fence = "k"; s.fenced[gPast] = false },
			want: want{recordAbort: true, class: AbortPending, action: ActionRollback, act: 1}},
		{name: "a branch listed by the second scan only waits", commit: true, branches: []Branch{ours(onA), onB}, first: map[drivers.XID]bool{onA: true},
			snap: func(s *snapshot) { s.entries[gPast] = committedEntry(gPast, namesA0) },
			want: want{class: CommitPending, action: ActionCommit, act: 1, wait: 1}},
		{name: "a branch not ours to finish keeps the decision", commit: true, branches: []Branch{ours(onA), notOurs}, first: both,
			snap: func(s *snapshot) { s.entries[gPast] = committedEntry(gPast, namesA0) },
			want: want{class: CommitPending, action: ActionCommit, act: 1, wait: 1}},
		{name: "other transactions' branches are not part of it", commit: true, branches: []Branch{ours(onA), ours(youngA)}, first: both,
			snap: func(s *snapshot) {
				s.entries[gPast] = committedEntry(gPast, namesA0)
				s.entries[gYoung] = committedEntry(gYoung, namesA0)
			},
			want: want{class: CommitPending, action: ActionCommit, act: 1, end: true}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			s := tsnap(tc.branches, tc.snap)
			p := s.planResolve(resolveRequest{gtrid: gPast, commit: tc.commit, force: tc.force}, tc.first)
			w := tc.want
			if (w.err == nil) != (p.err == nil) || w.err != nil && !errors.Is(p.err, w.err) {
				t.Fatalf("err %v, want %v", p.err, w.err)
			}
			if p.fenceFirst != w.fenceFirst || p.recordAbort != w.recordAbort || p.heuristic != w.heuristic || p.end != w.end {
				t.Errorf("plan fenceFirst=%v recordAbort=%v heuristic=%v end=%v, want %v %v %v %v",
					p.fenceFirst, p.recordAbort, p.heuristic, p.end, w.fenceFirst, w.recordAbort, w.heuristic, w.end)
			}
			if len(p.act) != w.act || len(p.waiting) != w.wait {
				t.Fatalf("%d to act on, %d waiting; want %d, %d", len(p.act), len(p.waiting), w.act, w.wait)
			}
			if p.err != nil || p.fenceFirst {
				for _, b := range p.act {
					if b.Action != "" {
						t.Errorf("a refused or unfenced plan gave %s an action (%s)", b.ID, b.Action)
					}
				}
				return
			}
			for _, b := range p.act {
				if b.Class != w.class || b.Action != w.action {
					t.Errorf("%s: %s/%s, want %s/%s", b.ID, b.Class, b.Action, w.class, w.action)
				}
			}
			for _, b := range p.waiting {
				if b.Ours && (b.Class != Live || b.Action != ActionWait) {
					t.Errorf("waiting %s: %s/%s, want live/wait", b.ID, b.Class, b.Action)
				}
				if !b.Attention {
					t.Errorf("waiting %s needs no attention; the operator must come back to it", b.ID)
				}
			}
		})
	}
}

// An operator's resolve agrees with the log exactly when a pass would do
// the same: both read the decision off one snapshot.
func TestResolveAgreesWithClassify(t *testing.T) {
	mods := map[string]func(*snapshot){
		"no decision":       nil,
		"commit in the log": func(s *snapshot) { s.entries[gPast] = committedEntry(gPast, namesA0) },
		"log done":          func(s *snapshot) { s.entries[gPast] = decisionlog.Entry{GTRID: gPast, State: decisionlog.StateDone} },
		"abort in the log":  func(s *snapshot) { s.entries[gPast] = decisionlog.Entry{GTRID: gPast, State: decisionlog.StateAborted} },
		"kept commit": func(s *snapshot) {
			s.kept[gPast] = kept{decisionlog.Decision{GTRID: gPast, Participants: namesA0}, tKeep}
		},
		"abort marker":        func(s *snapshot) { s.kept[gPast] = kept{decisionlog.Decision{GTRID: gPast, Abort: true}, tKeep} },
		"found while fencing": func(s *snapshot) { s.fence = "k"; s.fenced[gPast] = true },
	}
	for name, mod := range mods {
		t.Run(name, func(t *testing.T) {
			s := tsnap([]Branch{ours(onA)}, mod)
			b := s.classify()[0]
			passCommits := b.Action == ActionCommit
			first := map[drivers.XID]bool{onA: true}
			for _, commit := range []bool{true, false} {
				p := s.planResolve(resolveRequest{gtrid: gPast, commit: commit}, first)
				refused := errors.Is(p.err, ErrContradictsLog)
				if agrees := commit == passCommits; refused == agrees {
					t.Errorf("a pass does %s (%s); resolve commit=%v refused=%v", b.Action, b.Class, commit, refused)
				}
			}
		})
	}
}

// DeadBefore: this node's transactions that began before it belong to a
// dead incarnation and are orphans at once, without the fence; nothing
// else changes.
func TestClassifyDeadBefore(t *testing.T) {
	young := youngA.Global // began a second before tNow, a minute left in its fence
	otherYoung := drivers.XID{Global: tgid("n2", 6, time.Second, time.Minute)}
	before := young.Begin().Add(time.Millisecond) // young began before it
	dead := func(s *snapshot) { s.deadBefore = before }
	tests := []struct {
		name   string
		branch Branch
		snap   func(*snapshot)
		class  Class
		action Action
		attn   bool
		reason string // a substring of the reason
	}{
		{name: "zero DeadBefore: the fence as today", branch: ours(youngA),
			class: Live, action: ActionNone, reason: "within its fence"},
		{name: "began before DeadBefore: an orphan within its fence", branch: ours(youngA), snap: dead,
			class: Orphan, action: ActionRollback, attn: true, reason: "its incarnation is dead"},
		{name: "began exactly at DeadBefore: this incarnation's, the fence", branch: ours(youngA),
			snap:  func(s *snapshot) { s.deadBefore = young.Begin() },
			class: Live, action: ActionNone, reason: "within its fence"},
		{name: "began after DeadBefore (the clock stepped back): the fence", branch: ours(youngA),
			snap:  func(s *snapshot) { s.deadBefore = young.Begin().Add(-time.Hour) },
			class: Live, action: ActionNone, reason: "within its fence"},
		{name: "already past its fence: an orphan either way", branch: ours(onA), snap: dead,
			class: Orphan, action: ActionRollback, attn: true, reason: "presumed abort"},
		{name: "another node's: never affected", branch: ours(otherYoung), snap: dead,
			class: UnknownOwner, action: ActionNone, reason: `belongs to node "n2"`},
		{name: "another node's, past its fence: never affected", branch: ours(otherA), snap: dead,
			class: UnknownOwner, action: ActionNone},
		{name: "still the two-scan rule: seen once", branch: ours(youngA),
			snap:  func(s *snapshot) { dead(s); delete(s.firstSeen, youngA) },
			class: Orphan, action: ActionWait, attn: true, reason: "waiting until it has been seen"},
		{name: "still the two-scan rule: seen less than Settle ago", branch: ours(youngA),
			snap:  func(s *snapshot) { dead(s); s.firstSeen[youngA] = tNow.Add(-time.Millisecond) },
			class: Orphan, action: ActionWait, attn: true},
		{name: "a decision table unreadable: not presumed aborted", branch: ours(youngA),
			snap:  func(s *snapshot) { dead(s); s.keptUnknown = true },
			class: Orphan, action: ActionWait, attn: true, reason: "a decision table could not be read"},
		{name: "running in this process: left to it", branch: ours(youngA),
			snap:  func(s *snapshot) { dead(s); s.active[young] = true },
			class: Live, action: ActionNone, reason: "running in this coordinator"},
		{name: "commit decision in the log: still committed", branch: ours(youngA),
			snap:  func(s *snapshot) { dead(s); s.entries[young] = committedEntry(young, namesA0) },
			class: CommitPending, action: ActionCommit, attn: true, reason: "commit decision in the log"},
		{name: "commit decision kept: still committed", branch: ours(youngA),
			snap: func(s *snapshot) {
				dead(s)
				s.kept[young] = kept{decisionlog.Decision{GTRID: young, Participants: namesA0}, tKeep}
			},
			class: CommitPending, action: ActionCommit, attn: true, reason: "commit decision kept in k"},
		{name: "abort marker kept: rolled back by it", branch: ours(youngA),
			snap: func(s *snapshot) {
				dead(s)
				s.kept[young] = kept{decisionlog.Decision{GTRID: young, Abort: true}, tKeep}
			},
			class: AbortPending, action: ActionRollback, attn: true, reason: "abort marker in k"},
		{name: "fencing the keeper found a commit decision: committed", branch: ours(youngA),
			snap:  func(s *snapshot) { dead(s); s.fence = "k"; s.fenced[young] = true },
			class: CommitPending, action: ActionCommit, attn: true, reason: "found while fencing"},
		{name: "fenced in the keeper, no decision: an orphan", branch: ours(youngA),
			snap:  func(s *snapshot) { dead(s); s.fence = "k"; s.fenced[young] = false },
			class: Orphan, action: ActionRollback, attn: true, reason: "its incarnation is dead"},
		{name: "operator forced an outcome: still left to the operator", branch: ours(youngA),
			snap: func(s *snapshot) {
				dead(s)
				e := committedEntry(young, namesA0)
				e.Actions = []decisionlog.Action{{GTRID: young, Op: "forced-rollback", Heuristic: true}}
				s.entries[young] = e
			},
			class: Heuristic, action: ActionNone, attn: true, reason: "resolve it by hand"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			s := tsnap([]Branch{tc.branch}, tc.snap)
			b := s.classify()[0]
			if b.Class != tc.class || b.Action != tc.action || b.Attention != tc.attn {
				t.Errorf("got %s/%s attention=%v, want %s/%s attention=%v (reason %q)",
					b.Class, b.Action, b.Attention, tc.class, tc.action, tc.attn, b.Reason)
			}
			if !strings.Contains(b.Reason, tc.reason) {
				t.Errorf("reason %q does not say %q", b.Reason, tc.reason)
			}
		})
	}
}
