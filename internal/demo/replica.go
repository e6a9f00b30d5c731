package demo

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"time"

	"github.com/xabridge/xabridge/decisionlog/pgstore"
	"github.com/xabridge/xabridge/internal/storeopt"
	"github.com/xabridge/xabridge/replica"
	"github.com/xabridge/xabridge/xa"
)

// openReplica runs the demo's coordinator as a replica on the shared
// store: it says which node it is, and done (after the transfers) closes
// it, releasing the node's lease, and says which expired peers this process
// took over.
func openReplica(ctx context.Context, out io.Writer, o Options, xc xa.Config, logger *slog.Logger) (*replica.Replica, func(), error) {
	pool, err := storeopt.Connect(ctx, o.Store, int32(o.Concurrency)+4, 10*time.Second)
	if err != nil {
		return nil, nil, err
	}
	rp, err := replica.Open(ctx, replica.Config{
		Coordinator:  xc,
		Pool:         pool,
		Store:        pgstore.Options{Schema: o.Store.Schema, LeaseTTL: o.LeaseTTL},
		RecoverEvery: o.RecoverEvery,
		Logger:       logger,
		OnReport:     o.OnReport,
	})
	if err != nil {
		pool.Close()
		var le *pgstore.LeasedError
		if errors.As(err, &le) {
			return nil, nil, fmt.Errorf("node %s is already running (lease held by %s until %s): give each demo coordinator its own --node-id: %w",
				o.NodeID, le.Holder, le.ExpiresAt.UTC().Format(time.RFC3339), err)
		}
		return nil, nil, err
	}
	st := rp.Store()
	fmt.Fprintf(out, "xabridge demo: node %s, epoch %d, on the shared store %s (lease renewed in the background; recovery and takeover of expired peers every %s)\n",
		o.NodeID, st.Epoch(), o.Store.Database(), rp.RecoverEvery())
	done := func() {
		// Which nodes this process took over: the store says who claimed
		// each node last (a released claim keeps its claimant as holder).
		nodes, nerr := st.Nodes(context.WithoutCancel(ctx))
		stats := rp.Stats()
		cerr := rp.Close()
		var took []string
		for _, n := range nodes {
			if n.Node != o.NodeID && n.Holder.Node == o.NodeID && n.Holder.Incarnation == st.Holder().Incarnation {
				took = append(took, fmt.Sprintf("%s (epoch %d)", n.Node, n.Epoch))
			}
		}
		switch {
		case nerr != nil:
			fmt.Fprintf(out, "node %s: %d takeover(s) (the store's leases could not be read: %v)\n", o.NodeID, stats.Takeovers, nerr)
		case len(took) == 0:
			fmt.Fprintf(out, "node %s took over no other node\n", o.NodeID)
		default:
			fmt.Fprintf(out, "node %s took over: %v (%d takeover(s), %d unfinished)\n", o.NodeID, took, stats.Takeovers, stats.TakeoverFailures)
		}
		if cerr != nil {
			fmt.Fprintf(out, "node %s: closing: %v\n", o.NodeID, cerr)
		}
		pool.Close()
	}
	return rp, done, nil
}
