package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"slices"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"
	"github.com/xabridge/xabridge/decisionlog"
)

func newLogCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "log",
		Short: "Inspect the decision log: dump, stats, compact, verify, repair",
		Args:  cobra.ArbitraryArgs,
		RunE:  unknownSubcommand,
	}
	cmd.AddCommand(newLogDumpCmd(), newLogStatsCmd(), newLogCompactCmd(), newLogVerifyCmd(), newLogRepairCmd())
	return cmd
}

// logFlags are the flags of the log subcommands: only the log is needed.
type logFlags struct {
	logDir, output      string
	store, storeSchema  string
	storeSet, schemaSet bool
}

func (f *logFlags) add(cmd *cobra.Command, withOutput bool) {
	cmd.Flags().StringVar(&f.logDir, "log-dir", "", "decision log directory (env XABRIDGE_LOG_DIR; default .xabridge/log)")
	addStoreFlagSet(cmd.Flags(), &f.store, &f.storeSet, &f.storeSchema, &f.schemaSet)
	if withOutput {
		cmd.Flags().StringVarP(&f.output, "output", "o", "table", "output format: table or json")
	}
}

// resolve applies the operator commands' rules (flag over environment;
// --store and --log-dir exclude each other).
func (f *logFlags) resolve() (*resolved, error) {
	o := &opsConfig{logDir: f.logDir, output: f.output, resources: []string{"unused=unused://"},
		withStore: true, store: f.store, storeSet: f.storeSet, storeSchema: f.storeSchema, storeSchemaSet: f.schemaSet}
	return o.resolve()
}

func (f *logFlags) open(write bool) (*decisionlog.FileLog, string, error) {
	r, err := f.resolve()
	if err != nil {
		return nil, "", err
	}
	if r.store.Enabled() {
		return nil, "", errFileOnly
	}
	r.nodeID = "" // the log tools take whichever node's log they are given
	l, err := r.openLog(write)
	return l, r.output, err
}

// errFileOnly refuses a file-log tool on a store.
var errFileOnly = usagef("this command works on a decision log file (--log-dir), not on a shared store: the store's PostgreSQL keeps its own rows intact, and the store deletes finished rows itself (log dump reads a store, xabridge nodes shows its leases)")

// dir returns the log directory the flags name, and the output format.
func (f *logFlags) dir() (string, string, error) {
	r, err := f.resolve()
	if err != nil {
		return "", "", err
	}
	if r.store.Enabled() {
		return "", "", errFileOnly
	}
	return r.logDir, r.output, nil
}

// errLogNeedsRepair: log verify found a region to cut or damage (exit 1).
var errLogNeedsRepair = errors.New("the decision log is not intact")

func newLogVerifyCmd() *cobra.Command {
	f := &logFlags{}
	cmd := &cobra.Command{
		Use:   "verify",
		Short: "Check every record of the log, read-only: what is intact, what an open would cut (exit 0 only when intact)",
		Args:  noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			dir, output, err := f.dir()
			if err != nil {
				return err
			}
			rep, err := decisionlog.VerifyLog(dir)
			if err != nil {
				return err
			}
			if err := printLogReport(cmd.OutOrStdout(), output, rep, "would cut"); err != nil {
				return err
			}
			switch {
			case rep.Damage != nil:
				return fmt.Errorf("%w: acknowledged records are damaged; repair will refuse (restore the log from a copy, or inspect the damaged bytes)", errLogNeedsRepair)
			case rep.Version == 0:
				return fmt.Errorf("%w: %s holds no initialised log", errLogNeedsRepair, rep.Path)
			case rep.Cut != nil:
				return fmt.Errorf("%w: %d never-acknowledged bytes to cut (xabridge log repair, or the coordinator's next start, cuts them)", errLogNeedsRepair, rep.Cut.Length)
			}
			return nil
		},
	}
	f.add(cmd, true)
	return cmd
}

func newLogRepairCmd() *cobra.Command {
	f := &logFlags{}
	cmd := &cobra.Command{
		Use:   "repair",
		Short: "Cut what was never acknowledged, keeping a copy of it; refuses to cut acknowledged records (needs the log's lock)",
		Args:  noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			dir, output, err := f.dir()
			if err != nil {
				return err
			}
			rep, rerr := decisionlog.RepairLog(dir)
			if rep.Path != "" {
				if err := printLogReport(cmd.OutOrStdout(), output, rep, "cut"); err != nil {
					return err
				}
			}
			return rerr
		},
	}
	f.add(cmd, true)
	return cmd
}

// logReportJSON is the JSON form of a decisionlog.LogReport.
type logReportJSON struct {
	Path        string   `json:"path"`
	Version     int      `json:"version"`
	Node        string   `json:"node"`
	Bytes       int64    `json:"bytes"`
	Records     int      `json:"records"`
	Batches     int      `json:"batches"`
	LastBatch   uint64   `json:"last_batch"`
	LastBatchAt string   `json:"last_batch_at,omitempty"`
	DurableTo   int64    `json:"durable_to"`
	FailMarker  int64    `json:"fail_marker"`
	Intact      bool     `json:"intact"`
	Cut         *cutJSON `json:"cut,omitempty"`
	Damage      string   `json:"damage,omitempty"`
	Saved       string   `json:"saved,omitempty"`
}

type cutJSON struct {
	Offset  int64    `json:"offset"`
	Length  int64    `json:"length"`
	Reason  string   `json:"reason"`
	Records []string `json:"records"`
}

// printLogReport prints what verify or repair found; verb says what
// happens to the cut region.
func printLogReport(w io.Writer, output string, rep decisionlog.LogReport, verb string) error {
	j := logReportJSON{Path: rep.Path, Version: rep.Version, Node: rep.Node, Bytes: rep.Size, Records: rep.Records,
		Batches: rep.Batches, LastBatch: rep.LastBatch, DurableTo: rep.DurableTo, FailMarker: rep.FailMarker,
		Intact: rep.Intact(), Saved: rep.Saved}
	if !rep.LastBatchAt.IsZero() {
		j.LastBatchAt = rep.LastBatchAt.UTC().Format(time.RFC3339Nano)
	}
	if c := rep.Cut; c != nil {
		j.Cut = &cutJSON{Offset: c.Offset, Length: c.Length, Reason: c.Reason, Records: c.Records}
	}
	if rep.Damage != nil {
		j.Damage = rep.Damage.Error()
	}
	if output == "json" {
		return writeJSON(w, j)
	}
	fmt.Fprintf(w, "log %s: format %d, node %s, %d bytes\n", j.Path, j.Version, first(j.Node, "(unbound)"), j.Bytes)
	fmt.Fprintf(w, "  intact: %d records in %d sealed batches (last batch %d, %s), durable up to offset %d\n",
		j.Records, j.Batches, j.LastBatch, first(j.LastBatchAt, "-"), j.DurableTo)
	if j.FailMarker >= 0 {
		fmt.Fprintf(w, "  the last writer fail-stopped; it was durable up to offset %d\n", j.FailMarker)
	}
	if c := j.Cut; c != nil {
		fmt.Fprintf(w, "  %s: %d bytes at offset %d: %s\n", verb, c.Length, c.Offset, c.Reason)
		for _, r := range c.Records {
			fmt.Fprintf(w, "    never acknowledged: %s\n", r)
		}
	}
	if j.Saved != "" {
		fmt.Fprintf(w, "  the cut bytes are kept in %s\n", j.Saved)
	}
	if j.Damage != "" {
		fmt.Fprintf(w, "  DAMAGED: %s\n", j.Damage)
	}
	if j.Intact {
		fmt.Fprintln(w, "  intact")
	}
	return nil
}

func newLogDumpCmd() *cobra.Command {
	f := &logFlags{}
	var node string
	cmd := &cobra.Command{
		Use:   "dump",
		Short: "Print every transaction the log (or the shared store, --store) knows: decision, state, actions, label",
		Long: `dump prints every transaction the decision log knows: its decision, state,
participants, actions and label. With --store it reads the shared decision store
instead (every node's transactions, or --node's), without taking a lease.`,
		Args: noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			entries, output, done, err := f.entries(cmd.Context(), node)
			if err != nil {
				return err
			}
			defer done()
			w := cmd.OutOrStdout()
			if output == "json" {
				out := make([]*entryJSON, 0, len(entries))
				for _, e := range entries {
					out = append(out, entryToJSON(e))
				}
				return writeJSON(w, out)
			}
			tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
			// The LABEL column only when an entry has one, as in list.
			labels := slices.ContainsFunc(entries, func(e decisionlog.Entry) bool { return e.Decision != nil && e.Decision.Label != "" })
			hdr := "GTRID\tSTATE\tPARTICIPANTS\tACTIONS\tHEURISTIC"
			if labels {
				hdr += "\tLABEL"
			}
			fmt.Fprintln(tw, hdr)
			for _, e := range entries {
				j := entryToJSON(e)
				var acts []string
				for _, a := range j.Actions {
					acts = append(acts, a.Op)
				}
				line := fmt.Sprintf("%s\t%s\t%s\t%s\t%v", j.GTRID, j.State, first(strings.Join(j.Participants, ","), "-"), first(strings.Join(acts, ","), "-"), j.Heuristic)
				if labels {
					line += "\t" + first(j.Label, "-")
				}
				fmt.Fprintln(tw, line)
			}
			return tw.Flush()
		},
	}
	f.add(cmd, true)
	cmd.Flags().StringVar(&node, "node", "", "with --store: only this node's transactions (default: every node's)")
	return cmd
}

// entries reads every transaction of the file log, or of the store (of
// node, or of every node when it is empty) without a lease.
func (f *logFlags) entries(ctx context.Context, node string) ([]decisionlog.Entry, string, func(), error) {
	r, err := f.resolve()
	if err != nil {
		return nil, "", nil, err
	}
	if !r.store.Enabled() {
		if node != "" {
			return nil, "", nil, usagef("--node goes with --store (a log file holds one node's transactions)")
		}
		l, output, err := f.open(false)
		if err != nil {
			return nil, "", nil, err
		}
		return l.Entries(), output, func() { l.Close() }, nil
	}
	if node != "" {
		if err := validNode("--node", node); err != nil {
			return nil, "", nil, err
		}
	}
	rd, done, err := openStoreReader(ctx, r.store)
	if err != nil {
		return nil, "", nil, err
	}
	es, err := rd.Entries(ctx, node)
	if err != nil {
		done()
		return nil, "", nil, err
	}
	return es, r.output, done, nil
}

func newLogStatsCmd() *cobra.Command {
	f := &logFlags{}
	cmd := &cobra.Command{
		Use:   "stats",
		Short: "Print the log's size and what it holds",
		Args:  noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			l, output, err := f.open(false)
			if err != nil {
				return err
			}
			defer l.Close()
			s := l.Stats()
			counts := map[string]int{}
			heur := 0
			for _, e := range l.Entries() {
				counts[e.State.String()]++
				if e.Heuristic() {
					heur++
				}
			}
			out := map[string]any{
				"dir": l.Dir(), "bytes": s.Bytes, "entries": s.Entries, "live": s.Live,
				"committed_pending": counts["committed"], "done": counts["done"], "aborted": counts["aborted"],
				"undecided_with_actions": counts["none"], "heuristic": heur, "truncated_bytes_at_open": s.TruncatedBytes,
			}
			if output == "json" {
				return writeJSON(cmd.OutOrStdout(), out)
			}
			w := cmd.OutOrStdout()
			fmt.Fprintf(w, "log %s: %d bytes, %d transactions (%d live)\n", l.Dir(), s.Bytes, s.Entries, s.Live)
			fmt.Fprintf(w, "  commit decisions pending phase 2: %d\n  committed and done: %d\n  aborted (fence records): %d\n  heuristic: %d\n",
				counts["committed"], counts["done"], counts["aborted"], heur)
			if s.TruncatedBytes > 0 {
				fmt.Fprintf(w, "  a torn tail of %d bytes was ignored\n", s.TruncatedBytes)
			}
			return nil
		},
	}
	f.add(cmd, true)
	return cmd
}

func newLogCompactCmd() *cobra.Command {
	f := &logFlags{}
	cmd := &cobra.Command{
		Use:   "compact",
		Short: "Rewrite the log keeping only live records (needs the log's lock)",
		Args:  noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			l, _, err := f.open(true)
			if err != nil {
				return err
			}
			before := l.Stats().Bytes
			if err := l.Compact(cmd.Context()); err != nil {
				l.Close()
				return err
			}
			after := l.Stats().Bytes
			if err := l.Close(); err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "compacted %s: %d -> %d bytes\n", l.Dir(), before, after)
			return nil
		},
	}
	f.add(cmd, false)
	return cmd
}
