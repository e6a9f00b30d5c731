package recovery

import (
	"bytes"
	"context"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/xabridge/xabridge/decisionlog"
)

// syncBuffer is a bytes.Buffer safe for the logger's concurrent writes.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// Labelled branches keep their label through a pass: an undecided orphan
// (no record anywhere but its XIDs) and a decided one; recovery finishes
// both by their labelled XIDs and names the label in its log lines.
func TestLabelledBranches(t *testing.T) {
	var out syncBuffer
	e := newEnv(t, func(c *Config) { c.Logger = slog.New(slog.NewTextHandler(&out, nil)) })
	orphan := gid("n1", time.Hour, -time.Minute)
	decided := gid("n1", time.Second, time.Minute)
	xo := x(orphan, 0)
	xo.Label = "order-1"
	xd0, xd1 := x(decided, 0), x(decided, 1)
	xd0.Label, xd1.Label = "order-2", "order-2"
	e.a.AddPrepared(xo)
	e.a.AddPrepared(xd0)
	e.b.AddPrepared(xd1)
	if err := e.log.Commit(context.Background(), decisionlog.Decision{GTRID: decided, Label: "order-2",
		Participants: []decisionlog.Participant{{Resource: "a", Branch: 0}, {Resource: "b", Branch: 1}}}); err != nil {
		t.Fatal(err)
	}
	labels := func(rep *Report) map[string]string {
		m := map[string]string{}
		for _, b := range rep.Branches {
			m[b.Resource+"/"+b.XID.Global.String()] = b.XID.Label
		}
		return m
	}
	rep := e.rec.Pass(context.Background(), false)
	want := map[string]string{"a/" + orphan.String(): "order-1", "a/" + decided.String(): "order-2", "b/" + decided.String(): "order-2"}
	if got := labels(rep); len(got) != 3 || got["a/"+orphan.String()] != "order-1" || got["a/"+decided.String()] != "order-2" || got["b/"+decided.String()] != "order-2" {
		t.Fatalf("labels = %v, want %v", got, want)
	}
	e.rec.Pass(context.Background(), false)
	if e.a.State(xo) != "rolled-back" || e.a.State(xd0) != "committed" || e.b.State(xd1) != "committed" {
		t.Fatalf("states: orphan %s, decided %s %s", e.a.State(xo), e.a.State(xd0), e.b.State(xd1))
	}
	logs := out.String()
	for _, l := range []string{"label=order-1", "label=order-2"} {
		if !strings.Contains(logs, l) {
			t.Errorf("recovery's log lacks %s:\n%s", l, logs)
		}
	}
}
