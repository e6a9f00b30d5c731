package main

import (
	"context"
	"testing"
	"time"

	"github.com/xabridge/xabridge/decisionlog"
	"github.com/xabridge/xabridge/drivers"
	"github.com/xabridge/xabridge/internal/bank"
	"github.com/xabridge/xabridge/internal/dbtest"
	"github.com/xabridge/xabridge/internal/strand"
)

// `recover --decision-resource NAME` fences an orphan in that resource's
// decision table (an abort marker, so a late commit decision of its
// coordinator fails) before rolling its prepared branch back: with the
// decision kept in PostgreSQL (the orphan's prepared branch on MariaDB),
// and the other way round.
func TestRecoverFencesInTheDecisionResource(t *testing.T) {
	pg, my := dbtest.PG(t), dbtest.MySQL(t)
	for _, keeper := range []string{"pg", "mysql"} {
		t.Run(keeper, func(t *testing.T) {
			ctx := context.Background()
			b, err := bank.Open(ctx, pg, my, 2)
			if err != nil {
				t.Fatal(err)
			}
			defer b.Close()
			if err := b.SetPrefix("xab_kc_" + randHex(3)); err != nil {
				t.Fatal(err)
			}
			if err := b.Setup(ctx, 2, 100); err != nil {
				t.Fatal(err)
			}
			defer func() { _ = b.Drop(context.Background()) }()
			var keep decisionlog.Keeper = b.PG
			var other drivers.Resource = b.My
			ensure := b.PG.EnsureDecisionTable
			if keeper == "mysql" {
				keep, other, ensure = b.My, b.PG, b.My.EnsureDecisionTable
			}
			// A coordinator in keeper mode creates the decision table at
			// its start; recover refuses a keeper without one (issue 14),
			// so the test must not depend on an earlier test having made it.
			if err := ensure(ctx); err != nil {
				t.Fatal(err)
			}
			node := "kc-" + randHex(3)
			now := time.Now()
			g := strand.GlobalID(node, now.Add(-2*time.Second), now.Add(-time.Second), 1)
			defer func() { _ = keep.ForgetDecisions(context.Background(), []drivers.GlobalID{g}) }()
			xid := drivers.XID{Global: g, Branch: 1}
			if err := strand.Prepare(ctx, other, xid, "UPDATE "+b.Table("accounts")+" SET balance = balance + 1 WHERE id = 1"); err != nil {
				t.Fatal(err)
			}
			// Runs before Drop (deferred later): a prepared branch left by a
			// failure would hold the row lock that Drop waits for.
			defer func() { _ = other.RollbackPrepared(context.Background(), xid) }()
			out, errOut, code := cli(t, "--node-id", node, "--log-dir", newLogDir(t), "--resource", "pg="+pg, "--resource", "mysql="+my,
				"--decision-resource", keeper, "recover", "--min-age", "0s")
			if code != exitOK {
				t.Fatalf("recover: exit %d\n%s%s", code, out, errOut)
			}
			ps, err := other.Recover(ctx)
			if err != nil {
				t.Fatal(err)
			}
			for _, p := range ps {
				if p.XID == xid {
					t.Fatalf("the orphan is still prepared:\n%s", out)
				}
			}
			d, ok, err := keep.LookupDecision(ctx, g)
			if err != nil || !ok || !d.Abort {
				t.Fatalf("decision table of %s holds %+v (found %v, %v); want the abort marker", keeper, d, ok, err)
			}
		})
	}
}
