package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"strings"
	"sync"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/xabridge/xabridge/drivers"
	"github.com/xabridge/xabridge/internal/redact"
)

// doctorRow is one check of one resource, in table and `-o json` output.
// The field names are a stable interface.
type doctorRow struct {
	Resource string              `json:"resource"`
	Check    string              `json:"check"`
	Status   drivers.CheckStatus `json:"status"`
	Detail   string              `json:"detail"`
	Fix      string              `json:"fix,omitempty"`
}

// doctorJSON is the whole `-o json` document.
type doctorJSON struct {
	Checks  []doctorRow    `json:"checks"`
	Summary map[string]int `json:"summary"` // ok, warn, fail → count
}

func newDoctorCmd() *cobra.Command {
	o := &opsConfig{}
	var maxAge, timeout time.Duration
	cmd := &cobra.Command{
		Use:   "doctor",
		Short: "Check that every resource is ready for two-phase commit",
		Long: `doctor connects to every resource and checks that it can take part in
two-phase commit, printing one row per check: RESOURCE CHECK STATUS DETAIL FIX.
Status is ok, warn (works, but look at it) or fail (two-phase commit cannot
work, or the check could not run); FIX is a one-line remedy.

PostgreSQL: version; max_prepared_transactions (0 disables prepared
transactions: fail; below max_connections: warn); the role (COMMIT PREPARED
must run as the role that prepared the transaction, or a superuser, in the
same database); prepared transactions older than --max-prepared-age (they
hold locks and block VACUUM); clock offset.

MySQL/MariaDB: version and flavour (MariaDB 10.5+ or MySQL 5.7.7+, else
prepared branches die with their session); xa_detach_on_prepare (MySQL
8.0.29+); binlog_format ROW when the binary log is on; the right to run
XA RECOVER (MySQL 8 needs XA_RECOVER_ADMIN: the fix is the GRANT to run);
storage engines without XA (the default one, and tables in the URL's
database); isolation level; branches of xabridge prepared longer than
--max-prepared-age (age from the begin time in their XID); clock offset.

The clock check compares each server's clock with this host's (accurate to
half a round trip): above 1s warn, above 30s fail. xabridge writes each
transaction's begin time and fence deadline with the coordinator's clock and
recovery reads them with its own. Atomicity does not depend on clocks
(recovery records its abort in the node's decision log, which then refuses a
late commit decision), but when recovery acts, and the ages operators see,
do.

A resource that cannot be reached is one fail row. doctor changes nothing and
needs no decision log. Resources come from --resource, XABRIDGE_RESOURCES,
--config or XABRIDGE_PG/XABRIDGE_MYSQL, as for the other commands.

Exit code 1 when any check fails, 0 when there are only warnings.`,
		Example: `  xabridge doctor
  xabridge doctor --resource ledger=postgres://app@db1/ledger --resource wallet=mysql://app@db2/wallet
  xabridge doctor -o json --max-prepared-age 10m`,
		Args: noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			r, err := o.resolve()
			if err != nil {
				return err
			}
			if maxAge <= 0 {
				return usagef("--max-prepared-age must be positive, not %s", maxAge)
			}
			if timeout <= 0 {
				return usagef("--timeout must be positive, not %s", timeout)
			}
			rows := runDoctor(cmd.Context(), r.resources, drivers.DoctorOptions{MaxPreparedAge: maxAge}, timeout)
			summary := map[string]int{string(drivers.CheckOK): 0, string(drivers.CheckWarn): 0, string(drivers.CheckFail): 0}
			for _, row := range rows {
				summary[string(row.Status)]++
			}
			w := cmd.OutOrStdout()
			if r.output == "json" {
				if err := writeJSON(w, doctorJSON{Checks: rows, Summary: summary}); err != nil {
					return err
				}
			} else {
				writeDoctorTable(w, rows)
				fmt.Fprintf(w, "%d ok, %d warn, %d fail\n", summary["ok"], summary["warn"], summary["fail"])
			}
			if n := summary[string(drivers.CheckFail)]; n > 0 {
				return fmt.Errorf("%d check(s) failed", n)
			}
			return nil
		},
	}
	addOpsFlags(cmd, o, true)
	// doctor reads no decision log and acts for no node.
	_ = cmd.Flags().MarkHidden("node-id")
	_ = cmd.Flags().MarkHidden("log-dir")
	f := cmd.Flags()
	f.DurationVar(&maxAge, "max-prepared-age", drivers.DefaultMaxPreparedAge, "report prepared transactions older than this")
	f.DurationVar(&timeout, "timeout", 15*time.Second, "time limit for connecting to and checking each resource")
	return cmd
}

// runDoctor checks every resource concurrently, each within timeout, and
// returns the rows in the order the resources were given.
func runDoctor(ctx context.Context, resources []namedURL, opts drivers.DoctorOptions, timeout time.Duration) []doctorRow {
	results := make([][]doctorRow, len(resources))
	var wg sync.WaitGroup
	for i, nu := range resources {
		wg.Add(1)
		go func() {
			defer wg.Done()
			ctx, cancel := context.WithTimeout(ctx, timeout)
			defer cancel()
			rows := doctorOne(ctx, nu, opts)
			if errors.Is(ctx.Err(), context.DeadlineExceeded) {
				// The adapters only see "context deadline exceeded".
				for j := range rows {
					if rows[j].Status == drivers.CheckFail {
						rows[j].Detail += fmt.Sprintf(" (--timeout %s ran out)", timeout)
					}
				}
			}
			results[i] = rows
		}()
	}
	wg.Wait()
	rows := []doctorRow{}
	for _, r := range results {
		rows = append(rows, r...)
	}
	return rows
}

// doctorOne opens one resource and runs its checks.
func doctorOne(ctx context.Context, nu namedURL, opts drivers.DoctorOptions) []doctorRow {
	scrub := redact.Scrub(nu.url)
	res, closer, err := drivers.Open(ctx, nu.name, nu.url)
	if err != nil {
		return []doctorRow{{Resource: nu.name, Check: "connect", Status: drivers.CheckFail,
			Detail: scrub("cannot connect: " + err.Error()),
			Fix:    "check that the server is running and the URL (" + redact.URL(nu.url) + ") is right"}}
	}
	defer closer.Close()
	d, ok := res.(drivers.Doctor)
	if !ok {
		return []doctorRow{{Resource: nu.name, Check: "doctor", Status: drivers.CheckWarn,
			Detail: fmt.Sprintf("the %T adapter has no readiness checks", res), Fix: "check the server by hand (see the README's database requirements)"}}
	}
	var rows []doctorRow
	for _, c := range d.Doctor(ctx, opts) {
		rows = append(rows, doctorRow{Resource: nu.name, Check: c.Name, Status: c.Status, Detail: scrub(c.Detail), Fix: scrub(c.Fix)})
	}
	return rows
}

// writeDoctorTable prints the rows as an aligned table. Tabs and line
// breaks inside a cell are flattened so they cannot break the layout.
func writeDoctorTable(w io.Writer, rows []doctorRow) {
	flat := strings.NewReplacer("\t", " ", "\n", " ", "\r", " ")
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "RESOURCE\tCHECK\tSTATUS\tDETAIL\tFIX")
	for _, r := range rows {
		fmt.Fprintln(tw, strings.Join([]string{r.Resource, r.Check, string(r.Status), flat.Replace(r.Detail), flat.Replace(first(r.Fix, "-"))}, "\t"))
	}
	tw.Flush()
}
