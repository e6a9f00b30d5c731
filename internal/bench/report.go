package bench

import (
	"encoding/json"
	"fmt"
	"io"
	"text/tabwriter"
	"time"
)

// Result is one mode at one level.
type Result struct {
	Mode      string  `json:"mode"`
	Clients   int     `json:"clients"`
	Seconds   float64 `json:"seconds"`
	Committed int64   `json:"committed"`
	Pending   int64   `json:"commit_pending"` // committed, phase 2 unconfirmed when Run returned (included in committed)
	Aborted   int64   `json:"aborted"`
	InDoubt   int64   `json:"in_doubt"`
	TPS       float64 `json:"tx_per_s"`
	P50ms     float64 `json:"p50_ms"`
	P95ms     float64 `json:"p95_ms"`
	P99ms     float64 `json:"p99_ms"`
	Maxms     float64 `json:"max_ms"`
	LogFsyncs int64   `json:"log_fsyncs"`
	FsyncsTx  float64 `json:"log_fsyncs_per_tx"`
	// The shared store's decision round trips (write statements, each one
	// commit: pgstore.Stats.Batches) in the measured window, per committed
	// transaction, and the requests (commits, ends, …) each carried.
	StoreRoundTrips int64    `json:"store_round_trips,omitempty"`
	StoreRTTx       float64  `json:"store_round_trips_per_tx,omitempty"`
	StoreReqsBatch  float64  `json:"store_requests_per_round_trip,omitempty"`
	StoreRTms       float64  `json:"store_ms_per_round_trip,omitempty"` // mean time of one, sent to answered
	CPUusTx         float64  `json:"process_cpu_us_per_tx"`
	MachineCPU      float64  `json:"machine_cpu_us_per_tx,omitempty"`  // busy CPU of the whole machine (databases included)
	PGCPU           float64  `json:"postgres_cpu_us_per_tx,omitempty"` // the PostgreSQL server, when it runs on this machine
	MyCPU           float64  `json:"mysql_cpu_us_per_tx,omitempty"`    // the MySQL/MariaDB server, likewise
	MachineBusy     float64  `json:"machine_cpu_busy_pct,omitempty"`
	RatioTPS        float64  `json:"tps_ratio_to_baseline,omitempty"`
	RatioP99        float64  `json:"p99_ratio_to_baseline,omitempty"`
	Errors          []string `json:"error_samples,omitempty"`
}

// Invariants is the check at the end.
type Invariants struct {
	MoneyBefore      int64    `json:"money_before"`
	MoneyAfter       int64    `json:"money_after"`
	PGTransfers      int      `json:"pg_transfers"`
	MyTransfers      int      `json:"mysql_transfers"`
	OnlyInOne        []string `json:"only_in_one_database,omitempty"`
	AmountMismatch   []string `json:"amount_mismatch,omitempty"`
	PreparedLeft     []string `json:"prepared_branches_left,omitempty"`
	DecisionRowsLeft int      `json:"decision_rows_left"`
	OK               bool     `json:"ok"`
}

// Report is the JSON output.
type Report struct {
	Command     string    `json:"command"`
	Started     time.Time `json:"started"`
	GoVersion   string    `json:"go_version"`
	CPUs        int       `json:"cpus"`
	LoadBefore  string    `json:"load_average_before,omitempty"`
	LoadAfter   string    `json:"load_average_after,omitempty"`
	Duration    string    `json:"duration_per_level"`
	Rounds      int       `json:"rounds"`
	Warmup      string    `json:"warmup_per_level"`
	HotRows     int       `json:"hot_rows"`
	CommitDelay string    `json:"commit_delay"`
	// Store is the xa-store mode's database, password masked (empty when
	// that mode did not run).
	Store      string     `json:"store,omitempty"`
	Results    []Result   `json:"results"`
	Invariants Invariants `json:"invariants"`
}

// setRatios sets every result's ratios to the baseline of its level.
func setRatios(level []Result) {
	var base *Result
	for i := range level {
		if level[i].Mode == "baseline" {
			base = &level[i]
		}
	}
	if base == nil || base.TPS == 0 {
		return
	}
	for i := range level {
		level[i].RatioTPS = level[i].TPS / base.TPS
		if base.P99ms > 0 {
			level[i].RatioP99 = level[i].P99ms / base.P99ms
		}
	}
}

// WriteTable writes the report as a table: one row per mode and level,
// then the invariants and the error samples.
func (rep *Report) WriteTable(w io.Writer) {
	fmt.Fprintf(w, "xabridge bench: %s per mode and level in %d rounds (modes taking turns), %s warm-up, %d CPUs, hot rows %d, commit delay %s, load %s -> %s\n",
		rep.Duration, rep.Rounds, rep.Warmup, rep.CPUs, rep.HotRows, rep.CommitDelay, rep.LoadBefore, rep.LoadAfter)
	if rep.Store != "" {
		fmt.Fprintf(w, "store (xa-store): %s\n", rep.Store)
	}
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "clients\tmode\ttx/s\tx base\tp50 ms\tp95 ms\tp99 ms\tmax ms\tp99 x base\taborts\tin doubt\tfsync/tx\tstore rt/tx\tcpu µs/tx\tpg µs/tx\tmy µs/tx\tmachine µs/tx\tbusy %\t")
	for _, r := range rep.Results {
		fmt.Fprintf(tw, "%d\t%s\t%.0f\t%s\t%.2f\t%.2f\t%.2f\t%.1f\t%s\t%d\t%d\t%.3f\t%s\t%.0f\t%s\t%s\t%.0f\t%.0f\t\n",
			r.Clients, r.Mode, r.TPS, ratio(r.RatioTPS), r.P50ms, r.P95ms, r.P99ms, r.Maxms, ratio(r.RatioP99),
			r.Aborted, r.InDoubt, r.FsyncsTx, opt3(r.StoreRTTx), r.CPUusTx, opt(r.PGCPU), opt(r.MyCPU), r.MachineCPU, r.MachineBusy)
	}
	tw.Flush()
	inv := rep.Invariants
	fmt.Fprintf(w, "invariants: money %d -> %d, transfers %d in postgres / %d in mysql, %d in only one, %d prepared left, %d decision rows left: %s\n",
		inv.MoneyBefore, inv.MoneyAfter, inv.PGTransfers, inv.MyTransfers, len(inv.OnlyInOne), len(inv.PreparedLeft), inv.DecisionRowsLeft,
		verdict(inv.OK))
	for _, r := range rep.Results {
		for _, s := range r.Errors {
			fmt.Fprintf(w, "  %s at %d clients: %s\n", r.Mode, r.Clients, s)
		}
	}
}

func opt(x float64) string {
	if x == 0 {
		return "-"
	}
	return fmt.Sprintf("%.0f", x)
}

func opt3(x float64) string {
	if x == 0 {
		return "-"
	}
	return fmt.Sprintf("%.3f", x)
}

func ratio(x float64) string {
	if x == 0 {
		return "-"
	}
	return fmt.Sprintf("%.2f", x)
}

func ms(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }

func percentile(sorted []time.Duration, q float64) time.Duration {
	if len(sorted) == 0 {
		return 0
	}
	return sorted[int(float64(len(sorted)-1)*q)]
}

// WriteJSON writes the report as indented JSON.
func (rep *Report) WriteJSON(w io.Writer) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(rep)
}

func verdict(ok bool) string {
	if ok {
		return "ok: atomic"
	}
	return "FAIL: VIOLATED"
}
