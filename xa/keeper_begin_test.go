package xa

import (
	"context"
	"sync/atomic"
	"testing"

	"github.com/xabridge/xabridge/decisionlog"
	"github.com/xabridge/xabridge/drivers"
	"github.com/xabridge/xabridge/internal/fakeres"
)

// keptBeginner is a fake keeper whose keeper branches are begun by
// BeginKept (as the MySQL adapter's local transactions are); it counts
// both ways of beginning.
type keptBeginner struct {
	*fakeres.Keeper
	begun, kept atomic.Int32
}

func (k *keptBeginner) Begin(ctx context.Context, xid drivers.XID) (drivers.Branch, error) {
	k.begun.Add(1)
	return k.Keeper.Begin(ctx, xid)
}

func (k *keptBeginner) BeginKept(ctx context.Context, xid drivers.XID) (drivers.Branch, error) {
	k.kept.Add(1)
	return k.Keeper.Begin(ctx, xid)
}

// A resource that can begin kept branches gets BeginKept exactly when it is
// the coordinator's decision keeper, and Begin otherwise (even as a keeper
// of another coordinator, or as a plain participant).
func TestKeeperBranchBegunWithBeginKept(t *testing.T) {
	tests := []struct {
		name             string
		keeper           string // Config.DecisionResource
		wantKept, wantXA int32  // BeginKept and Begin calls on "my"
	}{
		{"decision resource", "my", 1, 0},
		{"another resource keeps the decisions", "pg", 0, 1},
		{"no decision resource", "", 0, 1},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			my := &keptBeginner{Keeper: fakeres.NewKeeper("my")}
			pg := fakeres.NewKeeper("pg")
			c, err := New(context.Background(), Config{
				NodeID: "test", Log: decisionlog.NewMemLog(nil), Resources: []drivers.Resource{pg, my}, DecisionResource: tc.keeper,
			})
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			var xmy drivers.XID
			err = c.Run(context.Background(), func(ctx context.Context, tx *Tx) error {
				_, x, err := both(ctx, tx, pg, my)
				xmy = x
				return err
			})
			if err != nil {
				t.Fatal(err)
			}
			if my.kept.Load() != tc.wantKept || my.begun.Load() != tc.wantXA {
				t.Fatalf("BeginKept %d, Begin %d times; want %d and %d", my.kept.Load(), my.begun.Load(), tc.wantKept, tc.wantXA)
			}
			if got := my.State(xmy); got != "committed" {
				t.Fatalf("branch on my is %s, want committed", got)
			}
		})
	}
}
