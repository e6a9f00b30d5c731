package mysql

import (
	"slices"
	"strings"
	"testing"

	"github.com/xabridge/xabridge/decisionlog"
	"github.com/xabridge/xabridge/drivers"
	"github.com/xabridge/xabridge/drivers/drivertest"
)

// A labelled keeper decision: the row's participants column holds the
// label (an object, in the existing column: old tables need no change), and
// LookupDecision and ListDecisions give it back.
func TestKeeperLabelledDecision(t *testing.T) {
	e := newEnv(t, 2)
	ctx := ctxT(t)
	xid := drivertest.NewXID()
	xid.Label = "order-42"
	db, err := e.r.BeginKept(ctx, xid)
	if err != nil {
		t.Fatal(err)
	}
	b := db.(*branch)
	t.Cleanup(func() {
		ctx, cancel := bg()
		defer cancel()
		_ = b.Rollback(ctx)
		_ = b.Close()
		_ = e.r.ForgetDecisions(ctx, []drivers.GlobalID{xid.Global})
	})
	g := xid.Global
	if err := e.r.CommitWithDecision(ctx, b, g, keptParts); err != nil {
		t.Fatal(err)
	}
	d, ok, err := e.r.LookupDecision(ctx, g)
	if err != nil || !ok || d.Label != "order-42" || !slices.Equal(d.Participants, keptParts) {
		t.Fatalf("row = %+v, %v, %v", d, ok, err)
	}
	var raw []byte
	if err := e.db.QueryRowContext(ctx, "SELECT participants FROM "+DecisionTable+" WHERE gtrid = ?", g.String()).Scan(&raw); err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(string(raw), `{"l":"order-42","p":[`) {
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
