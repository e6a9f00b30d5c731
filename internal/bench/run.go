package bench

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/schollz/progressbar/v3"

	"github.com/xabridge/xabridge/decisionlog"
	"github.com/xabridge/xabridge/decisionlog/pgstore"
	"github.com/xabridge/xabridge/drivers"
	"github.com/xabridge/xabridge/internal/bank"
	"github.com/xabridge/xabridge/internal/redact"
	"github.com/xabridge/xabridge/xa"
)

// runner is what a run shares across levels.
type runner struct {
	o      *Options
	b      *bank.Bank
	coords map[string]*xa.Coordinator // by mode
	logs   map[string]*decisionlog.FileLog
	stores map[string]*pgstore.Store // by mode, for the store modes
	// storePool is the connection to the xa-store mode's database (the
	// xa-store-own mode uses the participant's pool instead).
	storePool *pgxpool.Pool
	bar       *progressbar.ProgressBar
	steps     int // finished mode×level runs, for the bar
	runID     string
	// servers are the database servers' processes, when they run here.
	servers []serverProc
}

// ErrInvariants is returned, with the report, when the check after the
// run found money lost or a transfer in one database only.
var ErrInvariants = errors.New("bench: invariants violated (see the report): the benchmark lost atomicity")

// Run runs the benchmark: every selected mode at every level, then the
// invariant check. Progress and the coordinators' errors go to errw. The
// report is returned whenever the measurement finished, also with
// ErrInvariants.
func Run(ctx context.Context, errw io.Writer, o Options) (rep *Report, err error) {
	if err := o.Validate(); err != nil {
		return nil, err
	}
	modes := o.selected()
	maxClients := slices.Max(o.Clients)
	accounts := max(maxClients, o.HotRows)
	// Pools for the largest level, plus room for background phase 2,
	// recovery and the invariant check.
	b, err := bank.Open(ctx, o.PGURL, o.MyURL, maxClients+16)
	if err != nil {
		return nil, err
	}
	defer b.Close()
	if err := b.SetPrefix(o.Prefix); err != nil {
		return nil, err
	}
	env := &runner{o: &o, b: b, coords: map[string]*xa.Coordinator{}, logs: map[string]*decisionlog.FileLog{},
		stores: map[string]*pgstore.Store{},
		runID:  fmt.Sprintf("%x", time.Now().UnixMilli()%0xffffff)}
	defer func() {
		if cerr := env.close(); cerr != nil && err == nil {
			err = cerr
		}
	}()
	logger := slog.New(slog.NewTextHandler(errw, &slog.HandlerOptions{Level: slog.LevelError}))
	if err := env.startCoordinators(ctx, modes, logger); err != nil {
		return nil, err
	}
	if n, err := env.preparedLeft(ctx); err != nil {
		return nil, err
	} else if len(n) > 0 {
		return nil, fmt.Errorf("%d prepared branch(es) of the benchmark's nodes are in doubt and may hold locks on its tables; run `xabridge recover --node-id NODE-MODE --log-dir LOG-DIR/MODE` for each (for the store modes, with the store instead of --log-dir)", len(n))
	}
	env.servers = localServers(b, o.MyURL)
	const balance = 1_000_000_000
	if err := b.Setup(ctx, accounts, balance); err != nil {
		return nil, err
	}
	// Several bench processes measured together (scripts/bench-processes)
	// start their first warm-up at one instant, whatever their setup took.
	if !o.StartAt.IsZero() {
		t := time.NewTimer(time.Until(o.StartAt))
		select {
		case <-ctx.Done():
			t.Stop()
			return nil, ctx.Err()
		case <-t.C:
		}
		if late := time.Since(o.StartAt); late > 100*time.Millisecond {
			return nil, fmt.Errorf("--start-at %s: the setup ended %s after it; give more time", o.StartAt.Format(time.RFC3339Nano), late.Round(time.Millisecond))
		}
	}
	rep = newReport(&o)
	rep.Invariants.MoneyBefore = 2 * int64(accounts) * balance
	if o.CPUProfile != "" {
		stop, err := startCPUProfile(o.CPUProfile)
		if err != nil {
			return nil, err
		}
		defer stop()
	}
	if o.Progress {
		env.bar = progressbar.NewOptions(len(o.Clients)*len(modes)*o.Rounds*1000,
			progressbar.OptionSetWriter(errw),
			progressbar.OptionSetWidth(30),
			progressbar.OptionSetPredictTime(true),
			progressbar.OptionSetElapsedTime(true),
			progressbar.OptionThrottle(200*time.Millisecond),
			progressbar.OptionClearOnFinish(),
		)
	}
	for _, n := range o.Clients {
		level, err := env.level(ctx, modes, n)
		if err != nil {
			return nil, err
		}
		rep.Results = append(rep.Results, level...)
	}
	if env.bar != nil {
		_ = env.bar.Finish()
		fmt.Fprintln(errw)
	}
	rep.LoadAfter = loadAverage()
	if err := env.checkInvariants(ctx, &rep.Invariants); err != nil {
		return nil, err
	}
	if !rep.Invariants.OK {
		return rep, ErrInvariants
	}
	return rep, nil
}

// newReport starts the report of a run: its settings, and its command
// line with every password masked.
func newReport(o *Options) *Report {
	var store string
	if o.needsStore(storeSeparate) {
		if u, _, err := o.storeURL(); err == nil {
			store = redact.URL(u)
		}
	}
	return &Report{Store: store,
		Command: strings.Join(redact.Args(o.Command), " "), Started: time.Now().UTC(), GoVersion: runtime.Version(), CPUs: runtime.NumCPU(),
		LoadBefore: loadAverage(), Duration: o.Duration.String(), Rounds: o.Rounds, Warmup: o.Warmup.String(), HotRows: o.HotRows,
		CommitDelay: o.CommitDelay.String(),
	}
}

// startCoordinators opens a decision log (a file log, or the shared store)
// and starts a coordinator for every atomic mode.
func (e *runner) startCoordinators(ctx context.Context, modes []Mode, logger *slog.Logger) error {
	for _, m := range modes {
		if !m.atomic {
			continue
		}
		node := e.o.NodeID + "-" + m.Name
		var log decisionlog.Log
		switch m.store {
		case "":
			l, err := decisionlog.OpenFileLog(filepath.Join(e.o.LogDir, m.Name), decisionlog.FileLogOptions{CommitDelay: e.o.CommitDelay})
			if err != nil {
				return err
			}
			e.logs[m.Name], log = l, l
		case storeSeparate, storeOwn:
			pool := e.b.PGPool
			if m.store == storeSeparate {
				if e.storePool == nil {
					p, err := openStorePool(ctx, e.b.PGPool, e.o)
					if err != nil {
						return err
					}
					e.storePool = p
				}
				pool = e.storePool
			}
			st, err := openStore(ctx, pool, node, e.o.CommitDelay)
			if err != nil {
				return fmt.Errorf("mode %s: %w", m.Name, err)
			}
			e.stores[m.Name], log = st, st
		}
		cfg := xa.Config{
			NodeID:      node,
			Log:         log,
			Resources:   []drivers.Resource{e.b.PG, e.b.My},
			AsyncPhase2: m.async,
			Logger:      logger,
		}
		switch m.keeper {
		case "pg":
			cfg.DecisionResource = e.b.PG.Name()
		case "mysql":
			cfg.DecisionResource = e.b.My.Name()
		}
		c, err := xa.New(ctx, cfg)
		if err != nil {
			return err
		}
		e.coords[m.Name] = c
	}
	return nil
}

// close stops the coordinators, then closes their logs.
func (e *runner) close() error {
	var errs []error
	for _, c := range e.coords {
		errs = append(errs, c.Close())
	}
	for _, l := range e.logs {
		errs = append(errs, l.Close())
	}
	for _, st := range e.stores {
		errs = append(errs, st.Close())
	}
	if e.storePool != nil {
		e.storePool.Close()
	}
	return errors.Join(errs...)
}

// level runs every mode at n clients, the modes taking turns in rounds,
// and returns their results with the ratios to baseline.
func (e *runner) level(ctx context.Context, modes []Mode, n int) ([]Result, error) {
	o := e.o
	tallies := make([]tally, len(modes))
	for round := range o.Rounds {
		for i, m := range modes {
			if e.bar != nil {
				e.bar.Describe(fmt.Sprintf("%3d clients %-14s round %d/%d", n, m.Name, round+1, o.Rounds))
			}
			warm := min(o.Warmup, rewarm)
			if round == 0 {
				warm = o.Warmup
			}
			if err := e.runSegment(ctx, m, n, warm, o.Duration/time.Duration(o.Rounds), &tallies[i]); err != nil {
				return nil, err
			}
			e.steps++
		}
	}
	level := make([]Result, len(modes))
	for i, m := range modes {
		level[i] = tallies[i].result(m.Name, n)
	}
	setRatios(level)
	return level, nil
}

// runSegment runs mode m with n clients for warm-up plus dur, adding the
// measured window to t.
func (e *runner) runSegment(ctx context.Context, m Mode, n int, warmup, dur time.Duration, t *tally) error {
	coord := e.coords[m.Name]
	t0 := time.Now()
	t1 := t0.Add(warmup)
	t2 := t1.Add(dur)
	workers := make([]worker, n)
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
	var st1 pgstore.Stats
	if st := e.stores[m.Name]; st != nil {
		st1 = st.Stats()
	}
	e.waitUntil(ctx, t0, t2, t2)
	cpu2, mach2, srv2 := processCPU(), machineCPU(), serversCPU(e.servers)
	var log2 decisionlog.FileLogStats
	if l := e.logs[m.Name]; l != nil {
		log2 = l.Stats()
	}
	var st2 pgstore.Stats
	if st := e.stores[m.Name]; st != nil {
		st2 = st.Stats()
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
	t.storeBatches += st2.Batches - st1.Batches
	t.storeRequests += st2.Requests - st1.Requests
	t.storeTime += st2.BatchTime - st1.BatchTime
	if mach1.ok && mach2.ok {
		t.machOK = true
		t.machBusy += mach2.busy - mach1.busy
		t.machTotal += mach2.total - mach1.total
	}
	return nil
}

func (w *worker) sample(err error) {
	if len(w.errs) < 3 {
		s := err.Error()
		if !slices.Contains(w.errs, s) {
			w.errs = append(w.errs, s)
		}
	}
}

// transfer picks client c's accounts: its own pair, or random hot ones. The
// amount alternates in sign so balances stay near where they started.
func (e *runner) transfer(c, seq int, rng *rand.Rand) bank.Transfer {
	pg, my := int64(c+1), int64(c+1)
	if e.o.HotRows > 0 {
		pg, my = rng.Int64N(int64(e.o.HotRows))+1, rng.Int64N(int64(e.o.HotRows))+1
	}
	amt := int64(seq%7 + 1)
	if seq%2 == 1 {
		amt = -amt
	}
	return bank.Transfer{PGAccount: pg, MyAccount: my, Amount: amt}
}

// waitUntil sleeps until t (the edge of the window), moving the progress bar
// from start towards end meanwhile.
func (e *runner) waitUntil(ctx context.Context, start, t, end time.Time) {
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
