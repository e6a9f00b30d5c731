package main

import (
	"fmt"
	"strings"
	"text/tabwriter"

	"github.com/spf13/cobra"
	"github.com/xabridge/xabridge/decisionlog"
)

func newLogCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "log",
		Short: "Inspect the decision log: dump, stats, compact",
		Args:  cobra.ArbitraryArgs,
		RunE:  unknownSubcommand,
	}
	cmd.AddCommand(newLogDumpCmd(), newLogStatsCmd(), newLogCompactCmd())
	return cmd
}

// logFlags are the flags of the log subcommands: only the log is needed.
type logFlags struct {
	logDir, output string
}

func (f *logFlags) add(cmd *cobra.Command, withOutput bool) {
	cmd.Flags().StringVar(&f.logDir, "log-dir", "", "decision log directory (env XABRIDGE_LOG_DIR; default .xabridge/log)")
	if withOutput {
		cmd.Flags().StringVarP(&f.output, "output", "o", "table", "output format: table or json")
	}
}

func (f *logFlags) open(write bool) (*decisionlog.FileLog, string, error) {
	o := &opsConfig{logDir: f.logDir, output: f.output, resources: []string{"unused=unused://"}}
	r, err := o.resolve()
	if err != nil {
		return nil, "", err
	}
	l, err := r.openLog(write)
	return l, r.output, err
}

func newLogDumpCmd() *cobra.Command {
	f := &logFlags{}
	cmd := &cobra.Command{
		Use:   "dump",
		Short: "Print every transaction the log knows: decision, state, actions",
		Args:  noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			l, output, err := f.open(false)
			if err != nil {
				return err
			}
			defer l.Close()
			entries := l.Entries()
			w := cmd.OutOrStdout()
			if output == "json" {
				out := make([]*entryJSON, 0, len(entries))
				for _, e := range entries {
					out = append(out, entryToJSON(e))
				}
				return writeJSON(w, out)
			}
			tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
			fmt.Fprintln(tw, "GTRID\tSTATE\tPARTICIPANTS\tACTIONS\tHEURISTIC")
			for _, e := range entries {
				j := entryToJSON(e)
				var acts []string
				for _, a := range j.Actions {
					acts = append(acts, a.Op)
				}
				fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%v\n", j.GTRID, j.State, first(strings.Join(j.Participants, ","), "-"), first(strings.Join(acts, ","), "-"), j.Heuristic)
			}
			return tw.Flush()
		},
	}
	f.add(cmd, true)
	return cmd
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
