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

// idRes is a fake resource that can tell which database it is.
type idRes struct {
	*fakeres.Resource
	id drivers.Identity
}

func (r idRes) Identity(context.Context) (drivers.Identity, error) { return r.id, nil }
func (r idRes) CachedIdentity() (drivers.Identity, bool)           { return r.id, true }

// A decision is acted on and ended only through resources that are the
// databases it recorded; a resource that differs (server, database,
// engine) or cannot tell is refused: its branch is left prepared, the
// decision stays pending, and the pass reports ErrWrongResource. A
// decision recorded without identities is handled as before.
func TestIdentityComparedBeforeActingAndEnding(t *testing.T) {
	idA := drivers.Identity{Engine: "postgres", Server: "7301", Database: "ledger"}
	idB := drivers.Identity{Engine: "mysql", Server: "uid X datadir /d", Database: "wallet"}
	tests := []struct {
		name       string
		recordIDs  bool
		bIs        drivers.Resource // resource "b" as configured (nil: the right one)
		wantRefuse bool
	}{
		{name: "right databases", recordIDs: true},
		{name: "another server", recordIDs: true, bIs: idRes{fakeres.New("b"), drivers.Identity{Engine: "mysql", Server: "uid Y datadir /d", Database: "wallet"}}, wantRefuse: true},
		{name: "another database", recordIDs: true, bIs: idRes{fakeres.New("b"), drivers.Identity{Engine: "mysql", Server: idB.Server, Database: "other"}}, wantRefuse: true},
		{name: "another engine", recordIDs: true, bIs: idRes{fakeres.New("b"), idA}, wantRefuse: true},
		{name: "a resource that cannot tell", recordIDs: true, bIs: fakeres.New("b"), wantRefuse: true},
		{name: "old decision without identities", recordIDs: false, bIs: idRes{fakeres.New("b"), drivers.Identity{Engine: "postgres", Server: "9", Database: "x"}}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ctx := context.Background()
			a, b := idRes{fakeres.New("a"), idA}, idRes{fakeres.New("b"), idB}
			g := gid("n1", 0, time.Minute)
			for i, r := range []drivers.Resource{a, b} {
				br, err := r.Begin(ctx, x(g, uint8(i)))
				if err != nil {
					t.Fatal(err)
				}
				if _, err := br.Prepare(ctx); err != nil {
					t.Fatal(err)
				}
			}
			log := decisionlog.NewMemLog(nil)
			ps := []decisionlog.Participant{{Resource: "a", Branch: 0}, {Resource: "b", Branch: 1}}
			if tt.recordIDs {
				ps[0].ID, ps[1].ID = idA.String(), idB.String()
			}
			if err := log.Commit(ctx, decisionlog.Decision{GTRID: g, Participants: ps}); err != nil {
				t.Fatal(err)
			}
			var bConf drivers.Resource = b
			if tt.bIs != nil {
				bConf = tt.bIs
			}
			rec, err := New(Config{NodeID: "n1", Log: log, Resources: []drivers.Resource{a, bConf}, Settle: -1})
			if err != nil {
				t.Fatal(err)
			}
			var rep *Report
			for range 2 {
				rep = rec.Pass(ctx, false)
			}
			refused := false
			for _, e := range rep.ScanErrors {
				refused = refused || errors.Is(e.Err, drivers.ErrWrongResource)
			}
			if refused != tt.wantRefuse {
				t.Fatalf("refused = %v, want %v (scan errors %v)", refused, tt.wantRefuse, rep.ScanErrors)
			}
			e, _ := log.Lookup(g)
			if tt.wantRefuse {
				if e.State != decisionlog.StateCommitted || len(rep.Ended) != 0 {
					t.Fatalf("decision %s, ended %v; want it pending", e.State, rep.Ended)
				}
				if got := b.State(x(g, 1)); got != "prepared" {
					t.Fatalf("b's branch is %q, want it left prepared", got)
				}
				if _, err := rec.Resolve(ctx, g, true, false, "op"); !errors.Is(err, drivers.ErrWrongResource) {
					t.Fatalf("resolve = %v, want ErrWrongResource", err)
				}
				return
			}
			if e.State != decisionlog.StateDone {
				t.Fatalf("decision %s after the passes, want done", e.State)
			}
		})
	}
}
