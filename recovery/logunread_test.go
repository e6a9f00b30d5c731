package recovery

import (
	"context"
	"errors"
	"sync/atomic"
	"testing"
	"time"

	"github.com/xabridge/xabridge/decisionlog"
	"github.com/xabridge/xabridge/drivers"
	"github.com/xabridge/xabridge/internal/fakeres"
)

// unreadableLog is a decision log whose checked reads fail while failing
// is set (a database store that cannot be read): its unchecked Lookup and
// Pending then answer "nothing", as pgstore's do.
type unreadableLog struct {
	decisionlog.Log
	failing atomic.Bool
}

var errStoreDown = errors.New("store unreachable")

func (l *unreadableLog) Lookup(g drivers.GlobalID) (decisionlog.Entry, bool) {
	if l.failing.Load() {
		return decisionlog.Entry{}, false
	}
	return l.Log.Lookup(g)
}

func (l *unreadableLog) Pending() []decisionlog.Decision {
	if l.failing.Load() {
		return nil
	}
	return l.Log.Pending()
}

func (l *unreadableLog) LookupChecked(_ context.Context, g drivers.GlobalID) (decisionlog.Entry, bool, error) {
	if l.failing.Load() {
		return decisionlog.Entry{}, false, errStoreDown
	}
	e, ok := l.Log.Lookup(g)
	return e, ok, nil
}

func (l *unreadableLog) PendingChecked(context.Context) ([]decisionlog.Decision, error) {
	if l.failing.Load() {
		return nil, errStoreDown
	}
	return l.Log.Pending(), nil
}

// A failed read of the decision log is never "no decision": a branch whose
// commit decision could not be read is not presumed aborted (by a pass, a
// dry run or a resolve), nothing is ended, and the report says why.
func TestUnreadableLogIsNotNoDecision(t *testing.T) {
	ctx := context.Background()
	committed := gid("n1", time.Hour, -time.Minute) // decided (before its fence), now past it
	orphan := gid("n1", time.Hour, -time.Minute)    // undecided, past its fence
	// The log's clock: the commit decision was written in time.
	var decided atomic.Bool
	mem := decisionlog.NewMemLog(func() time.Time {
		if decided.Load() {
			return time.Now()
		}
		return committed.Begin()
	})
	l := &unreadableLog{Log: mem}
	a := fakeres.New("a")
	rec, err := New(Config{NodeID: "n1", Log: l, Resources: []drivers.Resource{a}, Settle: -1})
	if err != nil {
		t.Fatal(err)
	}
	a.AddPrepared(x(committed, 0))
	a.AddPrepared(x(orphan, 0))
	if err := mem.Commit(ctx, decisionlog.Decision{GTRID: committed, At: committed.Begin(), Participants: []decisionlog.Participant{{Resource: "a", Branch: 0}}}); err != nil {
		t.Fatal(err)
	}
	decided.Store(true)
	l.failing.Store(true)

	for _, name := range []string{"scan", "dry run", "pass", "pass again"} {
		var rep *Report
		switch name {
		case "scan":
			rep = rec.Scan(ctx)
		case "dry run":
			rep = rec.Pass(ctx, true)
		default:
			rep = rec.Pass(ctx, false)
		}
		if !errors.Is(rep.LogErr, errStoreDown) {
			t.Fatalf("%s: LogErr = %v, want the read's error", name, rep.LogErr)
		}
		for _, b := range rep.Branches {
			if b.Class != LogUnread || b.Action != ActionNone || !b.Attention {
				t.Errorf("%s: %s: %s/%s attention=%v, want log-unread/none, needing attention", name, b.XID.Global, b.Class, b.Action, b.Attention)
			}
		}
		if rep.Remaining() != 2 || len(rep.Ended) != 0 {
			t.Errorf("%s: remaining %d, ended %v; want 2 and none", name, rep.Remaining(), rep.Ended)
		}
	}
	for _, c := range []struct {
		g      drivers.GlobalID
		commit bool
		force  bool
	}{{committed, false, false}, {committed, false, true}, {orphan, true, false}, {orphan, false, false}} {
		_, err := rec.Resolve(ctx, c.g, c.commit, c.force, "test")
		if !errors.Is(err, ErrLogUnreadable) || !errors.Is(err, errStoreDown) {
			t.Errorf("resolve %s commit=%v force=%v: %v, want ErrLogUnreadable naming the read's error", c.g, c.commit, c.force, err)
		}
	}
	if a.State(x(committed, 0)) != "prepared" || a.State(x(orphan, 0)) != "prepared" {
		t.Fatal("a branch was touched while the log could not be read")
	}
	if e, _ := mem.Lookup(orphan); e.State != decisionlog.StateNone || len(e.Actions) != 0 {
		t.Fatalf("something was recorded for the orphan while the log could not be read: %+v", e)
	}

	// Once the log reads again, the same passes act as usual.
	l.failing.Store(false)
	rec.Pass(ctx, false)
	rep := rec.Pass(ctx, false)
	if rep.LogErr != nil || rep.Remaining() != 0 {
		t.Fatalf("after the log came back: LogErr %v, remaining %d", rep.LogErr, rep.Remaining())
	}
	if a.State(x(committed, 0)) != "committed" || a.State(x(orphan, 0)) != "rolled-back" {
		t.Fatalf("after the log came back: %s, %s", a.State(x(committed, 0)), a.State(x(orphan, 0)))
	}
}
