package pgstore

import (
	"strings"
	"testing"

	"github.com/jackc/pgx/v5"
	"github.com/xabridge/xabridge/decisionlog"
	"github.com/xabridge/xabridge/drivers"
)

// A labelled decision keeps its label through Lookup and Pending, stored in
// the participants column (no schema change); an unlabelled one is stored
// as before; an invalid label is refused with nothing written.
func TestLabelledDecision(t *testing.T) {
	t.Parallel()
	pool := testPool(t, nil)
	schema := testSchema(t, pool)
	s := openStore(t, pool, schema, "n1", nil)
	ctx := ctxT(t)
	labelled, plain, bad := liveGid("n1"), liveGid("n1"), liveGid("n1")
	if err := s.Commit(ctx, decisionlog.Decision{GTRID: labelled, Participants: parts(), Label: "order-42"}); err != nil {
		t.Fatal(err)
	}
	if err := s.Commit(ctx, decisionlog.Decision{GTRID: plain, Participants: parts()}); err != nil {
		t.Fatal(err)
	}
	if err := s.Commit(ctx, decisionlog.Decision{GTRID: bad, Participants: parts(), Label: "a b"}); err == nil {
		t.Error("a decision with an invalid label was accepted")
	}
	e, found, err := s.LookupContext(ctx, labelled)
	if err != nil || !found || e.Decision == nil || e.Decision.Label != "order-42" || len(e.Decision.Participants) != 2 {
		t.Fatalf("Lookup(labelled) = %+v, %v, %v", e.Decision, found, err)
	}
	if e, _, _ := s.LookupContext(ctx, plain); e.Decision == nil || e.Decision.Label != "" {
		t.Errorf("Lookup(plain) = %+v", e.Decision)
	}
	if _, found, _ := s.LookupContext(ctx, bad); found {
		t.Error("the refused decision was written")
	}
	labels := map[drivers.GlobalID]string{}
	for _, d := range s.Pending() {
		labels[d.GTRID] = d.Label
	}
	if labels[labelled] != "order-42" || labels[plain] != "" {
		t.Errorf("Pending labels = %v", labels)
	}
	raw := func(g drivers.GlobalID) string {
		t.Helper()
		var p string
		q := "SELECT participants::text FROM " + pgx.Identifier{schema, TableDecisions}.Sanitize() + " WHERE gtrid = $1"
		if err := pool.QueryRow(ctx, q, g.String()).Scan(&p); err != nil {
			t.Fatal(err)
		}
		return p
	}
	if p := raw(labelled); !strings.HasPrefix(p, "{") || !strings.Contains(p, `"order-42"`) {
		t.Errorf("labelled participants column = %s", p)
	}
	if p := raw(plain); !strings.HasPrefix(p, "[") {
		t.Errorf("unlabelled participants column = %s", p)
	}
}
