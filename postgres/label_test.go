package postgres_test

import (
	"context"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/xabridge/xabridge/decisionlog"
	"github.com/xabridge/xabridge/drivers"
	"github.com/xabridge/xabridge/drivers/drivertest"
	"github.com/xabridge/xabridge/postgres"
)

// A labelled keeper decision: the row's participants column holds the
// label (an object, in the existing column: old tables need no change), and
// LookupDecision and ListDecisions give it back.
func TestKeeperLabelledDecision(t *testing.T) {
	e := newEnv(t)
	ctx := ctxT(t)
	xid := drivertest.NewXID()
	xid.Label = "order-42"
	b, err := e.r.Begin(ctx, xid)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		_ = b.Close()
		_ = e.r.ForgetDecisions(ctx, []drivers.GlobalID{xid.Global})
	})
	g := xid.Global
	if err := e.r.CommitWithDecision(ctx, b, g, parts); err != nil {
		t.Fatal(err)
	}
	d, ok := keeperRow(ctx, t, e.r, g)
	if !ok || d.Label != "order-42" || !slices.Equal(d.Participants, parts) {
		t.Fatalf("row = %+v, %v", d, ok)
	}
	if x := d.XID(d.Participants[0]); x.Label != "order-42" || x.Branch != 1 {
		t.Errorf("Decision.XID = %v", x)
	}
	var raw string
	if err := e.pool.QueryRow(ctx, "SELECT participants FROM "+postgres.DecisionTable+" WHERE gtrid = $1", g.String()).Scan(&raw); err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(raw, `{"l":"order-42","p":[`) {
		t.Errorf("participants column = %s", raw)
	}
	list, err := e.r.ListDecisions(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if !slices.ContainsFunc(list, func(k decisionlog.Decision) bool { return k.GTRID == g && k.Label == "order-42" }) {
		t.Errorf("ListDecisions lacks the label of %s", g)
	}
}
