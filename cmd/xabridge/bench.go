package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net"
	"os"
	"path/filepath"
	"runtime"
	"runtime/pprof"
	"slices"
	"strconv"
	"strings"
	"sync"
	"text/tabwriter"
	"time"

	"github.com/schollz/progressbar/v3"
	"github.com/spf13/cobra"

	"github.com/xabridge/xabridge/decisionlog"
	"github.com/xabridge/xabridge/drivers"
	"github.com/xabridge/xabridge/internal/bank"
	"github.com/xabridge/xabridge/mysql"
	"github.com/xabridge/xabridge/xa"
)

// benchMode is one way of running the transfer.
type benchMode struct {
	Name  string
	About string
	// atomic: through a coordinator; async: AsyncPhase2.
	atomic, async bool
	// keeper names the participant that keeps the decision ("pg" or
	// "mysql"), or is empty for the file log.
	keeper string
}

// benchModes are all the modes, in the order they run at each level.
var benchModes = []benchMode{
	{Name: "baseline", About: "the same statements as two independent local commits (not atomic)"},
	{Name: "xa", About: "two-phase commit, file decision log with group commit", atomic: true},
	{Name: "xa-async", About: "xa, answering once the decision is durable; phase 2 in the background", atomic: true, async: true},
	{Name: "xa-dip", About: "decision in the PostgreSQL participant's own commit: it never prepares, no log fsync", atomic: true, keeper: "pg"},
	{Name: "xa-dip-async", About: "xa-dip with asynchronous phase 2", atomic: true, keeper: "pg", async: true},
	{Name: "xa-dipmy", About: "decision in the MySQL/MariaDB participant's own local commit: it runs no XA, no log fsync", atomic: true, keeper: "mysql"},
	{Name: "xa-dipmy-async", About: "xa-dipmy with asynchronous phase 2", atomic: true, keeper: "mysql", async: true},
}

func benchModeNames() []string {
	names := make([]string, len(benchModes))
	for i, m := range benchModes {
		names[i] = m.Name
	}
	return names
}

type benchOpts struct {
	pgURL, myURL string
	prefix       string
	logDir       string
	nodeID       string
	output       string
	clients      []int
	modes        []string
	duration     time.Duration
	warmup       time.Duration
	rounds       int
	hotRows      int
	commitDelay  time.Duration
	progress     bool
	cpuProfile   string
}

func newBenchCmd() *cobra.Command {
	o := &benchOpts{}
	cmd := &cobra.Command{
		Use:   "bench",
		Short: "Measure atomic transfers against two independent local commits, side by side",
		Long: `bench runs the cross-database transfer (an UPDATE and an INSERT on PostgreSQL,
the same on MySQL/MariaDB) for --duration at each concurrency level, in every
mode, interleaved: at each level the modes take turns in --rounds rounds, so
that load from elsewhere on the machine hits every mode alike.

Modes:
` + benchModesHelp() + `
Each client moves money between its own pair of accounts (--hot-rows N makes
all clients share N accounts, for contention). Per mode and level it reports
committed transactions/s, latency percentiles of committed transactions,
aborts, in-doubt outcomes, decision-log fsyncs per transaction, the CPU time
of this process per transaction (the coordinator and the client), the whole
machine's busy CPU per transaction (the databases included), and the ratio
of throughput and p99 latency to baseline at the same level.

At the end it checks the invariants (money conserved, every transfer id in
both databases or in neither, no prepared branch of the benchmark left) and
fails if one is violated. It uses its own tables (--table-prefix) and its own
coordinator node ids (NODE-MODE) and decision logs (LOG-DIR/MODE).`,
		Example: `  eval "$(scripts/devdb env)"
  xabridge bench --clients 1,8,32,128 --duration 10s
  xabridge bench --clients 32 --modes baseline,xa-dip --duration 5s -o json`,
		Args: noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := o.validate(); err != nil {
				return err
			}
			return runBench(cmd.Context(), cmd.OutOrStdout(), cmd.ErrOrStderr(), o, strings.Join(os.Args, " "))
		},
	}
	f := cmd.Flags()
	f.StringVar(&o.pgURL, "pg", envOr("XABRIDGE_PG", ""), "PostgreSQL URL, postgres://user:pass@host:port/db (env XABRIDGE_PG)")
	f.StringVar(&o.myURL, "mysql", envOr("XABRIDGE_MYSQL", ""), "MySQL/MariaDB URL, mysql://user:pass@host:port/db (env XABRIDGE_MYSQL)")
	f.StringVar(&o.prefix, "table-prefix", "xab_bench", "name prefix of the benchmark's tables (PREFIX_accounts, PREFIX_transfers), [a-z][a-z0-9_]*; they are recreated")
	f.StringVar(&o.logDir, "log-dir", ".xabridge/bench-log", "directory of the decision logs, one subdirectory per mode (put it on the disk you want to measure)")
	f.StringVar(&o.nodeID, "node-id", "bench", "prefix of the coordinator node ids (NODE-MODE must be a valid node id)")
	f.StringVarP(&o.output, "output", "o", "table", "output format: table or json")
	f.IntSliceVar(&o.clients, "clients", []int{1, 8, 32, 128}, "concurrency levels, comma separated")
	f.StringSliceVar(&o.modes, "modes", benchModeNames(), "modes to run, comma separated: "+strings.Join(benchModeNames(), ", "))
	f.DurationVar(&o.duration, "duration", 10*time.Second, "measured time per mode and level")
	f.DurationVar(&o.warmup, "warmup", 2*time.Second, "unmeasured time before each mode's first round at each level")
	f.IntVar(&o.rounds, "rounds", 5, "split each measurement into this many rounds, the modes taking turns, so that load from elsewhere hits all modes alike")
	f.IntVar(&o.hotRows, "hot-rows", 0, "if > 0, every transfer picks its accounts among the first N (contention); 0: each client has its own")
	f.DurationVar(&o.commitDelay, "commit-delay", 0, "decision log group-commit delay (decisionlog.FileLogOptions.CommitDelay)")
	f.BoolVar(&o.progress, "progress", true, "show a progress bar on stderr when it is a terminal")
	f.StringVar(&o.cpuProfile, "cpuprofile", "", "write a pprof CPU profile of the whole run to this file")
	return cmd
}

func benchModesHelp() string {
	var b strings.Builder
	width := 0
	for _, m := range benchModes {
		width = max(width, len(m.Name))
	}
	for _, m := range benchModes {
		fmt.Fprintf(&b, "  %-*s  %s\n", width, m.Name, m.About)
	}
	return b.String()
}

// benchMaxClients bounds a level: every client holds a connection on each
// database, and phase 2 in the background holds more.
const benchMaxClients = 1000

func (o *benchOpts) validate() error {
	if o.pgURL == "" || o.myURL == "" {
		return usagef("both --pg and --mysql are needed (or XABRIDGE_PG and XABRIDGE_MYSQL; scripts/devdb env prints them)")
	}
	if o.output != "table" && o.output != "json" {
		return usagef("--output must be table or json, not %q", o.output)
	}
	if len(o.clients) == 0 {
		return usagef("--clients needs at least one level")
	}
	for _, n := range o.clients {
		if n < 1 || n > benchMaxClients {
			return usagef("--clients: %d is not between 1 and %d", n, benchMaxClients)
		}
	}
	if len(o.modes) == 0 {
		return usagef("--modes needs at least one mode (%s)", strings.Join(benchModeNames(), ", "))
	}
	seen := map[string]bool{}
	for _, m := range o.modes {
		if !slices.Contains(benchModeNames(), m) {
			return usagef("--modes: unknown mode %q (known: %s)", m, strings.Join(benchModeNames(), ", "))
		}
		if seen[m] {
			return usagef("--modes: %q is given twice", m)
		}
		seen[m] = true
	}
	if o.duration <= 0 || o.warmup < 0 {
		return usagef("--duration must be > 0 and --warmup >= 0")
	}
	if o.rounds < 1 || o.duration/time.Duration(max(o.rounds, 1)) < 50*time.Millisecond {
		return usagef("--rounds must be >= 1, with --duration / --rounds at least 50ms")
	}
	if o.hotRows < 0 {
		return usagef("--hot-rows must be >= 0")
	}
	if o.commitDelay < 0 || o.commitDelay > time.Second {
		return usagef("--commit-delay must be between 0 and 1s")
	}
	for _, m := range o.selected() {
		if m.atomic {
			if err := drivers.ValidateNodeID(o.nodeID + "-" + m.Name); err != nil {
				return usagef("--node-id %q: node id %q for mode %s: %v", o.nodeID, o.nodeID+"-"+m.Name, m.Name, err)
			}
		}
	}
	var b bank.Bank
	if err := b.SetPrefix(o.prefix); err != nil {
		return usageError{fmt.Errorf("--table-prefix: %w", err)}
	}
	return nil
}

// selected returns the chosen modes in their canonical order.
func (o *benchOpts) selected() []benchMode {
	var out []benchMode
	for _, m := range benchModes {
		if slices.Contains(o.modes, m.Name) {
			out = append(out, m)
		}
	}
	return out
}

// benchResult is one mode at one level.
type benchResult struct {
	Mode        string   `json:"mode"`
	Clients     int      `json:"clients"`
	Seconds     float64  `json:"seconds"`
	Committed   int64    `json:"committed"`
	Pending     int64    `json:"commit_pending"` // committed, phase 2 unconfirmed when Run returned (included in committed)
	Aborted     int64    `json:"aborted"`
	InDoubt     int64    `json:"in_doubt"`
	TPS         float64  `json:"tx_per_s"`
	P50ms       float64  `json:"p50_ms"`
	P95ms       float64  `json:"p95_ms"`
	P99ms       float64  `json:"p99_ms"`
	Maxms       float64  `json:"max_ms"`
	LogFsyncs   int64    `json:"log_fsyncs"`
	FsyncsTx    float64  `json:"log_fsyncs_per_tx"`
	CPUusTx     float64  `json:"process_cpu_us_per_tx"`
	MachineCPU  float64  `json:"machine_cpu_us_per_tx,omitempty"`  // busy CPU of the whole machine (databases included)
	PGCPU       float64  `json:"postgres_cpu_us_per_tx,omitempty"` // the PostgreSQL server, when it runs on this machine
	MyCPU       float64  `json:"mysql_cpu_us_per_tx,omitempty"`    // the MySQL/MariaDB server, likewise
	MachineBusy float64  `json:"machine_cpu_busy_pct,omitempty"`
	RatioTPS    float64  `json:"tps_ratio_to_baseline,omitempty"`
	RatioP99    float64  `json:"p99_ratio_to_baseline,omitempty"`
	Errors      []string `json:"error_samples,omitempty"`
}

// benchInvariants is the check at the end.
type benchInvariants struct {
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

// benchReport is the JSON output.
type benchReport struct {
	Command     string          `json:"command"`
	Started     time.Time       `json:"started"`
	GoVersion   string          `json:"go_version"`
	CPUs        int             `json:"cpus"`
	LoadBefore  string          `json:"load_average_before,omitempty"`
	LoadAfter   string          `json:"load_average_after,omitempty"`
	Duration    string          `json:"duration_per_level"`
	Rounds      int             `json:"rounds"`
	Warmup      string          `json:"warmup_per_level"`
	HotRows     int             `json:"hot_rows"`
	CommitDelay string          `json:"commit_delay"`
	Results     []benchResult   `json:"results"`
	Invariants  benchInvariants `json:"invariants"`
}

// benchEnv is what a run shares across levels.
type benchEnv struct {
	o      *benchOpts
	b      *bank.Bank
	coords map[string]*xa.Coordinator // by mode
	logs   map[string]*decisionlog.FileLog
	bar    *progressbar.ProgressBar
	steps  int // finished mode×level runs, for the bar
	runID  string
	// servers are the database servers' processes, when they run here.
	servers []serverProc
}

func runBench(ctx context.Context, out, errw io.Writer, o *benchOpts, command string) (err error) {
	modes := o.selected()
	maxClients := slices.Max(o.clients)
	accounts := max(maxClients, o.hotRows)
	// Pools for the largest level, plus room for background phase 2,
	// recovery and the invariant check.
	b, err := bank.Open(ctx, o.pgURL, o.myURL, maxClients+16)
	if err != nil {
		return err
	}
	defer b.Close()
	if err := b.SetPrefix(o.prefix); err != nil {
		return usageError{err}
	}
	env := &benchEnv{o: o, b: b, coords: map[string]*xa.Coordinator{}, logs: map[string]*decisionlog.FileLog{},
		runID: fmt.Sprintf("%x", time.Now().UnixMilli()%0xffffff)}
	logger := slog.New(slog.NewTextHandler(errw, &slog.HandlerOptions{Level: slog.LevelError}))
	defer func() {
		for _, c := range env.coords {
			if cerr := c.Close(); cerr != nil && err == nil {
				err = cerr
			}
		}
		for _, l := range env.logs {
			if cerr := l.Close(); cerr != nil && err == nil {
				err = cerr
			}
		}
	}()
	for _, m := range modes {
		if !m.atomic {
			continue
		}
		l, err := decisionlog.OpenFileLog(filepath.Join(o.logDir, m.Name), decisionlog.FileLogOptions{CommitDelay: o.commitDelay})
		if err != nil {
			return err
		}
		env.logs[m.Name] = l
		cfg := xa.Config{
			NodeID:      o.nodeID + "-" + m.Name,
			Log:         l,
			Resources:   []drivers.Resource{b.PG, b.My},
			AsyncPhase2: m.async,
			Logger:      logger,
		}
		switch m.keeper {
		case "pg":
			cfg.DecisionResource = b.PG.Name()
		case "mysql":
			cfg.DecisionResource = b.My.Name()
		}
		c, err := xa.New(ctx, cfg)
		if err != nil {
			return err
		}
		env.coords[m.Name] = c
	}
	if n, err := env.preparedLeft(ctx); err != nil {
		return err
	} else if len(n) > 0 {
		return fmt.Errorf("%d prepared branch(es) of the benchmark's nodes are in doubt and may hold locks on its tables; run `xabridge recover --node-id NODE-MODE --log-dir LOG-DIR/MODE` for each", len(n))
	}
	env.servers = localServers(b, o.myURL)
	const balance = 1_000_000_000
	if err := b.Setup(ctx, accounts, balance); err != nil {
		return err
	}
	rep := &benchReport{
		Command: command, Started: time.Now().UTC(), GoVersion: runtime.Version(), CPUs: runtime.NumCPU(),
		LoadBefore: loadAverage(), Duration: o.duration.String(), Rounds: o.rounds, Warmup: o.warmup.String(), HotRows: o.hotRows,
		CommitDelay: o.commitDelay.String(),
	}
	rep.Invariants.MoneyBefore = 2 * int64(accounts) * balance
	if o.cpuProfile != "" {
		stop, err := startCPUProfile(o.cpuProfile)
		if err != nil {
			return err
		}
		defer stop()
	}

	total := len(o.clients) * len(modes) * o.rounds
	if o.progress && isTerminal(errw) {
		env.bar = progressbar.NewOptions(total*1000,
			progressbar.OptionSetWriter(errw),
			progressbar.OptionSetWidth(30),
			progressbar.OptionSetPredictTime(true),
			progressbar.OptionSetElapsedTime(true),
			progressbar.OptionThrottle(200*time.Millisecond),
			progressbar.OptionClearOnFinish(),
		)
	}
	for _, n := range o.clients {
		tallies := make([]benchTally, len(modes))
		for round := range o.rounds {
			for i, m := range modes {
				if env.bar != nil {
					env.bar.Describe(fmt.Sprintf("%3d clients %-14s round %d/%d", n, m.Name, round+1, o.rounds))
				}
				warm := min(o.warmup, benchRewarm)
				if round == 0 {
					warm = o.warmup
				}
				if err := env.runSegment(ctx, m, n, warm, o.duration/time.Duration(o.rounds), &tallies[i]); err != nil {
					return err
				}
				env.steps++
			}
		}
		level := make([]benchResult, len(modes))
		for i, m := range modes {
			level[i] = tallies[i].result(m.Name, n)
		}
		benchRatios(level)
		rep.Results = append(rep.Results, level...)
	}
	if env.bar != nil {
		_ = env.bar.Finish()
		fmt.Fprintln(errw)
	}
	rep.LoadAfter = loadAverage()
	if err := env.checkInvariants(ctx, &rep.Invariants); err != nil {
		return err
	}
	if o.output == "json" {
		if err := writeJSON(out, rep); err != nil {
			return err
		}
	} else {
		writeBenchTable(out, rep)
	}
	if !rep.Invariants.OK {
		return errors.New("bench: invariants violated (see the report): the benchmark lost atomicity")
	}
	return nil
}

// benchRatios sets every result's ratios to the baseline of its level.
func benchRatios(level []benchResult) {
	var base *benchResult
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

// benchWorker is one client's tally.
type benchWorker struct {
	lat                                  []time.Duration
	committed, pending, aborted, inDoubt int64
	errs                                 []string
}

// benchRewarm is the unmeasured ramp-up of every round after a mode's
// first at a level.
const benchRewarm = 300 * time.Millisecond

// benchTally adds up one mode's rounds at one level.
type benchTally struct {
	lat                                  []time.Duration
	committed, pending, aborted, inDoubt int64
	errs                                 []string
	measured, cpu                        time.Duration
	machBusy, machTotal                  time.Duration
	machOK                               bool
	fsyncs                               int64
	servers                              map[string]time.Duration
}

func (t *benchTally) result(mode string, clients int) benchResult {
	res := benchResult{Mode: mode, Clients: clients, Committed: t.committed, Pending: t.pending,
		Aborted: t.aborted, InDoubt: t.inDoubt, Errors: t.errs, LogFsyncs: t.fsyncs}
	slices.Sort(t.lat)
	res.Seconds = t.measured.Seconds()
	if res.Seconds > 0 {
		res.TPS = float64(t.committed) / res.Seconds
	}
	res.P50ms = ms(benchPercentile(t.lat, 0.50))
	res.P95ms = ms(benchPercentile(t.lat, 0.95))
	res.P99ms = ms(benchPercentile(t.lat, 0.99))
	if len(t.lat) > 0 {
		res.Maxms = ms(t.lat[len(t.lat)-1])
	}
	if t.committed > 0 {
		tx := float64(t.committed)
		res.FsyncsTx = float64(t.fsyncs) / tx
		res.CPUusTx = float64(t.cpu.Microseconds()) / tx
		if t.machOK {
			res.MachineCPU = float64(t.machBusy.Microseconds()) / tx
		}
		res.PGCPU = float64(t.servers["postgres"].Microseconds()) / tx
		res.MyCPU = float64(t.servers["mysql"].Microseconds()) / tx
	}
	if t.machOK && t.machTotal > 0 {
		res.MachineBusy = 100 * float64(t.machBusy) / float64(t.machTotal)
	}
	return res
}

// runSegment runs mode m with n clients for warm-up plus dur, adding the
// measured window to t.
func (e *benchEnv) runSegment(ctx context.Context, m benchMode, n int, warmup, dur time.Duration, t *benchTally) error {
	coord := e.coords[m.Name]
	t0 := time.Now()
	t1 := t0.Add(warmup)
	t2 := t1.Add(dur)
	workers := make([]benchWorker, n)
	var wg sync.WaitGroup
	for c := range n {
		wg.Go(func() {
			w := &workers[c]
			rng := rand.New(rand.NewPCG(uint64(t0.UnixNano()), uint64(c)))
			for seq := 0; ctx.Err() == nil; seq++ {
				start := time.Now()
				if !start.Before(t2) {
					return
				}
				tr := e.transfer(c, seq, rng)
				var err error
				if m.atomic {
					_, err = e.b.Do(ctx, coord, tr)
				} else {
					id := fmt.Sprintf("bl-%s-%d-%d-%d-%d", e.runID, n, c, t0.UnixMilli()%1e6, seq)
					err = e.b.DoBaseline(ctx, id, tr)
				}
				end := time.Now()
				if start.Before(t1) || end.After(t2) {
					continue // warm-up, or straddling the end of the window
				}
				switch {
				case err == nil:
					w.committed++
					w.lat = append(w.lat, end.Sub(start))
				case errors.Is(err, xa.ErrCommitPending):
					w.committed++
					w.pending++
					w.lat = append(w.lat, end.Sub(start))
				case errors.Is(err, xa.ErrOutcomeUnknown):
					w.inDoubt++
					w.sample(err)
				default:
					w.aborted++
					w.sample(err)
				}
			}
		})
	}

	// The measured window, by the clock: snapshots at its edges.
	e.waitUntil(ctx, t0, t1, t2)
	cpu1, mach1, srv1 := processCPU(), machineCPU(), serversCPU(e.servers)
	var log1 decisionlog.FileLogStats
	if l := e.logs[m.Name]; l != nil {
		log1 = l.Stats()
	}
	e.waitUntil(ctx, t0, t2, t2)
	cpu2, mach2, srv2 := processCPU(), machineCPU(), serversCPU(e.servers)
	var log2 decisionlog.FileLogStats
	if l := e.logs[m.Name]; l != nil {
		log2 = l.Stats()
	}
	wg.Wait()
	if err := ctx.Err(); err != nil {
		return err
	}
	// Background phase 2 (async modes) must not spill into the next run.
	if coord != nil {
		if err := waitQuiet(ctx, coord, time.Minute); err != nil {
			return fmt.Errorf("mode %s, %d clients: %w", m.Name, n, err)
		}
	}
	for i := range workers {
		w := &workers[i]
		t.lat = append(t.lat, w.lat...)
		t.committed += w.committed
		t.pending += w.pending
		t.aborted += w.aborted
		t.inDoubt += w.inDoubt
		for _, s := range w.errs {
			if len(t.errs) < 5 && !slices.Contains(t.errs, s) {
				t.errs = append(t.errs, s)
			}
		}
	}
	t.measured += dur
	t.cpu += cpu2 - cpu1
	for name, c := range srv2 {
		if t.servers == nil {
			t.servers = map[string]time.Duration{}
		}
		t.servers[name] += c - srv1[name]
	}
	t.fsyncs += log2.Syncs - log1.Syncs
	if mach1.ok && mach2.ok {
		t.machOK = true
		t.machBusy += mach2.busy - mach1.busy
		t.machTotal += mach2.total - mach1.total
	}
	return nil
}

func (w *benchWorker) sample(err error) {
	if len(w.errs) < 3 {
		s := err.Error()
		if !slices.Contains(w.errs, s) {
			w.errs = append(w.errs, s)
		}
	}
}

// transfer picks client c's accounts: its own pair, or random hot ones. The
// amount alternates in sign so balances stay near where they started.
func (e *benchEnv) transfer(c, seq int, rng *rand.Rand) bank.Transfer {
	pg, my := int64(c+1), int64(c+1)
	if e.o.hotRows > 0 {
		pg, my = rng.Int64N(int64(e.o.hotRows))+1, rng.Int64N(int64(e.o.hotRows))+1
	}
	amt := int64(seq%7 + 1)
	if seq%2 == 1 {
		amt = -amt
	}
	return bank.Transfer{PGAccount: pg, MyAccount: my, Amount: amt}
}

// waitUntil sleeps until t (the edge of the window), moving the progress bar
// from start towards end meanwhile.
func (e *benchEnv) waitUntil(ctx context.Context, start, t, end time.Time) {
	tick := time.NewTicker(250 * time.Millisecond)
	defer tick.Stop()
	timer := time.NewTimer(time.Until(t))
	defer timer.Stop()
	for {
		if e.bar != nil {
			frac := float64(time.Since(start)) / float64(end.Sub(start))
			_ = e.bar.Set(e.steps*1000 + int(min(frac, 1)*999))
		}
		select {
		case <-ctx.Done():
			return
		case <-timer.C:
			return
		case <-tick.C:
		}
	}
}

// waitQuiet waits until the coordinator has no transaction in flight
// (background phase 2 included), polling.
func waitQuiet(ctx context.Context, c *xa.Coordinator, limit time.Duration) error {
	deadline := time.Now().Add(limit)
	for c.InFlight() > 0 {
		if time.Now().After(deadline) {
			return fmt.Errorf("%d transactions still in phase 2 after %s", c.InFlight(), limit)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(5 * time.Millisecond):
		}
	}
	return nil
}

// preparedLeft lists prepared branches of the benchmark's nodes.
func (e *benchEnv) preparedLeft(ctx context.Context) ([]string, error) {
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
				if p.XID.Global.Node() == e.o.nodeID+"-"+m {
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
func (e *benchEnv) checkInvariants(ctx context.Context, inv *benchInvariants) error {
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
	for _, keeper := range []decisionlog.Keeper{e.b.PG, e.b.My} {
		kept, err := keeper.ListDecisions(ctx)
		if err != nil {
			return err
		}
		for _, k := range kept {
			if strings.HasPrefix(k.GTRID.Node(), e.o.nodeID+"-") {
				inv.DecisionRowsLeft++
			}
		}
	}
	inv.OK = inv.MoneyAfter == inv.MoneyBefore && st.NetPG == st.NetMy && st.Violations() == 0 && len(left) == 0
	return nil
}

func writeBenchTable(w io.Writer, rep *benchReport) {
	fmt.Fprintf(w, "xabridge bench: %s per mode and level in %d rounds (modes taking turns), %s warm-up, %d CPUs, hot rows %d, commit delay %s, load %s -> %s\n",
		rep.Duration, rep.Rounds, rep.Warmup, rep.CPUs, rep.HotRows, rep.CommitDelay, rep.LoadBefore, rep.LoadAfter)
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "clients\tmode\ttx/s\tx base\tp50 ms\tp95 ms\tp99 ms\tmax ms\tp99 x base\taborts\tin doubt\tfsync/tx\tcpu µs/tx\tpg µs/tx\tmy µs/tx\tmachine µs/tx\tbusy %\t")
	for _, r := range rep.Results {
		fmt.Fprintf(tw, "%d\t%s\t%.0f\t%s\t%.2f\t%.2f\t%.2f\t%.1f\t%s\t%d\t%d\t%.3f\t%.0f\t%s\t%s\t%.0f\t%.0f\t\n",
			r.Clients, r.Mode, r.TPS, ratio(r.RatioTPS), r.P50ms, r.P95ms, r.P99ms, r.Maxms, ratio(r.RatioP99),
			r.Aborted, r.InDoubt, r.FsyncsTx, r.CPUusTx, opt(r.PGCPU), opt(r.MyCPU), r.MachineCPU, r.MachineBusy)
	}
	tw.Flush()
	inv := rep.Invariants
	fmt.Fprintf(w, "invariants: money %d -> %d, transfers %d in postgres / %d in mysql, %d in only one, %d prepared left, %d decision rows left: %s\n",
		inv.MoneyBefore, inv.MoneyAfter, inv.PGTransfers, inv.MyTransfers, len(inv.OnlyInOne), len(inv.PreparedLeft), inv.DecisionRowsLeft,
		mark(inv.OK, "atomic", "VIOLATED"))
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

func ratio(x float64) string {
	if x == 0 {
		return "-"
	}
	return fmt.Sprintf("%.2f", x)
}

func ms(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }

func benchPercentile(sorted []time.Duration, q float64) time.Duration {
	if len(sorted) == 0 {
		return 0
	}
	return sorted[int(float64(len(sorted)-1)*q)]
}

// startCPUProfile starts a pprof CPU profile written to path; the returned
// function stops it.
func startCPUProfile(path string) (func(), error) {
	f, err := os.Create(path)
	if err != nil {
		return nil, fmt.Errorf("--cpuprofile: %w", err)
	}
	if err := pprof.StartCPUProfile(f); err != nil {
		f.Close()
		return nil, fmt.Errorf("--cpuprofile: %w", err)
	}
	return func() {
		pprof.StopCPUProfile()
		f.Close()
	}, nil
}

// localServers finds the database servers' processes when they listen on
// this machine's loopback, to measure their CPU time.
func localServers(b *bank.Bank, myURL string) []serverProc {
	var out []serverProc
	if cc := b.PGPool.Config().ConnConfig; isLoopback(cc.Host) {
		if p, ok := findServer("postgres", int(cc.Port)); ok {
			out = append(out, p)
		}
	}
	if mc, err := mysql.ParseURL(myURL); err == nil && mc.Net == "tcp" {
		host, port, err := net.SplitHostPort(mc.Addr)
		if n, perr := strconv.Atoi(port); err == nil && perr == nil && isLoopback(host) {
			if p, ok := findServer("mysql", n); ok {
				out = append(out, p)
			}
		}
	}
	return out
}

func isLoopback(host string) bool {
	if host == "localhost" {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}

// loadAverage returns /proc/loadavg's three averages, or "" where there is
// none.
func loadAverage() string {
	data, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return ""
	}
	f := strings.Fields(string(data))
	if len(f) < 3 {
		return ""
	}
	return strings.Join(f[:3], " ")
}
