package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"time"

	"github.com/xabridge/xabridge/decisionlog/pgstore"
	"github.com/xabridge/xabridge/drivers"
	"github.com/xabridge/xabridge/internal/startup"
	"github.com/xabridge/xabridge/recovery"
	"github.com/xabridge/xabridge/replica"
)

// takeOver is replica.TakeOver (a variable for nothing but clarity of the
// one place recover --store acts).
var takeOver = replica.TakeOver

// storeResolve is resolve on a shared store: it claims the lease of the
// transaction's node (refused while the node is live or being taken over),
// resolves under the claim, and releases it.
func storeResolve(ctx context.Context, r *resolved, g drivers.GlobalID, commit, force bool) (*recovery.Report, error) {
	node := g.Node()
	if r.nodeIDGiven && r.nodeID != node {
		return nil, usagef("%s is a transaction of node %s, not of --node-id %s", g, node, r.nodeID)
	}
	res, closeRes, err := r.openResources(ctx)
	if err != nil {
		return nil, err
	}
	defer closeRes()
	st, _, closeStore, err := openOperatorStore(ctx, r.store)
	if err != nil {
		return nil, err
	}
	defer closeStore()
	if node == st.Node() {
		return nil, usagef("%s is a transaction of node %s, the operator commands' own node id", g, node)
	}
	if _, err := st.PendingContext(ctx, node); err != nil {
		return nil, storeUnread(node, err)
	}
	if _, err := st.Claim(ctx, node); err != nil {
		return nil, leasedRefusal(node, err)
	}
	defer releaseClaim(ctx, st, node)
	nl, err := st.ForNode(node)
	if err != nil {
		return nil, err
	}
	rec, err := recovery.New(recovery.Config{NodeID: node, Log: nl, Resources: res, Actor: actor(), DecisionResource: r.keeper})
	if err != nil {
		return nil, err
	}
	return rec.Resolve(ctx, g, commit, force, actor())
}

// releaseClaim gives a claimed lease back, even when ctx is done (if it
// fails, the claim expires by itself after the lease TTL).
func releaseClaim(ctx context.Context, st *pgstore.Store, node string) {
	rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
	defer cancel()
	_ = st.Release(rctx, node)
}

// nodeReport is what recover --store did (or would do) for one node.
type nodeReport struct {
	node    string
	epoch   int64 // the epoch the node had before
	rep     *recovery.Report
	err     error
	skipped string // why nothing was done
}

// storeTargets picks the nodes recover --store acts on: the one --node-id
// names (refused unless its lease expired), or every expired node but the
// operator's own.
func storeTargets(nodes []pgstore.NodeInfo, r *resolved) ([]pgstore.NodeInfo, error) {
	if r.nodeIDGiven {
		for _, n := range nodes {
			if n.Node == r.nodeID {
				if n.State != pgstore.NodeExpired {
					return nil, refuseLive(n)
				}
				return []pgstore.NodeInfo{n}, nil
			}
		}
		return nil, fmt.Errorf("node %s has no lease in this store: its decisions are not kept here (a file-log node? give its --log-dir): %w", r.nodeID, pgstore.ErrUnknownNode)
	}
	var out []pgstore.NodeInfo
	for _, n := range nodes {
		if n.State == pgstore.NodeExpired && n.Node != operatorNode {
			out = append(out, n)
		}
	}
	return out, nil
}

// storeRecover is recover on a shared store: every expired node (or the
// one --node-id names, only if expired) is taken over as a replica would
// (replica.TakeOver: claim, commit what was decided, roll back the rest
// with the abort recorded first, release). A live node is never touched.
// With dryRun nothing is claimed: the plan is read through the store
// without a lease.
func storeRecover(ctx context.Context, out io.Writer, r *resolved, dryRun bool) error {
	res, closeRes, err := r.openResources(ctx)
	if err != nil {
		return err
	}
	defer closeRes()
	var reports []nodeReport
	if dryRun {
		rd, nodes, closeStore, err := openStoreNodes(ctx, r.store)
		if err != nil {
			return err
		}
		defer closeStore()
		targets, err := storeTargets(nodes, r)
		if err != nil {
			return err
		}
		zero := time.Duration(0)
		for _, n := range targets {
			l, err := rd.Log(n.Node)
			if err != nil {
				return err
			}
			rec, err := recovery.New(recovery.Config{NodeID: n.Node, Log: l, Resources: res, MinAge: &zero, Actor: actor(), DecisionResource: r.keeper})
			if err != nil {
				return err
			}
			rep := rec.Pass(ctx, true)
			onlyNode(rep, n.Node)
			reports = append(reports, nodeReport{node: n.Node, epoch: n.Epoch, rep: rep})
		}
	} else {
		st, _, closeStore, err := openOperatorStore(ctx, r.store)
		if err != nil {
			return err
		}
		defer closeStore()
		nodes, err := st.Nodes(ctx)
		if err != nil {
			return err
		}
		targets, err := storeTargets(nodes, r)
		if err != nil {
			return err
		}
		for _, n := range targets {
			pending, err := st.PendingContext(ctx, n.Node)
			if err != nil {
				// Not claimed: a claim costs the node an epoch, and
				// nothing can be done without its decisions.
				reports = append(reports, nodeReport{node: n.Node, epoch: n.Epoch, err: storeUnread(n.Node, err)})
				continue
			}
			if !r.nodeIDGiven && len(pending) == 0 && nothingLeft(ctx, n, res) {
				reports = append(reports, nodeReport{node: n.Node, epoch: n.Epoch, skipped: "released with nothing left (no decision pending, no branch prepared): not claimed"})
				continue
			}
			rep, err := takeOver(ctx, st, n.Node, recovery.Config{Resources: res, Actor: actor(), DecisionResource: r.keeper})
			nr := nodeReport{node: n.Node, epoch: n.Epoch, rep: rep, err: err}
			if errors.Is(err, pgstore.ErrNodeLeased) {
				if r.nodeIDGiven {
					return leasedRefusal(n.Node, err)
				}
				// It came back, or a replica claimed it first: not ours to do.
				nr.err, nr.skipped = nil, "claimed by another process meanwhile; left to it"
			}
			if nr.rep != nil {
				onlyNode(nr.rep, n.Node)
			}
			reports = append(reports, nr)
		}
	}
	return printNodeReports(out, r, reports, dryRun)
}

// nothingLeft reports whether n, with no decision pending, was given back
// (by its own process stopping cleanly, or by a claimant that finished) and
// has no branch prepared on res. Such a node is not claimed, as a
// replica's pass does not claim it: a claim would cost it an epoch, and its
// restart would wait for the claim. A failed scan answers false: then the
// takeover runs and reports it.
func nothingLeft(ctx context.Context, n pgstore.NodeInfo, res []drivers.Resource) bool {
	if !n.GivenBack() {
		return false // it lapsed: its holder died or was cut off
	}
	prepared, err := startup.InDoubt(ctx, n.Node, res...)
	return err == nil && prepared == 0
}

// storeUnread is the refusal when node's decisions cannot be read from the
// store: checked before a claim, so that a store an operator cannot read
// is left exactly as it was.
func storeUnread(node string, err error) error {
	return fmt.Errorf("node %s: reading its decisions from the store: %w (nothing claimed or changed)", node, err)
}

// nodeReportJSON is one node's part of recover --store -o json.
type nodeReportJSON struct {
	reportJSON
	Epoch   int64  `json:"epoch_before"`
	Error   string `json:"error,omitempty"`
	Skipped string `json:"skipped,omitempty"`
}

// printNodeReports prints what recover --store did per node and returns
// the exit status: in doubt (3) when a node's branches remain, an error
// when a takeover failed.
func printNodeReports(out io.Writer, r *resolved, reports []nodeReport, dryRun bool) error {
	var errs []error
	remaining := 0
	if r.output == "json" {
		js := []nodeReportJSON{}
		for _, nr := range reports {
			j := nodeReportJSON{Epoch: nr.epoch, Skipped: nr.skipped}
			if nr.rep != nil {
				j.reportJSON = toJSON(nr.node, nr.rep)
			} else {
				j.reportJSON = reportJSON{Node: nr.node, Branches: []branchJSON{}, ScanErrors: []scanErrorJSON{}}
			}
			if nr.err != nil {
				j.Error = nr.err.Error()
			}
			js = append(js, j)
		}
		if err := writeJSON(out, js); err != nil {
			return err
		}
	} else if len(reports) == 0 {
		if r.nodeIDGiven {
			fmt.Fprintf(out, "node %s: nothing to do\n", r.nodeID)
		} else {
			fmt.Fprintln(out, "no expired node in the store: nothing to take over (live nodes recover their own transactions)")
		}
	}
	for _, nr := range reports {
		if r.output != "json" {
			verb := "taken over"
			if dryRun {
				verb = "plan"
			}
			switch {
			case nr.skipped != "":
				fmt.Fprintf(out, "node %s (epoch %d): %s\n", nr.node, nr.epoch, nr.skipped)
			case nr.rep != nil && len(nr.rep.Branches) == 0 && len(nr.rep.ScanErrors) == 0 && nr.rep.LogErr == nil:
				fmt.Fprintf(out, "node %s (expired, epoch %d) %s: nothing in doubt", nr.node, nr.epoch, verb)
				if len(nr.rep.Ended) > 0 {
					fmt.Fprintf(out, "; phase 2 finished for %d transaction(s)", len(nr.rep.Ended))
				}
				fmt.Fprintln(out)
			case nr.rep != nil:
				fmt.Fprintf(out, "node %s (expired, epoch %d) %s:\n", nr.node, nr.epoch, verb)
				writeTable(out, nr.rep, !dryRun)
				if len(nr.rep.Ended) > 0 {
					fmt.Fprintf(out, "phase 2 finished for %d transaction(s)\n", len(nr.rep.Ended))
				}
			}
			if nr.err != nil {
				fmt.Fprintf(out, "node %s: ERROR: %v\n", nr.node, nr.err)
			}
		}
		switch {
		case errors.Is(nr.err, replica.ErrUnfinished):
			remaining++
		case nr.err != nil:
			errs = append(errs, fmt.Errorf("node %s: %w", nr.node, nr.err))
		case nr.rep != nil && nr.rep.LogErr != nil:
			errs = append(errs, fmt.Errorf("node %s: %w", nr.node, logUnreadErr(nr.rep.LogErr)))
		case nr.rep != nil && len(nr.rep.ScanErrors) > 0:
			errs = append(errs, fmt.Errorf("node %s: %d resource(s) could not be scanned", nr.node, len(nr.rep.ScanErrors)))
		case nr.rep != nil:
			remaining += nr.rep.Remaining()
		}
	}
	if len(errs) > 0 {
		return errors.Join(errs...)
	}
	if remaining > 0 && !dryRun {
		return fmt.Errorf("%w: %d", errInDoubtRemain, remaining)
	}
	if dryRun {
		n := 0
		for _, nr := range reports {
			if nr.rep != nil {
				n += nr.rep.Remaining()
			}
		}
		if n > 0 {
			return fmt.Errorf("%w: %d", errInDoubtRemain, n)
		}
	}
	return nil
}

// onlyNode keeps the branches of node's transactions in rep (the scan
// lists every prepared branch; other nodes' are not this takeover's).
func onlyNode(rep *recovery.Report, node string) {
	kept := rep.Branches[:0]
	for _, b := range rep.Branches {
		if b.Ours && b.XID.Global.Node() == node {
			kept = append(kept, b)
		}
	}
	rep.Branches = kept
}

// storeScanAll scans the resources once per node that has a lease in the
// store (each branch classified for its own node, as that node's recovery
// would see it) and once more for the branches of no such node
// (unknown-owner, foreign). It reads the store without a lease.
func storeScanAll(ctx context.Context, r *resolved) (*recovery.Report, error) {
	res, closeRes, err := r.openResources(ctx)
	if err != nil {
		return nil, err
	}
	defer closeRes()
	rd, nodes, closeStore, err := openStoreNodes(ctx, r.store)
	if err != nil {
		return nil, err
	}
	defer closeStore()
	scan := func(node string) (*recovery.Report, error) {
		l, err := rd.Log(node)
		if err != nil {
			return nil, err
		}
		rec, err := recovery.New(recovery.Config{NodeID: node, Log: l, Resources: res, Actor: actor(), DecisionResource: r.keeper})
		if err != nil {
			return nil, err
		}
		return rec.Scan(ctx), nil
	}
	base, err := scan(operatorNode) // a node with no transactions: every branch is someone else's
	if err != nil {
		return nil, err
	}
	leased := map[string]bool{}
	for _, n := range nodes {
		leased[n.Node] = true
	}
	var branches []recovery.Branch
	for _, b := range base.Branches {
		if !b.Ours || !leased[b.XID.Global.Node()] {
			branches = append(branches, b)
		}
	}
	errs := map[string]bool{}
	for _, e := range base.ScanErrors {
		errs[e.Resource] = true
	}
	for _, n := range nodes {
		rep, err := scan(n.Node)
		if err != nil {
			return nil, err
		}
		onlyNode(rep, n.Node)
		branches = append(branches, rep.Branches...)
		if base.LogErr == nil && rep.LogErr != nil {
			base.LogErr = fmt.Errorf("node %s: %w", n.Node, rep.LogErr)
		}
		for _, e := range rep.ScanErrors {
			if !errs[e.Resource] {
				errs[e.Resource] = true
				base.ScanErrors = append(base.ScanErrors, e)
			}
		}
	}
	sortBranches(branches)
	base.Branches = branches
	return base, nil
}
