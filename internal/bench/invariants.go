package bench

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/xabridge/xabridge/decisionlog"
	"github.com/xabridge/xabridge/drivers"
)

// preparedLeft lists prepared branches of the benchmark's nodes.
func (e *runner) preparedLeft(ctx context.Context) ([]string, error) {
	var left []string
	for _, r := range []drivers.Resource{e.b.PG, e.b.My} {
		ps, err := r.Recover(ctx)
		if err != nil {
			return nil, err
		}
		for _, p := range ps {
			if !p.Ours {
				continue
			}
			for m := range e.coords {
				if p.XID.Global.Node() == e.o.NodeID+"-"+m {
					left = append(left, r.Name()+" "+p.XID.GID())
				}
			}
		}
	}
	slices.Sort(left)
	return left, nil
}

// checkInvariants closes the coordinators (flushing background work) and
// checks money, atomicity and leftovers.
func (e *runner) checkInvariants(ctx context.Context, inv *Invariants) error {
	for _, c := range e.coords {
		if err := waitQuiet(ctx, c, time.Minute); err != nil {
			return err
		}
	}
	left, err := e.preparedLeft(ctx)
	if err != nil {
		return err
	}
	inv.PreparedLeft = left
	st, err := e.b.Check(ctx)
	if err != nil {
		return err
	}
	inv.MoneyAfter = st.Total()
	inv.PGTransfers, inv.MyTransfers = st.PGTransfers, st.MyTransfers
	inv.OnlyInOne = append(append(inv.OnlyInOne, st.OnlyPG...), st.OnlyMy...)
	inv.AmountMismatch = st.AmountMismatch
	// Close the coordinators: the keepers' cleanup flushes its deletes.
	for m, c := range e.coords {
		if err := c.Close(); err != nil {
			return err
		}
		delete(e.coords, m)
	}
	// Close the stores (their last End records are written then) and
	// count the commit decisions still pending in them: none, once every
	// phase 2 has finished.
	for m, st := range e.stores {
		if err := st.Close(); err != nil {
			return fmt.Errorf("mode %s: closing the store: %w", m, err)
		}
		pending, err := st.PendingContext(ctx, st.Node())
		if err != nil {
			return fmt.Errorf("mode %s: reading the store: %w", m, err)
		}
		inv.DecisionRowsLeft += len(pending)
	}
	for _, keeper := range []decisionlog.Keeper{e.b.PG, e.b.My} {
		kept, err := keeper.ListDecisions(ctx)
		if err != nil {
			return err
		}
		for _, k := range kept {
			if strings.HasPrefix(k.GTRID.Node(), e.o.NodeID+"-") {
				inv.DecisionRowsLeft++
			}
		}
	}
	inv.OK = inv.MoneyAfter == inv.MoneyBefore && st.NetPG == st.NetMy && st.Violations() == 0 && len(left) == 0
	return nil
}
