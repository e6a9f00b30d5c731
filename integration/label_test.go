package integration

import (
	"context"
	"testing"
	"time"

	"github.com/xabridge/xabridge/decisionlog"
	"github.com/xabridge/xabridge/drivers"
	"github.com/xabridge/xabridge/recovery"
)

// A labelled transaction whose decision is kept in a participant (either
// engine as the keeper): the keeper's row carries the label, the other
// engine's prepared branch carries it in its XID, and recovery — with an
// empty file log — reports the label and commits the branch by its
// labelled XID, then deletes the row.
func TestLabelledDecisionInKeeperRecovered(t *testing.T) {
	for _, k := range keeperKinds {
		t.Run(k.name, func(t *testing.T) {
			b := newBank(t, 4)
			ctx := context.Background()
			keeper, other := k.setup(t, b)
			node := "it-" + suffix()
			now := time.Now().UTC().Truncate(time.Millisecond)
			g := drivers.MustGlobalID(node, now, 1, now.Add(time.Minute))
			const label = "order-77/EU"
			xo := drivers.XID{Global: g, Branch: 1, Label: label}
			ob, err := other.Begin(ctx, xo)
			if err != nil {
				t.Fatal(err)
			}
			update(t, b, ob, 9)
			if v, err := ob.Prepare(ctx); err != nil || v != drivers.VoteCommit {
				t.Fatalf("prepare: %v %v", v, err)
			}
			_ = ob.Close() // the coordinator dies: its session goes
			begin := keeper.Begin
			if kb, ok := keeper.(decisionlog.KeptBeginner); ok {
				begin = kb.BeginKept
			}
			kb, err := begin(ctx, drivers.XID{Global: g, Label: label})
			if err != nil {
				t.Fatal(err)
			}
			update(t, b, kb, -9)
			if err := keeper.CommitWithDecision(ctx, kb, g, []decisionlog.Participant{{Resource: other.Name(), Branch: xo.Branch}}); err != nil {
				t.Fatal(err)
			}
			_ = kb.Close()
			d, found, err := keeper.LookupDecision(ctx, g)
			if err != nil || !found || d.Label != label {
				t.Fatalf("keeper row = %+v, %v, %v; want label %q", d, found, err, label)
			}

			fl, err := decisionlog.OpenFileLog(t.TempDir(), decisionlog.FileLogOptions{})
			if err != nil {
				t.Fatal(err)
			}
			defer fl.Close()
			rec, err := recovery.New(recovery.Config{NodeID: node, Log: fl, Resources: []drivers.Resource{b.PG, b.My}, Settle: -1})
			if err != nil {
				t.Fatal(err)
			}
			first := ours(rec.Pass(ctx, false), node)
			if len(first) != 1 || first[0].Class != recovery.CommitPending || first[0].XID.Label != label {
				t.Fatalf("first pass: %+v, want the other branch commit-pending, labelled %q", first, label)
			}
			if ended := recoverAll(t, rec, node); len(ended) != 1 || ended[0] != g.String() {
				t.Fatalf("ended %v, want %s", ended, g)
			}
			pgBal, myBal, _ := b.Balances(ctx, 2, 2)
			if pgBal+myBal != 2*balance || pgBal == balance {
				t.Fatalf("balances %d/%d, want both sides of the committed transaction", pgBal, myBal)
			}
			if commits, aborts := keptRows(t, keeper, node); commits+aborts != 0 {
				t.Fatalf("%d/%d rows left; recovery deletes finished decisions", commits, aborts)
			}
		})
	}
}
