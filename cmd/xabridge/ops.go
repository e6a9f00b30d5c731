package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"slices"
	"sort"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/xabridge/xabridge/decisionlog"
	"github.com/xabridge/xabridge/drivers"
	"github.com/xabridge/xabridge/metrics"
	"github.com/xabridge/xabridge/recovery"
)

// branchJSON is one prepared branch in `-o json` output. The field names are
// a stable interface (README "xabridge list -o json").
type branchJSON struct {
	GTRID      string  `json:"gtrid,omitempty"`
	Node       string  `json:"node,omitempty"`
	Resource   string  `json:"resource"`
	XID        string  `json:"xid"`
	Branch     *int    `json:"branch,omitempty"`
	Label      string  `json:"label,omitempty"`
	Ours       bool    `json:"ours"`
	Begin      string  `json:"begin,omitempty"`
	Deadline   string  `json:"deadline,omitempty"`
	AgeSeconds float64 `json:"age_seconds"`
	PreparedAt string  `json:"prepared_at,omitempty"`
	Owner      string  `json:"owner,omitempty"`
	Database   string  `json:"database,omitempty"`
	LogState   string  `json:"log_state,omitempty"`
	Class      string  `json:"class"`
	Action     string  `json:"action"`
	Attention  bool    `json:"attention"`
	Reason     string  `json:"reason"`
	Result     string  `json:"result,omitempty"`
}

type reportJSON struct {
	Node       string            `json:"node"`
	At         string            `json:"at"`
	Branches   []branchJSON      `json:"branches"`
	ScanErrors []scanErrorJSON   `json:"scan_errors"`
	LogError   string            `json:"log_error,omitempty"` // the decision log could not be read
	Remaining  int               `json:"remaining"`
	Attention  int               `json:"needs_attention"`
	InFlight   int               `json:"in_flight"`
	Ended      []string          `json:"ended,omitempty"`
	Log        *entryJSON        `json:"log,omitempty"`
	Extra      map[string]string `json:"extra,omitempty"`
}

type scanErrorJSON struct {
	Resource string `json:"resource"`
	Error    string `json:"error"`
}

func toJSON(node string, rep *recovery.Report) reportJSON {
	out := reportJSON{Node: node, At: rep.At.UTC().Format(time.RFC3339), Branches: []branchJSON{}, ScanErrors: []scanErrorJSON{},
		Remaining: rep.Remaining(), Attention: rep.NeedsAttention(), InFlight: rep.InFlight(), Ended: rep.Ended}
	for _, b := range rep.Branches {
		j := branchJSON{
			Resource: b.Resource, XID: b.ID, Ours: b.Ours, AgeSeconds: b.Age.Seconds(),
			Owner: b.Owner, Database: b.Database, Class: string(b.Class), Action: string(b.Action), Attention: b.Attention, Reason: b.Reason, Result: b.Result,
		}
		if b.Ours {
			g := b.XID.Global
			br := int(b.XID.Branch)
			j.GTRID, j.Node, j.Branch, j.Label = g.String(), g.Node(), &br, b.XID.Label
			j.Begin, j.Deadline = g.Begin().UTC().Format(time.RFC3339Nano), g.Deadline().UTC().Format(time.RFC3339Nano)
			j.LogState = b.LogState.String()
		}
		if !b.PreparedAt.IsZero() {
			j.PreparedAt = b.PreparedAt.UTC().Format(time.RFC3339Nano)
		}
		out.Branches = append(out.Branches, j)
	}
	for _, e := range rep.ScanErrors {
		out.ScanErrors = append(out.ScanErrors, scanErrorJSON{e.Resource, e.Err.Error()})
	}
	if rep.LogErr != nil {
		out.LogError = drivers.OneLine(rep.LogErr.Error())
	}
	return out
}

func writeJSON(w io.Writer, v any) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}

func fmtAge(d time.Duration) string {
	switch {
	case d < 0:
		return "-"
	case d < time.Minute:
		return d.Round(100 * time.Millisecond).String()
	case d < 48*time.Hour:
		return d.Round(time.Second).String()
	default:
		return fmt.Sprintf("%dd%dh", int(d.Hours())/24, int(d.Hours())%24)
	}
}

func writeTable(w io.Writer, rep *recovery.Report, showResult bool) {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	hdr := "GTRID\tNODE\tRESOURCE\tBRANCH\tAGE\tLOG\tCLASS\tACTION"
	if showResult {
		hdr += "\tRESULT"
	}
	// The LABEL column only when a branch has one: unlabelled output is
	// as it was before labels (scripts should read -o json anyway).
	labels := slices.ContainsFunc(rep.Branches, func(b recovery.Branch) bool { return b.Ours && b.XID.Label != "" })
	if labels {
		hdr += "\tLABEL"
	}
	fmt.Fprintln(tw, hdr)
	for _, b := range rep.Branches {
		id, node, br, logState, label := drivers.QuoteID(b.ID), "-", "-", "-", "-"
		if b.Ours {
			id, node, br, logState = b.XID.Global.String(), b.XID.Global.Node(), fmt.Sprintf("%02x", b.XID.Branch), b.LogState.String()
			label = first(b.XID.Label, "-")
		}
		age := "-"
		if b.Ours || !b.PreparedAt.IsZero() {
			age = fmtAge(b.Age)
		}
		line := strings.Join([]string{id, node, b.Resource, br, age, logState, string(b.Class), string(b.Action)}, "\t")
		if showResult {
			line += "\t" + first(b.Result, "-")
		}
		if labels {
			line += "\t" + label
		}
		fmt.Fprintln(tw, line)
	}
	tw.Flush()
	for _, b := range rep.Branches {
		if b.Class == recovery.Heuristic {
			fmt.Fprintf(w, "HEURISTIC: %s on %s: %s\n", drivers.QuoteID(b.ID), b.Resource, b.Reason)
		}
	}
	for _, e := range rep.ScanErrors {
		fmt.Fprintf(w, "ERROR: resource %s could not be scanned: %s\n", e.Resource, drivers.OneLine(e.Err.Error()))
	}
	if rep.LogErr != nil {
		fmt.Fprintf(w, "ERROR: the decision log could not be read: %s\n", drivers.OneLine(rep.LogErr.Error()))
	}
}

// filterLabel keeps the branches whose XID carries exactly label (foreign
// branches carry none).
func filterLabel(rep *recovery.Report, label string) {
	kept := rep.Branches[:0]
	for _, b := range rep.Branches {
		if b.Ours && b.XID.Label == label {
			kept = append(kept, b)
		}
	}
	rep.Branches = kept
}

// filterOurs drops foreign branches unless all is set.
func filterOurs(rep *recovery.Report, all bool) {
	if all {
		return
	}
	kept := rep.Branches[:0]
	for _, b := range rep.Branches {
		if b.Class != recovery.Foreign {
			kept = append(kept, b)
		}
	}
	rep.Branches = kept
}

// hideInFlight drops the branches of this node that need no attention
// (recovery.Branch.InFlight).
func hideInFlight(rep *recovery.Report) {
	kept := rep.Branches[:0]
	for _, b := range rep.Branches {
		if !b.InFlight() {
			kept = append(kept, b)
		}
	}
	rep.Branches = kept
}

// remainingErr turns "our branches still prepared" and scan errors into
// the exit codes scripts use.
func remainingErr(rep *recovery.Report) error {
	return inDoubtErr(rep, rep.Remaining(), "")
}

// attentionErr is remainingErr for list: only branches that need
// attention count, so that list can probe a busy service for stuck
// transactions.
func attentionErr(rep *recovery.Report) error {
	return inDoubtErr(rep, rep.NeedsAttention(), " need attention")
}

// inDoubtErr is the error of a command that leaves n branches counted
// (what says how they were counted), or could not scan every resource.
func inDoubtErr(rep *recovery.Report, n int, what string) error {
	if rep.LogErr != nil {
		return logUnreadErr(rep.LogErr)
	}
	if u := rep.Unscanned(); len(u) > 0 {
		return fmt.Errorf("%s could not be scanned", resourcesPhrase(u))
	}
	if n > 0 {
		return fmt.Errorf("%w: %d%s", errInDoubtRemain, n, what)
	}
	return nil
}

// logUnreadErr is the error of a command whose read of the decision log
// failed: what was decided is unknown, so no verdict was given from it
// and nothing was done by it.
func logUnreadErr(err error) error {
	if errors.Is(err, recovery.ErrLogUnreadable) {
		return err
	}
	return fmt.Errorf("%w (%w): what was decided is unknown, so nothing was concluded or done from it", recovery.ErrLogUnreadable, err)
}

// resourcesPhrase names resources for a message: "resource pg",
// "2 resources (pg, mysql)".
func resourcesPhrase(names []string) string {
	if len(names) == 1 {
		return "resource " + names[0]
	}
	return fmt.Sprintf("%d resources (%s)", len(names), strings.Join(names, ", "))
}

// newRecoverer opens resources and the log and builds a Recoverer; mod, if
// set, completes its configuration.
func newRecoverer(ctx context.Context, r *resolved, write bool, minAge *time.Duration, mod func(*recovery.Config)) (*recovery.Recoverer, decisionlog.Log, func(), error) {
	res, closeRes, err := r.openResources(ctx)
	if err != nil {
		return nil, nil, nil, err
	}
	var l decisionlog.Log
	if r.store.Enabled() {
		if write {
			// recover and resolve act on a store only under a claim of the
			// node's lease (storeRecover, storeResolve).
			closeRes()
			return nil, nil, nil, errors.New("internal: acting on a store needs a claim of the node's lease")
		}
		// Read-only: no lease taken, nothing created.
		rd, closeStore, err := openStoreReader(ctx, r.store)
		if err != nil {
			closeRes()
			return nil, nil, nil, err
		}
		if l, err = rd.Log(r.nodeID); err != nil {
			closeStore()
			closeRes()
			return nil, nil, nil, err
		}
		l = closingLog{l, closeStore}
	} else {
		fl, err := r.openLog(write)
		if err != nil {
			closeRes()
			return nil, nil, nil, err
		}
		l = fl
	}
	cfg := recovery.Config{NodeID: r.nodeID, Log: l, Resources: res, MinAge: minAge, Actor: actor(),
		DecisionResource: r.keeper}
	if mod != nil {
		mod(&cfg)
	}
	rec, err := recovery.New(cfg)
	if err != nil {
		closeRes()
		l.Close()
		return nil, nil, nil, err
	}
	return rec, l, func() { closeRes(); l.Close() }, nil
}

func newListCmd() *cobra.Command {
	o := &opsConfig{}
	var all, hideLive bool
	var label string
	cmd := &cobra.Command{
		Use:   "list",
		Short: "List in-doubt branches of ours on every resource, with what the log says and what recovery would do",
		Long: `list scans every resource for prepared branches and shows, for each branch of
ours: its global id, owner node, resource, branch, age, what the decision log
says, its class and the action recovery would take, and the transaction's
label (xa.Tx.SetLabel: a LABEL column when some branch has one, "label" in
JSON). The label is read from the branch's XID, so it shows even when no
decision was ever written. --label L lists only the branches whose label is
exactly L (the counts and the exit code cover those alone). It changes
nothing, and it works while a coordinator is running (the log is read
without its lock).

Classes: commit-pending (log says commit), abort-pending (log says abort),
orphan (no decision, past its fence: rolled back once seen in two scans),
live (may still be running), unknown-owner (another node's), heuristic
(contradicts the log), foreign (not ours; with --all only), wrong-resource
(listed by a database its decision does not name), log-unread (the decision
store could not be read for it: never touched, and the command exits 1).

Exit code 3 when branches of this node need attention: orphans, heuristic
branches, aborts to finish, and commit decisions still unfinished past the
transaction's fence. Branches in flight (live ones, and commit-pending ones
within their fence, whose coordinator is presumably finishing phase 2) are
listed but do not count, nor do other nodes' branches: on a busy, healthy
service list exits 0, so it can serve as a stuck-transaction probe.
--hide-live leaves the branches in flight out of the listing.

With --store the decisions are read from the shared decision store instead
of a log directory, without taking any lease; a database without the
store's tables is refused, never created. Without --node-id it lists the
branches of every node that has a lease in the store, each judged for its
own node (the counts and the exit code cover them all; "node" is "*" in
JSON); branches of nodes without a lease there are unknown-owner. A read
of the store that fails is an error (exit 1), never "no decision".`,
		Args: noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if cmd.Flags().Changed("label") {
				if label == "" {
					return usagef("--label is empty: give the label to list (branches without one have none to match)")
				}
				if err := drivers.ValidateLabel(label); err != nil {
					return usagef("--label: %v", err)
				}
			}
			r, err := o.resolve()
			if err != nil {
				return err
			}
			var rep *recovery.Report
			node := r.nodeID
			if r.store.Enabled() && !r.nodeIDGiven {
				// Every node of the store, each branch judged for its own node.
				if rep, err = storeScanAll(cmd.Context(), r); err != nil {
					return err
				}
				node = "*"
			} else {
				rec, _, closeAll, err := newRecoverer(cmd.Context(), r, false, nil, nil)
				if err != nil {
					return err
				}
				defer closeAll()
				rep = rec.Scan(cmd.Context())
			}
			filterOurs(rep, all)
			if label != "" {
				filterLabel(rep, label)
			}
			remaining, inFlight := rep.Remaining(), rep.InFlight()
			if hideLive {
				hideInFlight(rep)
			}
			if r.output == "json" {
				j := toJSON(node, rep)
				j.Remaining, j.InFlight = remaining, inFlight // counted before --hide-live
				if err := writeJSON(cmd.OutOrStdout(), j); err != nil {
					return err
				}
			} else {
				w := cmd.OutOrStdout()
				writeTable(w, rep, false)
				fmt.Fprintf(w, "%d branch(es) need attention; %d in flight", rep.NeedsAttention(), inFlight)
				if hideLive && inFlight > 0 {
					fmt.Fprint(w, " (hidden)")
				}
				fmt.Fprintln(w)
			}
			return attentionErr(rep)
		},
	}
	addOpsFlags(cmd, o, true)
	addStoreFlags(cmd, o)
	cmd.Flags().BoolVar(&all, "all", false, "also list foreign prepared transactions (read-only view)")
	cmd.Flags().StringVar(&label, "label", "", "list only the branches whose transaction label (xa.Tx.SetLabel) is exactly this")
	cmd.Flags().BoolVar(&hideLive, "hide-live", false, "leave out this node's branches in flight (live, or decided within their fence): only what needs attention")
	return cmd
}

// entryJSON is a decision-log entry in JSON output.
type entryJSON struct {
	GTRID        string       `json:"gtrid"`
	Label        string       `json:"label,omitempty"`
	State        string       `json:"state"`
	DecidedAt    string       `json:"decided_at,omitempty"`
	Participants []string     `json:"participants,omitempty"`
	Heuristic    bool         `json:"heuristic"`
	Actions      []actionJSON `json:"actions"`
}

type actionJSON struct {
	At        string `json:"at"`
	Op        string `json:"op"`
	Resource  string `json:"resource,omitempty"`
	Branch    *int   `json:"branch,omitempty"`
	Reason    string `json:"reason,omitempty"`
	Actor     string `json:"actor,omitempty"`
	Heuristic bool   `json:"heuristic,omitempty"`
}

func entryToJSON(e decisionlog.Entry) *entryJSON {
	j := &entryJSON{GTRID: e.GTRID.String(), State: e.State.String(), Heuristic: e.Heuristic(), Actions: []actionJSON{}}
	if e.Decision != nil {
		j.Label = e.Decision.Label
		j.DecidedAt = e.Decision.At.UTC().Format(time.RFC3339Nano)
		for _, p := range e.Decision.Participants {
			j.Participants = append(j.Participants, fmt.Sprintf("%s/%02x", p.Resource, p.Branch))
		}
	}
	for _, a := range e.Actions {
		aj := actionJSON{At: a.At.UTC().Format(time.RFC3339Nano), Op: a.Op, Resource: a.Resource, Reason: a.Reason, Actor: a.Actor, Heuristic: a.Heuristic}
		if a.Resource != "" {
			br := int(a.Branch)
			aj.Branch = &br
		}
		j.Actions = append(j.Actions, aj)
	}
	return j
}

func writeEntry(w io.Writer, e *entryJSON) {
	fmt.Fprintf(w, "global transaction %s", e.GTRID)
	if e.Label != "" {
		fmt.Fprintf(w, " (label %s)", e.Label)
	}
	fmt.Fprintf(w, "\n  log: %s", e.State)
	if e.DecidedAt != "" {
		fmt.Fprintf(w, " (decided %s; participants %s)", e.DecidedAt, strings.Join(e.Participants, ", "))
	}
	fmt.Fprintln(w)
	if e.Heuristic {
		fmt.Fprintln(w, "  HEURISTIC: an outcome was forced against the log; atomicity may be broken")
	}
	for _, a := range e.Actions {
		where := ""
		if a.Resource != "" {
			where = fmt.Sprintf(" on %s/%02x", a.Resource, *a.Branch)
		}
		h := ""
		if a.Heuristic {
			h = " [heuristic]"
		}
		fmt.Fprintf(w, "  %s %s%s by %s: %s%s\n", a.At, a.Op, where, a.Actor, a.Reason, h)
	}
}

// parseGTRID accepts a gtrid or a gid and explains what it wants.
func parseGTRID(s string) (drivers.GlobalID, error) {
	x, _, err := drivers.ParseXID(s)
	if err != nil {
		return drivers.GlobalID{}, usagef("%q is not a xabridge global id (want node.begin.seq.deadline as shown by `xabridge list`)", printableArg(s))
	}
	return x.Global, nil
}

// printableArg shortens and quotes user input for error messages.
func printableArg(s string) string {
	if len(s) > 80 {
		s = s[:80] + "…"
	}
	return strings.Trim(strconv.Quote(s), `"`)
}

func newShowCmd() *cobra.Command {
	o := &opsConfig{}
	cmd := &cobra.Command{
		Use:   "show GTRID",
		Short: "Show one global transaction: its label, log records and branches on every resource",
		Long: `show prints what the decision log holds for one global transaction (its
label, decision, participants and actions) and its prepared branches on every
resource. It changes nothing. With --store it reads the shared decision
store, without taking any lease, and judges the transaction for its own
node (the one in its GTRID). A read of the store that fails is an error
(exit 1), never "not logged".`,
		Args: exactArgs(1, "GTRID"),
		RunE: func(cmd *cobra.Command, args []string) error {
			g, err := parseGTRID(args[0])
			if err != nil {
				return err
			}
			r, err := o.resolve()
			if err != nil {
				return err
			}
			if r.store.Enabled() {
				// A store holds every node's decisions: judge the
				// transaction as its own node would.
				if r.nodeIDGiven && r.nodeID != g.Node() {
					return usagef("%s is a transaction of node %s, not of --node-id %s", g, g.Node(), r.nodeID)
				}
				r.nodeID = g.Node()
			}
			rec, l, closeAll, err := newRecoverer(cmd.Context(), r, false, nil, nil)
			if err != nil {
				return err
			}
			defer closeAll()
			rep := rec.Scan(cmd.Context())
			// Its branches, also those listed where these resources may
			// not finish them (another database of the same server, another
			// role): the adapter decoded their XIDs and says why.
			kept := rep.Branches[:0]
			var elsewhere []string
			for _, b := range rep.Branches {
				if b.XID.Global == g {
					kept = append(kept, b)
					if !b.Ours {
						elsewhere = append(elsewhere, fmt.Sprintf("branch %s on resource %s is %s", b.XID.BranchQualifier(), b.Resource, first(b.Note, "not finishable from it")))
					}
				}
			}
			rep.Branches = kept
			if rep.LogErr != nil {
				return logUnreadErr(rep.LogErr)
			}
			entry, logged, err := decisionlog.LookupChecked(cmd.Context(), l, g)
			if err != nil {
				// Never "not logged": the decision may be there.
				return logUnreadErr(err)
			}
			if !logged && len(elsewhere) == len(kept) && len(elsewhere) > 0 {
				if r.output == "json" {
					if err := writeJSON(cmd.OutOrStdout(), toJSON(r.nodeID, rep)); err != nil {
						return err
					}
				}
				return fmt.Errorf("%s: %w: %s", g, recovery.ErrNotFinishableHere, strings.Join(elsewhere, "; "))
			}
			if !logged && len(kept) == 0 {
				if u := rep.Unscanned(); len(u) > 0 {
					return fmt.Errorf("%s: %w (and %s could not be scanned)", g, recovery.ErrUnknownTransaction, resourcesPhrase(u))
				}
				return fmt.Errorf("%s: %w", g, recovery.ErrUnknownTransaction)
			}
			if !logged {
				entry = decisionlog.Entry{GTRID: g}
			}
			ej := entryToJSON(entry)
			if ej.Label == "" && len(kept) > 0 {
				// No decision (or one the log no longer holds whole): the
				// branches carry the label in their XIDs.
				ej.Label = kept[0].XID.Label
			}
			if r.output == "json" {
				j := toJSON(r.nodeID, rep)
				j.Log = ej
				if err := writeJSON(cmd.OutOrStdout(), j); err != nil {
					return err
				}
			} else {
				w := cmd.OutOrStdout()
				writeEntry(w, ej)
				fmt.Fprintf(w, "  began %s, fence %s\n", g.Begin().UTC().Format(time.RFC3339Nano), g.Deadline().UTC().Format(time.RFC3339Nano))
				if len(kept) == 0 {
					fmt.Fprintln(w, "  no prepared branch on any resource")
				} else {
					writeTable(w, rep, false)
				}
				for _, e := range elsewhere {
					fmt.Fprintln(w, "NOT FINISHABLE HERE: "+e)
				}
			}
			return remainingErr(rep)
		},
	}
	addOpsFlags(cmd, o, true)
	addStoreFlags(cmd, o)
	return cmd
}

// exactArgs is cobra.ExactArgs with a usage error naming the argument.
func exactArgs(n int, what string) cobra.PositionalArgs {
	return func(cmd *cobra.Command, args []string) error {
		if len(args) != n {
			return usagef("%s needs exactly %d argument (%s), got %d", cmd.CommandPath(), n, what, len(args))
		}
		return nil
	}
}

func newResolveCmd() *cobra.Command {
	o := &opsConfig{}
	var commit, rollback, force bool
	cmd := &cobra.Command{
		Use:   "resolve GTRID --commit|--rollback",
		Short: "Commit or roll back every prepared branch of one global transaction",
		Long: `resolve settles one global transaction by hand.

It refuses to contradict the decision log: --commit needs a commit decision,
--rollback needs its absence. --force overrides that refusal; the forced
outcome is recorded in the log as a heuristic outcome and reported as such,
because atomicity may then be broken. A rollback that agrees with the log
first records an abort, so the transaction can never commit afterwards.

It needs the decision log for writing, so it refuses while a coordinator
holds the log.

With --store it acts on the transaction's node only under a claim of that
node's lease, as a replica taking it over would: a live node (or one a
replica is taking over) is refused, with who holds it and until when; its
own coordinator recovers it. The claim is released when resolve ends.`,
		Example: `  xabridge resolve demo.019e7044887b.deadbeef.019e7044fdab --commit
  xabridge resolve demo.019e7044887b.deadbeef.019e7044fdab --rollback --force`,
		Args: exactArgs(1, "GTRID"),
		RunE: func(cmd *cobra.Command, args []string) error {
			if commit == rollback {
				return usagef("give exactly one of --commit or --rollback")
			}
			g, err := parseGTRID(args[0])
			if err != nil {
				return err
			}
			r, err := o.resolve()
			if err != nil {
				return err
			}
			var rep *recovery.Report
			if r.store.Enabled() {
				rep, err = storeResolve(cmd.Context(), r, g, commit, force)
			} else {
				var rec *recovery.Recoverer
				var closeAll func()
				rec, _, closeAll, err = newRecoverer(cmd.Context(), r, true, nil, nil)
				if err != nil {
					return err
				}
				defer closeAll()
				rep, err = rec.Resolve(cmd.Context(), g, commit, force, actor())
			}
			if err != nil {
				return err
			}
			if r.output == "json" {
				if err := writeJSON(cmd.OutOrStdout(), toJSON(r.nodeID, rep)); err != nil {
					return err
				}
			} else {
				w := cmd.OutOrStdout()
				if len(rep.Branches) == 0 {
					fmt.Fprintf(w, "%s: no prepared branch left on any resource; log updated\n", g)
				} else {
					writeTable(w, rep, true)
				}
				if force {
					fmt.Fprintf(w, "HEURISTIC OUTCOME recorded for %s: the operator forced it against the decision log\n", g)
				}
			}
			return remainingErr(rep)
		},
	}
	addOpsFlags(cmd, o, true)
	addStoreFlags(cmd, o)
	f := cmd.Flags()
	f.BoolVar(&commit, "commit", false, "commit every prepared branch")
	f.BoolVar(&rollback, "rollback", false, "roll back every prepared branch")
	f.BoolVar(&force, "force", false, "allow an outcome that contradicts the decision log (recorded as heuristic)")
	return cmd
}

func newRecoverCmd() *cobra.Command {
	o := &opsConfig{}
	var dryRun, watch bool
	var interval time.Duration
	var minAge, metricsAddr, logLevel string
	cmd := &cobra.Command{
		Use:   "recover",
		Short: "Run recovery: commit what the log decided, roll back orphans, leave the rest alone",
		Long: `recover scans every resource and resolves this node's in-doubt branches:
branches whose transaction has a commit decision are committed; branches with
no decision that are past their fence (deadline plus a clock margin) and seen
in two consecutive scans are rolled back (presumed abort, recorded in the log
first). Live, foreign and other nodes' branches are never touched.

One run does two scans, so orphans are resolved in one command. --min-age
overrides the fence for operators who know the coordinator is dead (e.g.
--min-age 0s right after a kill -9). --watch keeps running, one pass per
--interval, until interrupted; it serves Prometheus metrics at
http://--metrics-addr/metrics (loopback by default; --metrics-addr '' for
none) and logs each state change on stderr (--log-level).

It needs the decision log for writing, so it refuses while a coordinator
holds the log. Exit code 3 when branches of this node remain in doubt.

recover always waits for the fence (unless --min-age says otherwise): it
cannot know that no other coordinator of this node, with a copy of the log,
is alive. A restarted coordinator can: it holds the log, so a transaction of
its node that began before it started is a dead process's; it rolls those
back at start-up without the fence wait (demo transfer does; library users
set recovery.Config.DeadBefore to xa.Coordinator.Started).

With --store (the shared decision store) it acts only on nodes whose lease
has expired, never on a live node's transactions: without --node-id on
every expired node, with --node-id only on that node (refused unless its
lease expired). Each node is taken over as a replica does it: its lease is
claimed (epoch + 1), its commit decisions are driven to completion, its
undecided branches rolled back with the abort recorded first (no fence to
wait for: the node is dead and its late decisions are refused), and the
lease released. Without --node-id, a node whose lease was given back (a
clean stop, or a claimant that finished) with no decision pending and no
branch prepared is not claimed: a claim would only cost it an epoch.
While it acts, recover holds a lease of its own under the
node id xabridge-cli, so one operator command acts on a store at a time.
--dry-run reads the plan without a lease. --watch and --min-age do not go
with --store: replicas on the store do this continuously.`,
		Example: `  xabridge recover --dry-run
  xabridge recover --min-age 0s
  xabridge recover --store postgres://xabridge@db/payments --dry-run
  xabridge recover --store postgres://xabridge@db/payments --node-id payments-3
  xabridge recover --watch --interval 30s
  xabridge recover --watch --metrics-addr 0.0.0.0:9464 --log-level debug`,
		Args: noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			r, err := o.resolve()
			if err != nil {
				return err
			}
			var ma *time.Duration
			if minAge != "" {
				d, err := time.ParseDuration(minAge)
				if err != nil || d < 0 {
					return usagef("--min-age %q: want a duration such as 0s, 30s or 5m", minAge)
				}
				ma = &d
			}
			if interval <= 0 {
				return usagef("--interval must be positive")
			}
			f := cmd.Flags()
			if !watch && (f.Changed("metrics-addr") || f.Changed("log-level")) {
				return usagef("--metrics-addr and --log-level go with --watch")
			}
			if watch && dryRun {
				return usagef("--dry-run prints one plan; it does not go with --watch")
			}
			if r.store.Enabled() {
				switch {
				case watch:
					return usagef("--watch does not go with --store: coordinators on a store (replicas) recover and take over dead peers in-process; run one more replica instead")
				case ma != nil:
					return usagef("--min-age does not go with --store: a node is taken over only once its lease expired, and then no fence need be waited for")
				}
				return storeRecover(cmd.Context(), cmd.OutOrStdout(), r, dryRun)
			}
			var obs *observer
			var logger *slog.Logger
			if watch {
				lvl, err := parseLogLevel(logLevel)
				if err != nil {
					return err
				}
				if err := checkMetricsAddr(metricsAddr); err != nil {
					return err
				}
				logger = newLogger(cmd.ErrOrStderr(), lvl)
				if metricsAddr != "" {
					if obs, err = newObserver(r.nodeID); err != nil {
						return err
					}
				}
			}
			rec, l, closeAll, err := newRecoverer(cmd.Context(), r, !dryRun, ma, func(c *recovery.Config) {
				c.Logger = logger
				if obs != nil {
					c.OnReport = obs.m.ObserveReport
				}
			})
			if err != nil {
				return err
			}
			defer closeAll()
			if obs != nil {
				if fl, ok := l.(*decisionlog.FileLog); ok {
					obs.labeled.MustRegister(metrics.NewFileLogCollector(fl))
				}
				if err := obs.serve(metricsAddr, cmd.ErrOrStderr()); err != nil {
					return err
				}
				defer obs.close()
			}
			ctx := cmd.Context()
			out := cmd.OutOrStdout()
			print := func(rep *recovery.Report) error {
				if r.output == "json" {
					return writeJSON(out, toJSON(r.nodeID, rep))
				}
				if len(rep.Branches) == 0 && len(rep.ScanErrors) == 0 && rep.LogErr == nil {
					fmt.Fprintf(out, "%s: nothing in doubt\n", rep.At.UTC().Format(time.RFC3339))
					return nil
				}
				writeTable(out, rep, !dryRun)
				if len(rep.Ended) > 0 {
					fmt.Fprintf(out, "phase 2 finished for %d transaction(s)\n", len(rep.Ended))
				}
				return nil
			}
			if watch {
				err := rec.Loop(ctx, interval, func(rep *recovery.Report) {
					filterOurs(rep, false)
					_ = print(rep)
				})
				if errors.Is(err, context.Canceled) {
					return nil
				}
				return err
			}
			rep := rec.Pass(ctx, dryRun)
			acted := map[string]recovery.Branch{}
			// The two-scan rule within one command: the log lock proves no
			// coordinator of this node is running, so later scans a moment
			// apart confirm the branches are still there and settled (see
			// recovery.Config.Settle), and wait out branches that answered
			// "busy" (a MariaDB session still detaching).
			for pass := 1; !dryRun && pass < 10 && needsSecondScan(rep) && ctx.Err() == nil; pass++ {
				select {
				case <-ctx.Done():
				case <-time.After(400 * time.Millisecond):
				}
				for _, b := range rep.Branches {
					if b.Result != "" {
						acted[b.Resource+" "+b.ID] = b
					}
				}
				rep = rec.Pass(ctx, false)
			}
			// Show what earlier passes did to branches that are now gone.
			for _, b := range rep.Branches {
				delete(acted, b.Resource+" "+b.ID)
			}
			for _, b := range acted {
				if b.Err != nil || b.Result == recovery.ResultBusy {
					// It answered busy or failed then, and is gone now:
					// finished since, so not in doubt any more.
					b.Err, b.Result = nil, recovery.ResultAlreadyFinished
				}
				rep.Branches = append(rep.Branches, b)
			}
			sortBranches(rep.Branches)
			filterOurs(rep, false)
			if err := print(rep); err != nil {
				return err
			}
			return remainingErr(rep)
		},
	}
	addOpsFlags(cmd, o, true)
	addStoreFlags(cmd, o)
	f := cmd.Flags()
	f.BoolVar(&dryRun, "dry-run", false, "print the plan, change nothing")
	f.BoolVar(&watch, "watch", false, "keep running one pass per --interval until interrupted")
	f.DurationVar(&interval, "interval", 30*time.Second, "time between passes with --watch")
	f.StringVar(&minAge, "min-age", "", "treat branches of transactions older than this as past their fence (overrides the deadline)")
	f.StringVar(&metricsAddr, "metrics-addr", metrics.DefaultAddr, "with --watch: serve Prometheus metrics at http://ADDR/metrics (host:port; an empty host means 127.0.0.1; '' serves none)")
	f.StringVar(&logLevel, "log-level", "info", "with --watch: "+logLevelHelp)
	return cmd
}

var _ decisionlog.CheckedReader = closingLog{}

// closingLog is a decision log whose Close also runs done (closes the
// store's pool).
type closingLog struct {
	decisionlog.Log
	done func()
}

func (c closingLog) Close() error {
	err := c.Log.Close()
	c.done()
	return err
}

// LookupChecked passes the wrapped log's checked reads through
// (decisionlog.CheckedReader): hiding them would turn a failed read of the
// store into "no decision".
func (c closingLog) LookupChecked(ctx context.Context, g drivers.GlobalID) (decisionlog.Entry, bool, error) {
	return decisionlog.LookupChecked(ctx, c.Log, g)
}

// PendingChecked is LookupChecked for Pending.
func (c closingLog) PendingChecked(ctx context.Context) ([]decisionlog.Decision, error) {
	return decisionlog.PendingChecked(ctx, c.Log)
}

// sortBranches orders branches by global id, then resource.
func sortBranches(bs []recovery.Branch) {
	key := func(b recovery.Branch) string {
		if b.Ours {
			return "0" + b.XID.GID()
		}
		return "1" + b.ID
	}
	sort.SliceStable(bs, func(i, j int) bool {
		if ki, kj := key(bs[i]), key(bs[j]); ki != kj {
			return ki < kj
		}
		return bs[i].Resource < bs[j].Resource
	})
}

// needsSecondScan reports whether a pass left orphans waiting for their
// second sighting.
func needsSecondScan(rep *recovery.Report) bool {
	for _, b := range rep.Branches {
		if b.Action == recovery.ActionWait || b.Result == recovery.ResultBusy {
			return true
		}
	}
	return false
}
