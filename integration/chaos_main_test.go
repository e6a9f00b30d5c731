package integration

import (
	"bytes"
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	mysqldriver "github.com/go-sql-driver/mysql"

	"github.com/xabridge/xabridge/decisionlog"
	"github.com/xabridge/xabridge/internal/bank"
	"github.com/xabridge/xabridge/internal/chaos"
	"github.com/xabridge/xabridge/internal/crashcheck"
	"github.com/xabridge/xabridge/internal/dbproc"
	"github.com/xabridge/xabridge/internal/dbtest"
	"github.com/xabridge/xabridge/internal/dbtest/containers"
)

// The chaos tests run against one private PostgreSQL + MariaDB pair per
// test binary (started on first use, reused by every scenario, stopped at
// the end): they kill and restart servers and leave foreign prepared
// transactions about, which the shared servers must never see.

var (
	reportPath = flag.String("report", "", "write the chaos results table to this markdown file (relative paths are relative to the module root)")
	soakFlag   = flag.Duration("soak", 0, "run the random-kill soak for this long and print a summary (env XABRIDGE_SOAK; 0: a short run)")
)

const (
	chaosAccounts = 10
	chaosBalance  = 1000
)

func TestMain(m *testing.M) {
	flag.Parse()
	// Killed servers make go-sql-driver log every broken connection.
	_ = mysqldriver.SetLogger(log.New(io.Discard, "", 0))
	code := m.Run()
	if err := chaosShutdown(); err != nil {
		fmt.Fprintln(os.Stderr, "chaos: shutting down the private servers:", err)
		if code == 0 {
			code = 1
		}
	}
	// The containers of internal/dbtest and of the Docker chaos tests.
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	if err := containers.TerminateAll(ctx); err != nil {
		fmt.Fprintln(os.Stderr, "removing the test containers:", err)
		if code == 0 {
			code = 1
		}
	}
	cancel()
	if *reportPath != "" && len(results.rows) > 0 {
		if err := results.write(*reportPath); err != nil {
			fmt.Fprintln(os.Stderr, "chaos: writing the report:", err)
			if code == 0 {
				code = 1
			}
		}
	}
	os.Exit(code)
}

// chaosEnv is what every chaos scenario shares.
type chaosEnv struct {
	pair     servers // local processes (dbproc) or containers (dockerPair)
	crashapp string  // the built crash app
	admin    *bank.Bank
	foreign  *chaos.Foreign
	tmp      string
	// The HA tests' store database on pair's PostgreSQL (haStoreURL).
	storeOnce sync.Once
	storeErr  error
}

var (
	envOnce sync.Once
	env     *chaosEnv
	envErr  error
)

// getEnv starts the private servers, builds the crash app and prepares the
// foreign transactions, once per test binary.
func getEnv(t *testing.T) *chaosEnv {
	t.Helper()
	envOnce.Do(func() { env, envErr = startEnv() })
	if envErr != nil {
		t.Fatalf("chaos environment: %v", envErr)
	}
	return env
}

func startEnv() (*chaosEnv, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	root, err := dbtest.RepoRoot()
	if err != nil {
		return nil, err
	}
	e := &chaosEnv{}
	script := filepath.Join(root, "scripts", "devdb")
	// Servers of earlier test binaries that were killed (by -timeout, say)
	// before they could stop them.
	if _, err := dbproc.ReapStale(ctx, script); err != nil {
		return nil, err
	}
	pair, err := dbproc.Start(ctx, script)
	if err != nil {
		return e, err
	}
	e.pair = pair
	return e, e.setup(ctx)
}

// setup builds the crash app, opens the admin connections and prepares the
// foreign transactions on the environment's servers.
func (e *chaosEnv) setup(ctx context.Context) error {
	root, err := dbtest.RepoRoot()
	if err != nil {
		return err
	}
	if e.tmp, err = os.MkdirTemp("", "xab-chaos-"); err != nil {
		return err
	}
	e.crashapp = filepath.Join(e.tmp, "crashapp")
	build := exec.CommandContext(ctx, "go", "build", "-o", e.crashapp, "./integration/internal/crashapp")
	build.Dir = root
	if out, err := build.CombinedOutput(); err != nil {
		return fmt.Errorf("building the crash app: %v\n%s", err, out)
	}
	if e.admin, err = bank.Open(ctx, e.pair.PGURL(), e.pair.MyURL(), 4); err != nil {
		return err
	}
	// Detect local deadlocks in 100ms instead of 1s, so the contention
	// scenario spends its time on transactions, not on waiting.
	for _, q := range []string{"ALTER SYSTEM SET deadlock_timeout = '100ms'", "SELECT pg_reload_conf()"} {
		if _, err := e.admin.PGPool.Exec(ctx, q); err != nil {
			return fmt.Errorf("postgres: %s: %w", q, err)
		}
	}
	if e.foreign, err = chaos.CreateForeign(ctx, e.admin, "foreign_app"); err != nil {
		return err
	}
	return nil
}

func chaosShutdown() error {
	var errs []error
	for _, e := range []*chaosEnv{env, dockerEnv} {
		if e != nil {
			errs = append(errs, e.shutdown())
		}
	}
	return errors.Join(errs...)
}

func (e *chaosEnv) shutdown() error {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	var errs []error
	if e.foreign != nil {
		if err := e.foreign.Finish(ctx); err != nil {
			errs = append(errs, err)
		}
	}
	if e.admin != nil {
		e.admin.Close()
	}
	if e.pair != nil {
		if err := e.pair.Stop(ctx); err != nil {
			errs = append(errs, err)
		}
	}
	if e.tmp != "" {
		errs = append(errs, os.RemoveAll(e.tmp))
	}
	return errors.Join(errs...)
}

// scenario is one chaos run: its own bank tables, node id and decision log
// on the private servers.
type scenario struct {
	t      *testing.T
	env    *chaosEnv
	bank   *bank.Bank
	prefix string
	node   string
	logDir string
	total  int64
	// keeper is where the crash app and recovery keep commit decisions
	// (the log unless a test sets it).
	keeper crashcheck.Keeper
	// kept are the transfers begun by runs with a keeper: their decisions
	// are not in the log.
	kept map[string]bool
}

func (e *chaosEnv) newScenario(t *testing.T, conns int) *scenario {
	t.Helper()
	ctx := context.Background()
	s := &scenario{t: t, env: e, prefix: "xab_ch_" + suffix(), node: "ch-" + suffix(), logDir: t.TempDir()}
	b, err := bank.Open(ctx, e.pair.PGURL(), e.pair.MyURL(), conns)
	if err != nil {
		t.Fatal(err)
	}
	if err := b.SetPrefix(s.prefix); err != nil {
		t.Fatal(err)
	}
	if err := b.Setup(ctx, chaosAccounts, chaosBalance); err != nil {
		t.Fatal(err)
	}
	s.bank, s.total = b, 2*chaosAccounts*chaosBalance
	t.Cleanup(func() {
		if err := b.Drop(context.Background()); err != nil {
			t.Errorf("dropping the scenario's tables: %v", err)
		}
		b.Close()
	})
	return s
}

// childRun is one crash app process's life.
type childRun struct {
	journal  crashcheck.Journal
	crashed  bool   // it reached its crash point (a "note crash" line)
	victim   string // the transfer it was running when it killed itself
	killed   bool   // it died by SIGKILL
	exitCode int
	stderr   string
	stdout   string
}

// runChild runs the crash app on the scenario's tables and log. crash ""
// arms nothing. killAfter > 0 SIGKILLs it from outside after that long.
// extra are more crash app flags.
func (s *scenario) runChild(order crashcheck.Order, crash string, nth, workers, count int, killAfter time.Duration, seed uint64, extra ...string) childRun {
	s.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	cmd, out, errb := s.childCommand(ctx, order, crash, nth, workers, count, seed, extra...)
	if err := cmd.Start(); err != nil {
		s.t.Fatal(err)
	}
	if killAfter > 0 {
		timer := time.AfterFunc(killAfter, func() { _ = cmd.Process.Signal(syscall.SIGKILL) })
		defer timer.Stop()
	}
	return s.waitChild(ctx, cmd, out, errb)
}

// childCommand is the crash app's command for runChild (not started),
// writing its stdout and stderr to the buffers returned.
func (s *scenario) childCommand(ctx context.Context, order crashcheck.Order, crash string, nth, workers, count int, seed uint64, extra ...string) (*exec.Cmd, *bytes.Buffer, *bytes.Buffer) {
	args := []string{"-pg", s.env.pair.PGURL(), "-mysql", s.env.pair.MyURL(), "-prefix", s.prefix,
		"-log-dir", s.logDir, "-node", s.node, "-order", string(order),
		"-workers", fmt.Sprint(workers), "-count", fmt.Sprint(count), "-accounts", fmt.Sprint(chaosAccounts),
		"-seed", fmt.Sprint(seed), "-keeper", string(s.keeper)}
	cmd := exec.CommandContext(ctx, s.env.crashapp, append(args, extra...)...)
	cmd.Env = append(os.Environ(), crashcheck.EnvCrashPoint+"="+crash, crashcheck.EnvCrashNth+"="+fmt.Sprint(nth))
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	return cmd, &out, &errb
}

// waitChild waits for a crash app started from childCommand (ctx is its
// command's) and reads what it did.
func (s *scenario) waitChild(ctx context.Context, cmd *exec.Cmd, out, errb *bytes.Buffer) childRun {
	s.t.Helper()
	werr := cmd.Wait()
	var r childRun
	r.stderr = errb.String()
	if ws, ok := cmd.ProcessState.Sys().(syscall.WaitStatus); ok && ws.Signaled() && ws.Signal() == syscall.SIGKILL {
		r.killed = true
	} else if werr != nil {
		r.exitCode = cmd.ProcessState.ExitCode()
	}
	if ctx.Err() != nil {
		s.t.Fatalf("crash app did not finish in time; stderr:\n%s", r.stderr)
	}
	for _, line := range strings.Split(out.String(), "\n") {
		if f := strings.Fields(line); len(f) == 4 && f[0] == "note" && f[1] == "crash" {
			r.crashed, r.victim = true, f[3]
		}
	}
	r.stdout = out.String()
	j, err := crashcheck.ReadJournal(out)
	if err != nil {
		s.t.Fatal(err)
	}
	r.journal = j
	return r
}

// recoverAndCheck restarts a coordinator on the scenario's log, runs
// recovery until nothing of the node is in doubt, and checks every
// invariant. It fails the test on any violation and returns the result.
func (s *scenario) recoverAndCheck(j crashcheck.Journal) crashcheck.Result {
	s.t.Helper()
	return s.recoverAndCheckWith(j, false)
}

// recoverAndCheckWith is recoverAndCheck; recoveryOnly runs recovery alone
// (an operator's `xabridge recover`) instead of restarting a coordinator.
func (s *scenario) recoverAndCheckWith(j crashcheck.Journal, recoveryOnly bool) crashcheck.Result {
	s.t.Helper()
	ctx := context.Background()
	// A restart is a new process: fresh pools and resources, with nothing
	// the crashed process's adapters remembered (such as which MariaDB
	// session prepared a branch).
	fresh, err := bank.Open(ctx, s.env.pair.PGURL(), s.env.pair.MyURL(), 4)
	if err != nil {
		s.t.Fatal(err)
	}
	defer fresh.Close()
	if err := fresh.SetPrefix(s.prefix); err != nil {
		s.t.Fatal(err)
	}
	rr, err := crashcheck.RecoverAfterCrash(ctx, crashcheck.RecoverConfig{Bank: fresh, LogDir: s.logDir, Node: s.node, Timeout: 90 * time.Second,
		RecoveryOnly: recoveryOnly, Keeper: s.keeper, Logger: slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))})
	if err != nil {
		s.t.Errorf("recovery: %v", err)
	}
	if s.keeper != crashcheck.KeeperNone {
		// Their decisions were in a participant's table, not in the log
		// (recovery deletes them once their branches are done).
		if s.kept == nil {
			s.kept = map[string]bool{}
		}
		for id := range j {
			s.kept[id] = true
		}
	}
	res := s.check(j, rr.Entries, rr.Compacted)
	if rr.KeptLeft != 0 {
		res.Violations = append(res.Violations, fmt.Sprintf("%d commit decisions of node %s left in a decision table after recovery", rr.KeptLeft, s.node))
		s.t.Errorf("violation: %s", res.Violations[len(res.Violations)-1])
	}
	return res
}

func (s *scenario) check(j crashcheck.Journal, entries []decisionlog.Entry, compacted bool) crashcheck.Result {
	s.t.Helper()
	res, err := crashcheck.Check(context.Background(), s.bank, crashcheck.Expect{
		Node: s.node, Total: s.total, Journal: j, Entries: entries, LogCompacted: compacted, Kept: s.kept, Foreign: s.env.foreign,
	})
	if err != nil {
		s.t.Fatalf("invariant check: %v", err)
	}
	for _, v := range res.Violations {
		s.t.Errorf("violation: %s", v)
	}
	if res.Stranded != 0 {
		s.t.Errorf("%d prepared branches of node %s stranded after recovery", res.Stranded, s.node)
	}
	return res
}

// resultRow is one line of the reliability table.
type resultRow struct {
	Scenario, Engine                                string
	Runs, Kills, Transactions, Violations, Stranded int
}

type resultTable struct {
	mu    sync.Mutex
	rows  map[string]*resultRow
	start time.Time
}

var results = &resultTable{rows: map[string]*resultRow{}, start: time.Now()}

// add accumulates one run into the row for scenario × engine.
func (r *resultTable) add(scenario, engine string, kills, txns int, res crashcheck.Result) {
	r.addN(scenario, engine, 1, kills, txns, res)
}

// addN accumulates runs runs into the row for scenario × engine.
func (r *resultTable) addN(scenario, engine string, runs, kills, txns int, res crashcheck.Result) {
	r.mu.Lock()
	defer r.mu.Unlock()
	k := scenario + "\x00" + engine
	row := r.rows[k]
	if row == nil {
		row = &resultRow{Scenario: scenario, Engine: engine}
		r.rows[k] = row
	}
	row.Runs += runs
	row.Kills += kills
	row.Transactions += txns
	row.Violations += len(res.Violations)
	row.Stranded += res.Stranded
}

func (r *resultTable) write(path string) error {
	if !filepath.IsAbs(path) {
		root, err := dbtest.RepoRoot()
		if err != nil {
			return err
		}
		path = filepath.Join(root, path)
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	keys := make([]string, 0, len(r.rows))
	for k := range r.rows {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	var b strings.Builder
	var tot resultRow
	for _, k := range keys {
		row := r.rows[k]
		fmt.Fprintf(&b, "| %s | %s | %d | %d | %d | %d | %d |\n", row.Scenario, row.Engine, row.Runs, row.Kills, row.Transactions, row.Violations, row.Stranded)
		tot.Runs += row.Runs
		tot.Kills += row.Kills
		tot.Transactions += row.Transactions
		tot.Violations += row.Violations
		tot.Stranded += row.Stranded
	}
	fmt.Fprintf(&b, "| **total: %d scenarios** | | **%d** | **%d** | **%d** | **%d** | **%d** |\n", len(keys), tot.Runs, tot.Kills, tot.Transactions, tot.Violations, tot.Stranded)
	return writeReport(path, b.String(), time.Since(r.start))
}

// The generated part of docs/RELIABILITY.md sits between these markers; the
// prose around it is written by hand.
const (
	tableBegin = "<!-- chaos-table:begin -->"
	tableEnd   = "<!-- chaos-table:end -->"
)

// writeReport puts the table (with its header and the run's wall time)
// between the markers of the file at path, creating the file if needed.
func writeReport(path, rows string, wall time.Duration) error {
	table := tableBegin + "\n" +
		fmt.Sprintf("Generated by `go test ./integration -run 'Chaos|Model' -v -report docs/RELIABILITY.md` on %s; wall time of the run %s.\n\n",
			time.Now().UTC().Format("2006-01-02"), wall.Round(time.Second)) +
		"| scenario | engine | runs | kills | transactions | violations | stranded |\n" +
		"|---|---|---:|---:|---:|---:|---:|\n" + rows + tableEnd
	old, err := os.ReadFile(path)
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		return err
	}
	doc := string(old)
	i, j := strings.Index(doc, tableBegin), strings.Index(doc, tableEnd)
	if i < 0 || j < i {
		doc = "# Reliability\n\n" + table + "\n"
	} else {
		doc = doc[:i] + table + doc[j+len(tableEnd):]
	}
	return os.WriteFile(path, []byte(doc), 0o644)
}
