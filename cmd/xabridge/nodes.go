package main

import (
	"fmt"
	"io"
	"sort"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/xabridge/xabridge/decisionlog/pgstore"
	"github.com/xabridge/xabridge/recovery"
)

// nodeJSON is one node lease in `xabridge nodes -o json`. The field names
// are a stable interface.
type nodeJSON struct {
	Node             string     `json:"node"`
	Role             string     `json:"role"` // coordinator, or operator: the CLI's own node id, which only claims
	Epoch            int64      `json:"epoch"`
	State            string     `json:"state"`    // live, expired, taken-over
	Released         bool       `json:"released"` // given back by its holder (a clean stop), not lapsed
	Holder           holderJSON `json:"holder"`
	AcquiredAt       string     `json:"acquired_at"`
	RenewedAt        string     `json:"renewed_at"`
	ExpiresAt        string     `json:"expires_at"`
	ExpiresInSeconds float64    `json:"expires_in_seconds"` // negative once expired
	PendingDecisions int        `json:"pending_decisions"`  // commit decisions whose phase 2 has not ended
	// InDoubtBranches counts the node's prepared branches on the resources;
	// absent when no resource was scanned.
	InDoubtBranches *int `json:"in_doubt_branches,omitempty"`
}

type holderJSON struct {
	Node        string `json:"node"` // the node itself, or the claimant taking it over
	Host        string `json:"host"`
	PID         int    `json:"pid"`
	Started     string `json:"started"`
	Incarnation string `json:"incarnation"`
}

type nodesJSON struct {
	Nodes []nodeJSON `json:"nodes"`
	// Scanned: the resources were scanned for prepared branches.
	Scanned bool `json:"scanned"`
	// Unleased counts prepared branches of nodes without a lease in this
	// store (file-log nodes, or another store's), by node.
	Unleased   map[string]int  `json:"unleased_nodes,omitempty"`
	ScanErrors []scanErrorJSON `json:"scan_errors"`
	// Stranded counts expired nodes with prepared branches or unfinished
	// commit decisions: nobody settles them until a replica or
	// `xabridge recover --store` takes the node over.
	Stranded int `json:"stranded_nodes"`
	// Hidden counts the rows left out without --all: the operator
	// commands' own node (xabridge-cli), expired, holding no transaction.
	Hidden int `json:"hidden_nodes"`
}

// Roles of a node row in xabridge nodes.
const (
	roleCoordinator = "coordinator"
	roleOperator    = "operator" // the node id operator commands claim under (operatorNode)
)

// hideNode reports whether nodes leaves j out without --all: the row of
// the operator commands' own node, which they create to claim other nodes
// under and which never holds a transaction, once no command runs (its
// lease expired) and nothing of it is pending or prepared. A live one
// shows that an operator command is acting on the store.
func hideNode(j nodeJSON) bool {
	return j.Role == roleOperator && j.State == string(pgstore.NodeExpired) && j.PendingDecisions == 0 &&
		(j.InDoubtBranches == nil || *j.InDoubtBranches == 0)
}

func newNodesCmd() *cobra.Command {
	o := &opsConfig{resourcesOptional: true, storeOnly: true}
	var all bool
	cmd := &cobra.Command{
		Use:   "nodes",
		Short: "List the coordinator nodes of a shared decision store: lease, holder, state, what they leave in doubt",
		Long: `nodes lists every node id that holds or held a lease in the shared decision
store (--store): its epoch (+1 at every start or takeover), the process
holding the lease (host/pid; for a node being taken over, the node of the
replica that claimed it), when the lease expires by the database's clock,
and its state:

  live        held by the node's own process, renewed in time
  taken-over  held by another node's process, settling its transactions
  expired     nobody holds it: the process died or stopped (a clean stop
              releases its lease at once); any replica, or
              xabridge recover --store, may take it over

ROLE is coordinator, or operator for xabridge-cli: the node id under which
recover and resolve --store claim other nodes (it holds no transaction of
its own). Its row is left out once no operator command runs (expired,
nothing pending or prepared); --all shows every row. RELEASED says the
holder gave the lease back (a clean stop) rather than letting it lapse.

PENDING counts the node's commit decisions whose phase 2 has not ended.
With resources (--resource, XABRIDGE_RESOURCES, the config file, or
XABRIDGE_PG and XABRIDGE_MYSQL) it scans them and counts each node's
prepared branches (IN-DOUBT); without, that column is left out.

It reads the store without taking a lease and changes nothing.

Exit codes: 0 ok; 1 error (a resource could not be scanned, the store
could not be read); 2 usage error; 3 an expired node has prepared branches
or unfinished commit decisions, so nobody is settling them (live and
taken-over nodes' branches are in flight and do not count).`,
		Example: `  xabridge nodes --store postgres://xabridge@db/payments
  xabridge nodes --store postgres://xabridge@db/payments --resource pg=postgres://... -o json`,
		Args: noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			r, err := o.resolve()
			if err != nil {
				return err
			}
			if !r.store.Enabled() {
				return usagef("nodes needs --store (or XABRIDGE_STORE): node leases exist only in a shared decision store; a file log has none")
			}
			ctx := cmd.Context()
			rd, nodes, closeStore, err := openStoreNodes(ctx, r.store)
			if err != nil {
				return err
			}
			defer closeStore()
			out := nodesJSON{Nodes: []nodeJSON{}, ScanErrors: []scanErrorJSON{}}
			var branches map[string]int
			if len(r.resources) > 0 {
				res, closeRes, err := r.openResources(ctx)
				if err != nil {
					return err
				}
				defer closeRes()
				l, err := rd.Log(operatorNode) // a scan only: no node's log is acted on
				if err != nil {
					return err
				}
				rec, err := recovery.New(recovery.Config{NodeID: operatorNode, Log: l, Resources: res})
				if err != nil {
					return err
				}
				rep := rec.Scan(ctx)
				out.Scanned = true
				branches = map[string]int{}
				for _, b := range rep.Branches {
					if b.Ours {
						branches[b.XID.Global.Node()]++
					}
				}
				for _, e := range rep.ScanErrors {
					out.ScanErrors = append(out.ScanErrors, scanErrorJSON{e.Resource, e.Err.Error()})
				}
				if rep.LogErr != nil {
					return logUnreadErr(rep.LogErr)
				}
			}
			leased := map[string]bool{}
			for _, n := range nodes {
				leased[n.Node] = true
				pend, err := rd.PendingContext(ctx, n.Node)
				if err != nil {
					return err
				}
				role := roleCoordinator
				if n.Node == operatorNode {
					role = roleOperator
				}
				j := nodeJSON{Node: n.Node, Role: role, Epoch: n.Epoch, State: string(n.State), Released: n.Released,
					Holder: holderJSON{Node: n.Holder.Node, Host: n.Holder.Host, PID: n.Holder.PID,
						Started: rfc(n.Holder.Started), Incarnation: n.Holder.Incarnation},
					AcquiredAt: rfc(n.AcquiredAt), RenewedAt: rfc(n.RenewedAt), ExpiresAt: rfc(n.ExpiresAt),
					ExpiresInSeconds: n.ExpiresIn.Seconds(), PendingDecisions: len(pend)}
				stranded := len(pend) > 0
				if branches != nil {
					c := branches[n.Node]
					j.InDoubtBranches = &c
					stranded = stranded || c > 0
				}
				if n.State == pgstore.NodeExpired && stranded {
					out.Stranded++
				}
				if !all && hideNode(j) {
					out.Hidden++
					continue
				}
				out.Nodes = append(out.Nodes, j)
			}
			for node, c := range branches {
				if !leased[node] {
					if out.Unleased == nil {
						out.Unleased = map[string]int{}
					}
					out.Unleased[node] = c
				}
			}
			w := cmd.OutOrStdout()
			if r.output == "json" {
				if err := writeJSON(w, out); err != nil {
					return err
				}
			} else {
				writeNodesTable(w, out)
			}
			switch {
			case len(out.ScanErrors) > 0:
				return fmt.Errorf("%d resource(s) could not be scanned", len(out.ScanErrors))
			case out.Stranded > 0:
				return fmt.Errorf("%w: %d expired node(s) with prepared branches or unfinished commit decisions (a replica takes them over, or run xabridge recover --store)", errInDoubtRemain, out.Stranded)
			}
			return nil
		},
	}
	f := cmd.Flags()
	f.StringVar(&o.configFile, "config", "", `JSON config file: {"store": "...", "store_schema": "...", "resources": {"NAME": "URL"}} (env XABRIDGE_CONFIG)`)
	f.StringArrayVar(&o.resources, "resource", nil, "a database to scan for the nodes' prepared branches, as NAME=URL, repeatable (env XABRIDGE_RESOURCES; default pg=$XABRIDGE_PG and mysql=$XABRIDGE_MYSQL; none: no scan)")
	f.StringVarP(&o.output, "output", "o", "table", "output format: table or json")
	f.BoolVar(&all, "all", false, "also show the operator commands' own node (xabridge-cli) when it holds nothing")
	addStoreFlags(cmd, o)
	return cmd
}

func rfc(t time.Time) string {
	if t.IsZero() {
		return ""
	}
	return t.UTC().Format(time.RFC3339Nano)
}

// fmtExpires says when a lease expires, or how long ago it did.
func fmtExpires(sec float64) string {
	d := time.Duration(sec * float64(time.Second))
	if d <= 0 {
		return "expired " + fmtAge(-d) + " ago"
	}
	return fmtAge(d)
}

func writeNodesTable(w io.Writer, out nodesJSON) {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	hdr := "NODE\tROLE\tEPOCH\tSTATE\tHOLDER\tEXPIRES IN\tPENDING"
	if out.Scanned {
		hdr += "\tIN-DOUBT"
	}
	fmt.Fprintln(tw, hdr)
	for _, n := range out.Nodes {
		holder := fmt.Sprintf("%s/%d", n.Holder.Host, n.Holder.PID)
		if n.Holder.Node != n.Node {
			holder = "node " + n.Holder.Node + " " + holder
		}
		state := n.State
		if n.Released {
			state += " (released)"
		}
		line := strings.Join([]string{n.Node, n.Role, fmt.Sprint(n.Epoch), state, holder, fmtExpires(n.ExpiresInSeconds), fmt.Sprint(n.PendingDecisions)}, "\t")
		if n.InDoubtBranches != nil {
			line += "\t" + fmt.Sprint(*n.InDoubtBranches)
		}
		fmt.Fprintln(tw, line)
	}
	tw.Flush()
	if len(out.Nodes) == 0 && out.Hidden == 0 {
		fmt.Fprintln(w, "no node has held a lease in this store yet")
	}
	if out.Hidden > 0 {
		fmt.Fprintf(w, "(%d operator row(s) holding nothing not shown: --all shows them)\n", out.Hidden)
	}
	if !out.Scanned {
		fmt.Fprintln(w, "(in-doubt branches not counted: give the resources, --resource NAME=URL, to scan them)")
	}
	if len(out.Unleased) > 0 {
		var names []string
		for n, c := range out.Unleased {
			names = append(names, fmt.Sprintf("%s (%d)", n, c))
		}
		sort.Strings(names)
		fmt.Fprintf(w, "prepared branches of nodes without a lease in this store: %s\n", strings.Join(names, ", "))
	}
	for _, e := range out.ScanErrors {
		fmt.Fprintf(w, "ERROR: resource %s could not be scanned: %s\n", e.Resource, e.Error)
	}
}
