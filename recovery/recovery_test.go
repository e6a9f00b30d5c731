package recovery

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/xabridge/xabridge/decisionlog"
	"github.com/xabridge/xabridge/drivers"
	"github.com/xabridge/xabridge/internal/fakeres"
)

type env struct {
	log  *decisionlog.FileLog
	a, b *fakeres.Resource
	rec  *Recoverer
}

func newEnv(t *testing.T, mod func(*Config)) *env {
	t.Helper()
	l, err := decisionlog.OpenFileLog(t.TempDir(), decisionlog.FileLogOptions{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	e := &env{log: l, a: fakeres.New("a"), b: fakeres.New("b")}
	cfg := Config{NodeID: "n1", Log: l, Resources: []drivers.Resource{e.a, e.b}, Settle: -1}
	if mod != nil {
		mod(&cfg)
	}
	e.rec, err = New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return e
}

var seq uint32

// gid makes a global id of node that began age ago with the given time left
// to its deadline (negative: past it).
func gid(node string, age, left time.Duration) drivers.GlobalID {
	seq++
	now := time.Now()
	return drivers.MustGlobalID(node, now.Add(-age).Truncate(time.Millisecond).UTC(), seq, now.Add(left).Truncate(time.Millisecond).UTC())
}

func x(g drivers.GlobalID, br uint8) drivers.XID { return drivers.XID{Global: g, Branch: br} }

func classes(r *Report) map[string]Class {
	m := map[string]Class{}
	for _, b := range r.Branches {
		m[b.Resource+" "+b.ID] = b.Class
	}
	return m
}

func TestCommitPendingIsCommittedAndEnded(t *testing.T) {
	e := newEnv(t, nil)
	g := gid("n1", time.Minute, -30*time.Second)
	e.a.AddPrepared(x(g, 0))
	e.b.AddPrepared(x(g, 1))
	// A decision made before the deadline: write it with a live gtrid
	// then let the branches be found later.
	g2 := gid("n1", time.Second, time.Minute)
	e.a.AddPrepared(x(g2, 0))
	e.b.AddPrepared(x(g2, 1))
	if err := e.log.Commit(context.Background(), decisionlog.Decision{GTRID: g2, Participants: []decisionlog.Participant{{Resource: "a", Branch: 0}, {Resource: "b", Branch: 1}}}); err != nil {
		t.Fatal(err)
	}
	// The first pass only notes the branches (the two-scan rule).
	if rep := e.rec.Pass(context.Background(), false); rep.Remaining() != 4 {
		t.Fatalf("first pass left %d in doubt, want all 4", rep.Remaining())
	}
	rep := e.rec.Pass(context.Background(), false)
	for _, b := range rep.Branches {
		if b.XID.Global == g2 && (b.Class != CommitPending || b.Result != "committed") {
			t.Errorf("%s on %s: %s/%s, want commit-pending/committed", b.ID, b.Resource, b.Class, b.Result)
		}
	}
	if e.a.State(x(g2, 0)) != "committed" || e.b.State(x(g2, 1)) != "committed" {
		t.Fatal("decided branches not committed")
	}
	if len(rep.Ended) != 1 || len(e.log.Pending()) != 0 {
		t.Fatalf("ended %v, pending %v", rep.Ended, e.log.Pending())
	}
	if e.a.State(x(g, 0)) != "rolled-back" {
		t.Fatalf("orphan seen in two scans not rolled back")
	}
}

func TestOrphanNeedsTwoScansThenIsFenced(t *testing.T) {
	e := newEnv(t, nil)
	g := gid("n1", time.Hour, -time.Minute)
	e.a.AddPrepared(x(g, 0))

	rep := e.rec.Pass(context.Background(), false)
	if c := rep.Branches[0]; c.Class != Orphan || c.Action != ActionWait {
		t.Fatalf("first scan: %s/%s", c.Class, c.Action)
	}
	if e.a.State(x(g, 0)) != "prepared" || rep.Remaining() != 1 {
		t.Fatal("orphan rolled back after a single scan")
	}
	rep = e.rec.Pass(context.Background(), false)
	if c := rep.Branches[0]; c.Action != ActionRollback || c.Result != "rolled back" {
		t.Fatalf("second scan: %s/%s/%s", c.Class, c.Action, c.Result)
	}
	if rep.Remaining() != 0 {
		t.Fatalf("remaining = %d", rep.Remaining())
	}
	// The fence: the presumed abort is in the log, so a late commit
	// decision for the same transaction is refused.
	if en, _ := e.log.Lookup(g); en.State != decisionlog.StateAborted {
		t.Fatalf("log state %v, want aborted", en.State)
	}
	err := e.log.Commit(context.Background(), decisionlog.Decision{GTRID: g, Participants: []decisionlog.Participant{{Resource: "a"}}})
	if !errors.Is(err, decisionlog.ErrFenced) {
		t.Fatalf("late commit decision: %v, want ErrFenced", err)
	}
}

func TestDryRunNeitherActsNorCounts(t *testing.T) {
	e := newEnv(t, nil)
	g := gid("n1", time.Hour, -time.Minute)
	e.a.AddPrepared(x(g, 0))
	for i := 0; i < 3; i++ {
		e.rec.Pass(context.Background(), true)
	}
	rep := e.rec.Pass(context.Background(), false)
	if c := rep.Branches[0]; c.Action != ActionWait {
		t.Fatalf("dry runs counted as scans: action %s", c.Action)
	}
}

func TestLeftAlone(t *testing.T) {
	active := gid("n1", time.Hour, -time.Minute)
	e := newEnv(t, func(c *Config) {
		c.Active = func(g drivers.GlobalID) bool { return g == active }
	})
	young := gid("n1", time.Second, time.Minute)
	other := gid("n2", time.Hour, -time.Hour)
	e.a.AddPrepared(x(young, 0))
	e.a.AddPrepared(x(active, 0))
	e.b.AddPrepared(x(other, 1))
	e.b.AddForeign("foreign-gid'; --")
	var rep *Report
	for i := 0; i < 3; i++ {
		rep = e.rec.Pass(context.Background(), false)
	}
	want := map[string]Class{
		"a " + x(young, 0).GID():  Live,
		"a " + x(active, 0).GID(): Live,
		"b " + x(other, 1).GID():  UnknownOwner,
		"b foreign-gid'; --":      Foreign,
	}
	got := classes(rep)
	for k, v := range want {
		if got[k] != v {
			t.Errorf("%s: class %q, want %q", k, got[k], v)
		}
	}
	for _, xid := range []drivers.XID{x(young, 0), x(active, 0)} {
		if e.a.State(xid) != "prepared" {
			t.Errorf("%s was touched", xid)
		}
	}
	if e.b.State(x(other, 1)) != "prepared" || len(e.b.Foreign()) != 1 {
		t.Error("another node's or a foreign transaction was touched")
	}
	if e.a.Count("rollback-prepared")+e.b.Count("rollback-prepared")+e.a.Count("commit-prepared")+e.b.Count("commit-prepared") != 0 {
		t.Error("recovery acted on branches it must leave alone")
	}
}

func TestMinAgeOverridesTheFence(t *testing.T) {
	zero := time.Duration(0)
	e := newEnv(t, func(c *Config) { c.MinAge = &zero })
	young := gid("n1", time.Second, time.Minute)
	e.a.AddPrepared(x(young, 0))
	e.rec.Pass(context.Background(), false)
	e.rec.Pass(context.Background(), false)
	if got := e.a.State(x(young, 0)); got != "rolled-back" {
		t.Fatalf("branch is %s with --min-age 0", got)
	}
}

func TestBusyIsRetriedOnTheNextPass(t *testing.T) {
	e := newEnv(t, nil)
	g := gid("n1", time.Second, time.Minute)
	e.a.AddPrepared(x(g, 0))
	e.b.AddPrepared(x(g, 1))
	if err := e.log.Commit(context.Background(), decisionlog.Decision{GTRID: g, Participants: []decisionlog.Participant{{Resource: "a", Branch: 0}, {Resource: "b", Branch: 1}}}); err != nil {
		t.Fatal(err)
	}
	e.rec.Pass(context.Background(), false) // first sighting
	e.b.FailNext("commit-prepared", drivers.ErrBusy)
	rep := e.rec.Pass(context.Background(), false)
	if rep.Remaining() != 1 || len(rep.Ended) != 0 {
		t.Fatalf("remaining %d, ended %v after a busy answer", rep.Remaining(), rep.Ended)
	}
	rep = e.rec.Pass(context.Background(), false)
	if rep.Remaining() != 0 || len(rep.Ended) != 1 {
		t.Fatalf("second pass: remaining %d, ended %v", rep.Remaining(), rep.Ended)
	}
	if e.b.State(x(g, 1)) != "committed" {
		t.Fatal("busy branch not committed on the next pass")
	}
}

func TestScanErrorIsReportedAndBlocksEnd(t *testing.T) {
	e := newEnv(t, nil)
	g := gid("n1", time.Second, time.Minute)
	e.a.AddPrepared(x(g, 0))
	if err := e.log.Commit(context.Background(), decisionlog.Decision{GTRID: g, Participants: []decisionlog.Participant{{Resource: "a", Branch: 0}, {Resource: "b", Branch: 1}}}); err != nil {
		t.Fatal(err)
	}
	e.b.FailNext("recover", drivers.ErrRetryable)
	rep := e.rec.Pass(context.Background(), false)
	if len(rep.ScanErrors) != 1 || rep.ScanErrors[0].Resource != "b" {
		t.Fatalf("scan errors %v", rep.ScanErrors)
	}
	if len(rep.Ended) != 0 || len(e.log.Pending()) != 1 {
		t.Fatal("decision ended although resource b could not be scanned")
	}
}

func TestResolve(t *testing.T) {
	ctx := context.Background()
	t.Run("commit without decision is refused, then forced", func(t *testing.T) {
		e := newEnv(t, nil)
		g := gid("n1", time.Hour, -time.Minute)
		e.a.AddPrepared(x(g, 0))
		if _, err := e.rec.Resolve(ctx, g, true, false, "op"); !errors.Is(err, ErrContradictsLog) {
			t.Fatalf("err = %v, want ErrContradictsLog", err)
		}
		if e.a.State(x(g, 0)) != "prepared" {
			t.Fatal("a refused resolve changed something")
		}
		rep, err := e.rec.Resolve(ctx, g, true, true, "op")
		if err != nil {
			t.Fatal(err)
		}
		if rep.Branches[0].Class != Heuristic || e.a.State(x(g, 0)) != "committed" {
			t.Fatalf("forced commit: class %s, state %s", rep.Branches[0].Class, e.a.State(x(g, 0)))
		}
		if en, _ := e.log.Lookup(g); !en.Heuristic() {
			t.Fatal("forced commit not recorded as heuristic")
		}
	})
	t.Run("rollback after decision is refused", func(t *testing.T) {
		e := newEnv(t, nil)
		g := gid("n1", time.Second, time.Minute)
		e.a.AddPrepared(x(g, 0))
		if err := e.log.Commit(ctx, decisionlog.Decision{GTRID: g, Participants: []decisionlog.Participant{{Resource: "a"}}}); err != nil {
			t.Fatal(err)
		}
		if _, err := e.rec.Resolve(ctx, g, false, false, "op"); !errors.Is(err, ErrContradictsLog) {
			t.Fatalf("err = %v", err)
		}
		if _, err := e.rec.Resolve(ctx, g, true, false, "op"); err != nil {
			t.Fatal(err)
		}
		if e.a.State(x(g, 0)) != "committed" {
			t.Fatal("resolve --commit with a decision did not commit")
		}
	})
	t.Run("rollback without decision fences the commit", func(t *testing.T) {
		e := newEnv(t, nil)
		g := gid("n1", time.Second, time.Minute)
		e.a.AddPrepared(x(g, 0))
		if _, err := e.rec.Resolve(ctx, g, false, false, "op"); err != nil {
			t.Fatal(err)
		}
		if e.a.State(x(g, 0)) != "rolled-back" {
			t.Fatal("not rolled back")
		}
		if err := e.log.Commit(ctx, decisionlog.Decision{GTRID: g, Participants: []decisionlog.Participant{{Resource: "a"}}}); !errors.Is(err, decisionlog.ErrFenced) {
			t.Fatalf("commit after resolve --rollback: %v", err)
		}
	})
	t.Run("unknown and other node", func(t *testing.T) {
		e := newEnv(t, nil)
		if _, err := e.rec.Resolve(ctx, gid("n1", time.Second, time.Minute), true, false, "op"); !errors.Is(err, ErrUnknownTransaction) {
			t.Fatalf("unknown: %v", err)
		}
		if _, err := e.rec.Resolve(ctx, gid("n2", time.Second, time.Minute), true, true, "op"); !errors.Is(err, ErrOtherNode) {
			t.Fatalf("other node: %v", err)
		}
	})
}

func TestSettleDelaysEveryAction(t *testing.T) {
	e := newEnv(t, func(c *Config) { c.Settle = time.Hour })
	g := gid("n1", time.Second, time.Minute)
	e.a.AddPrepared(x(g, 0))
	if err := e.log.Commit(context.Background(), decisionlog.Decision{GTRID: g, Participants: []decisionlog.Participant{{Resource: "a"}}}); err != nil {
		t.Fatal(err)
	}
	orphan := gid("n1", time.Hour, -time.Minute)
	e.b.AddPrepared(x(orphan, 1))
	for i := 0; i < 3; i++ {
		rep := e.rec.Pass(context.Background(), false)
		for _, b := range rep.Branches {
			if b.Action != ActionWait {
				t.Fatalf("pass %d: %s %s acted before it settled", i, b.ID, b.Action)
			}
		}
	}
	if e.a.State(x(g, 0)) != "prepared" || e.b.State(x(orphan, 1)) != "prepared" {
		t.Fatal("a branch was finished before it settled")
	}
}
