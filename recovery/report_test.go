package recovery

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/xabridge/xabridge/decisionlog"
	"github.com/xabridge/xabridge/drivers"
	"github.com/xabridge/xabridge/internal/fakeres"
)

// Every Scan, Pass and Resolve hands its report, marked with its kind, to
// OnReport.
func TestOnReportSeesEveryReport(t *testing.T) {
	var got []*Report
	e := newEnv(t, func(c *Config) { c.OnReport = func(r *Report) { got = append(got, r) } })
	ctx := context.Background()
	g := gid("n1", time.Hour, -time.Minute)
	e.a.AddPrepared(x(g, 0))

	scan := e.rec.Scan(ctx)
	dry := e.rec.Pass(ctx, true)
	pass := e.rec.Pass(ctx, false)
	res, err := e.rec.Resolve(ctx, g, false, false, "test")
	if err != nil {
		t.Fatal(err)
	}
	want := []struct {
		rep  *Report
		kind ReportKind
	}{{scan, KindScan}, {dry, KindDryRun}, {pass, KindPass}, {res, KindResolve}}
	if len(got) != len(want) {
		t.Fatalf("OnReport saw %d reports, want %d", len(got), len(want))
	}
	for i, w := range want {
		if got[i] != w.rep || got[i].Kind != w.kind {
			t.Errorf("report %d: kind %q (same report: %v), want %q", i, got[i].Kind, got[i] == w.rep, w.kind)
		}
		if strings.Join(got[i].Resources, ",") != "a,b" || got[i].Duration <= 0 {
			t.Errorf("report %d: resources %v, duration %v", i, got[i].Resources, got[i].Duration)
		}
	}
}

// A pass logs an in-doubt branch of its node once, when it first sees it
// (a heuristic one at error level), and each action it takes; live
// branches and other nodes' are not its to report.
func TestPassLogsStateChangesOnce(t *testing.T) {
	var buf bytes.Buffer
	logger := slog.New(slog.NewTextHandler(&buf, &slog.HandlerOptions{Level: slog.LevelInfo}))
	e := newEnv(t, func(c *Config) { c.Logger = logger })
	ctx := context.Background()
	orphan := gid("n1", time.Hour, -time.Minute)
	live := gid("n1", time.Second, time.Hour)
	other := gid("n2", time.Hour, -time.Minute)
	done := gid("n1", time.Minute, time.Minute)
	e.a.AddPrepared(x(orphan, 0))
	e.a.AddPrepared(x(live, 0))
	e.b.AddPrepared(x(other, 0))
	if err := e.log.Commit(ctx, decisionlog.Decision{GTRID: done, Participants: []decisionlog.Participant{{Resource: "b"}}}); err != nil {
		t.Fatal(err)
	}
	if err := e.log.End(done); err != nil {
		t.Fatal(err)
	}
	e.b.AddPrepared(x(done, 0))

	e.rec.Pass(ctx, false)
	e.rec.Pass(ctx, false)
	e.rec.Pass(ctx, false)
	logs := buf.String()
	count := func(s string) int { return strings.Count(logs, s) }
	if n := count(`msg="in-doubt branch found"`); n != 1 || !strings.Contains(logs, "gtrid="+orphan.String()) {
		t.Errorf("%d in-doubt events, want 1 (the orphan):\n%s", n, logs)
	}
	if n := count(`level=ERROR msg="heuristic branch`); n != 1 {
		t.Errorf("%d heuristic errors, want 1:\n%s", n, logs)
	}
	if n := count(`msg="recovery resolved a branch"`); n != 2 {
		t.Errorf("%d resolutions logged, want 2 (the orphan, the heuristic one):\n%s", n, logs)
	}
	if strings.Contains(logs, live.String()) || strings.Contains(logs, other.String()) {
		t.Errorf("live or other nodes' branches logged:\n%s", logs)
	}
}

// racingRes is a resource whose coordinator finishes a transaction right
// after recovery listed its branch: it commits the branch and ends the
// transaction in the log once the listing is taken.
type racingRes struct {
	*fakeres.Resource
	log   decisionlog.Log
	xid   drivers.XID
	armed bool
}

func (r *racingRes) Recover(ctx context.Context) ([]drivers.Prepared, error) {
	ps, err := r.Resource.Recover(ctx)
	if r.armed {
		r.armed = false
		_ = r.Resource.CommitPrepared(ctx, r.xid)
		_ = r.log.End(r.xid.Global)
	}
	return ps, err
}

// A branch its coordinator commits while recovery scans is no heuristic
// outcome, though the log says "done" by the time recovery reads it.
func TestBranchFinishedDuringTheScanIsNoHeuristic(t *testing.T) {
	var buf bytes.Buffer
	logger := slog.New(slog.NewTextHandler(&buf, nil))
	l, err := decisionlog.OpenFileLog(t.TempDir(), decisionlog.FileLogOptions{})
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	ctx := context.Background()
	g := gid("n1", time.Second, time.Minute)
	if err := l.Commit(ctx, decisionlog.Decision{GTRID: g, Participants: []decisionlog.Participant{{Resource: "a"}}}); err != nil {
		t.Fatal(err)
	}
	a := &racingRes{Resource: fakeres.New("a"), log: l, xid: x(g, 0), armed: true}
	a.AddPrepared(x(g, 0))
	rec, err := New(Config{NodeID: "n1", Log: l, Resources: []drivers.Resource{a}, Settle: -1, Logger: logger,
		Active: func(drivers.GlobalID) bool { return false }})
	if err != nil {
		t.Fatal(err)
	}
	rep := rec.Pass(ctx, false)
	for _, b := range rep.Branches {
		if b.Class == Heuristic {
			t.Errorf("branch %s reported heuristic: %s", b.ID, b.Reason)
		}
	}
	if strings.Contains(buf.String(), "heuristic") {
		t.Errorf("a heuristic outcome was logged:\n%s", buf.String())
	}
}

// recheckFails is a resource whose second listing fails: the re-listing
// the first pass does to confirm a heuristic branch.
type recheckFails struct {
	*fakeres.Resource
	n int
}

func (r *recheckFails) Recover(ctx context.Context) ([]drivers.Prepared, error) {
	r.n++
	if r.n == 2 {
		return nil, drivers.NewError(r.Name(), "recover", drivers.XID{}, drivers.ErrRetryable, context.Canceled)
	}
	return r.Resource.Recover(ctx)
}

// A heuristic suspect that cannot be listed again (a pass cut short at
// shutdown) is neither reported nor acted on; the next pass judges it
// afresh: a branch that is gone was finished by its coordinator, one still
// there is a heuristic, reported once.
func TestUnconfirmedHeuristicWaitsForTheNextPass(t *testing.T) {
	for _, stillThere := range []bool{false, true} {
		t.Run(fmt.Sprintf("still prepared at the next pass=%v", stillThere), func(t *testing.T) {
			var buf bytes.Buffer
			logger := slog.New(slog.NewTextHandler(&buf, nil))
			l, err := decisionlog.OpenFileLog(t.TempDir(), decisionlog.FileLogOptions{})
			if err != nil {
				t.Fatal(err)
			}
			defer l.Close()
			ctx := context.Background()
			g := gid("n1", time.Second, time.Minute)
			if err := l.Commit(ctx, decisionlog.Decision{GTRID: g, Participants: []decisionlog.Participant{{Resource: "a"}}}); err != nil {
				t.Fatal(err)
			}
			if err := l.End(g); err != nil {
				t.Fatal(err)
			}
			a := &recheckFails{Resource: fakeres.New("a")}
			a.AddPrepared(x(g, 0))
			rec, err := New(Config{NodeID: "n1", Log: l, Resources: []drivers.Resource{a}, Settle: -1, Logger: logger,
				Active: func(drivers.GlobalID) bool { return false }})
			if err != nil {
				t.Fatal(err)
			}
			rep := rec.Pass(ctx, false)
			if len(rep.Branches) != 1 || rep.Branches[0].Action != ActionWait || rep.Branches[0].Result != "" {
				t.Fatalf("first pass: %+v, want the branch waiting, untouched", rep.Branches)
			}
			if strings.Contains(buf.String(), "heuristic") || a.Count("commit-prepared") != 0 {
				t.Fatalf("unconfirmed suspect reported or acted on:\n%s", buf.String())
			}
			if !stillThere {
				// Its coordinator finished it meanwhile.
				if err := a.CommitPrepared(ctx, x(g, 0)); err != nil {
					t.Fatal(err)
				}
			}
			rec.Pass(ctx, false)
			n := strings.Count(buf.String(), `level=ERROR msg="heuristic branch`)
			if want := map[bool]int{false: 0, true: 1}[stillThere]; n != want {
				t.Errorf("%d heuristic errors after the second pass, want %d:\n%s", n, want, buf.String())
			}
		})
	}
}

// A busy, healthy service has branches in flight: running in its
// coordinator, within their fence undecided, or decided and in phase 2.
// None needs attention; one past its fence with no decision does.
func TestBusyServiceNeedsNoAttention(t *testing.T) {
	ctx := context.Background()
	running := gid("n1", time.Hour, -time.Minute) // past its deadline, still running here
	e := newEnv(t, func(c *Config) { c.Active = func(g drivers.GlobalID) bool { return g == running } })
	young, deciding := gid("n1", time.Second, time.Minute), gid("n1", time.Second, time.Minute)
	e.a.AddPrepared(x(running, 0))
	e.a.AddPrepared(x(young, 0))
	e.b.AddPrepared(x(young, 1))
	e.bothLogged(t, deciding)
	e.b.AddPrepared(x(gid("n2", time.Hour, -time.Hour), 1)) // another node's: not counted
	rep := e.rec.Scan(ctx)
	if rep.NeedsAttention() != 0 || rep.InFlight() != 5 || rep.Remaining() != 5 {
		t.Fatalf("needs attention %d, in flight %d, remaining %d; want 0, 5, 5", rep.NeedsAttention(), rep.InFlight(), rep.Remaining())
	}
	stuck := gid("n1", time.Hour, -time.Minute)
	e.a.AddPrepared(x(stuck, 0))
	rep = e.rec.Scan(ctx)
	if rep.NeedsAttention() != 1 || rep.InFlight() != 5 || rep.Remaining() != 6 {
		t.Fatalf("needs attention %d, in flight %d, remaining %d; want 1, 5, 6", rep.NeedsAttention(), rep.InFlight(), rep.Remaining())
	}
	for _, b := range rep.Branches {
		if b.Attention != (b.XID.Global == stuck) {
			t.Errorf("%s (%s): attention %v", b.ID, b.Class, b.Attention)
		}
	}
}

// What a pass finished counts nowhere; what it failed or was told "busy"
// on still counts, as it did before the pass.
func TestReportCounts(t *testing.T) {
	b := func(c Class, a Action, attn bool, result string, err error) Branch {
		return Branch{Class: c, Action: a, Attention: attn, Result: result, Err: err}
	}
	rep := &Report{Branches: []Branch{
		b(Orphan, ActionRollback, true, ResultRolledBack, nil),           // finished
		b(CommitPending, ActionCommit, true, ResultAlreadyFinished, nil), // finished
		b(Orphan, ActionRollback, true, "failed: x", errors.New("x")),    // attention
		b(CommitPending, ActionCommit, true, ResultBusy, nil),            // attention
		b(Orphan, ActionWait, true, "", nil),                             // attention
		b(Live, ActionNone, false, "", nil),                              // in flight
		b(CommitPending, ActionCommit, false, "", nil),                   // in flight (phase 2 within the fence)
		b(UnknownOwner, ActionNone, false, "", nil),                      // another node's
		b(Foreign, ActionNone, false, "", nil),                           // not ours
	}}
	if a, f, r := rep.NeedsAttention(), rep.InFlight(), rep.Remaining(); a != 3 || f != 2 || r != 5 {
		t.Fatalf("needs attention %d, in flight %d, remaining %d; want 3, 2, 5", a, f, r)
	}
}
