package integration

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net/url"
	"os"
	"os/exec"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/xabridge/xabridge/decisionlog"
	"github.com/xabridge/xabridge/decisionlog/pgstore"
	"github.com/xabridge/xabridge/drivers"
	"github.com/xabridge/xabridge/internal/crashcheck"
	"github.com/xabridge/xabridge/internal/dbproc"
	"github.com/xabridge/xabridge/internal/startup"
)

// The high-availability tests run several crash app processes as replicas
// on one shared decision store (package replica on decisionlog/pgstore),
// each with its own node id, and kill, pause, partition or restart them.
// The store is a database of its own (haStoreDB) on the chaos servers'
// PostgreSQL, each test in a schema of its own; each test has its own bank
// tables. Leases are short, so that takeovers happen in seconds.
const (
	haStoreDB = "xab_store"
	haTTL     = 2 * time.Second
	haEvery   = time.Second // replica.Config.RecoverEvery (TTL/2)
	// haSettle is the replica's default two-scan wait (recovery Settle).
	haSettle = time.Second
)

// haStoreURL returns the URL of the store's database on e's PostgreSQL,
// creating the database once per environment (the local servers' and the
// Docker one's).
func (e *chaosEnv) haStoreURL(t *testing.T) string {
	t.Helper()
	u, err := url.Parse(e.pair.PGURL())
	if err != nil {
		t.Fatal(err)
	}
	e.storeOnce.Do(func() {
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		var exists bool
		if e.storeErr = e.admin.PGPool.QueryRow(ctx, "SELECT EXISTS (SELECT FROM pg_database WHERE datname = $1)", haStoreDB).Scan(&exists); e.storeErr != nil || exists {
			return
		}
		_, e.storeErr = e.admin.PGPool.Exec(ctx, "CREATE DATABASE "+haStoreDB)
	})
	if e.storeErr != nil {
		t.Fatalf("creating the store database: %v", e.storeErr)
	}
	u.Path = "/" + haStoreDB
	return u.String()
}

// haCluster is one HA test: a scenario (bank tables), a store schema, and
// the replica processes started on them.
type haCluster struct {
	t        *testing.T
	e        *chaosEnv
	s        *scenario
	storeURL string
	schema   string
	pool     *pgxpool.Pool // the test's own connection to the store

	mu    sync.Mutex
	procs []*haProc
	seed  uint64
	// others are nodes run outside procs (coordinator containers), for
	// abandon.
	others []string
}

func (e *chaosEnv) newHACluster(t *testing.T) *haCluster {
	t.Helper()
	return e.haClusterOn(t, e.newScenario(t, 4))
}

// haClusterOn is newHACluster on an existing scenario's tables.
func (e *chaosEnv) haClusterOn(t *testing.T, s *scenario) *haCluster {
	t.Helper()
	c := &haCluster{t: t, e: e, s: s, storeURL: e.haStoreURL(t), schema: "ha_" + suffix()}
	pool, err := pgxpool.New(context.Background(), c.storeURL)
	if err != nil {
		t.Fatal(err)
	}
	c.pool = pool
	t.Cleanup(func() {
		// Every process is gone by now (their cleanups ran first).
		if t.Failed() {
			c.abandon()
		}
		if _, err := pool.Exec(context.Background(), "DROP SCHEMA IF EXISTS "+c.schema+" CASCADE"); err != nil {
			t.Errorf("dropping the store schema: %v", err)
		}
		pool.Close()
	})
	return c
}

// abandon rolls back every prepared branch of the cluster's nodes, so that
// a failed test's tables can be dropped (their locks would block it
// forever). Only after a failure: the tables are dropped, whatever the
// decisions said.
func (c *haCluster) abandon() {
	c.mu.Lock()
	nodes := map[string]bool{}
	for _, p := range c.procs {
		nodes[p.node] = true
	}
	for _, n := range c.others {
		nodes[n] = true
	}
	c.mu.Unlock()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	for ctx.Err() == nil {
		left := 0
		for _, r := range []drivers.Resource{c.s.bank.PG, c.s.bank.My} {
			ps, err := r.Recover(ctx)
			if err != nil {
				left++
				continue
			}
			for _, p := range ps {
				if p.Ours && nodes[p.XID.Global.Node()] {
					if err := r.RollbackPrepared(ctx, p.XID); err != nil {
						left++
					}
				}
			}
		}
		if left == 0 {
			return
		}
		time.Sleep(200 * time.Millisecond) // MariaDB: the dead session's branch detaches late
	}
	c.t.Logf("cleanup: branches of %v still prepared after 30s", nodes)
}

// haProc is one replica process.
type haProc struct {
	node    string
	keeper  crashcheck.Keeper
	cmd     *exec.Cmd
	out     *syncBuf
	errb    *syncBuf
	done    chan struct{} // closed when it exited
	endedAt time.Time     // set before done is closed
}

// syncBuf is a bytes.Buffer written by a process and read by the test.
type syncBuf struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuf) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuf) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// haStart is how a replica process is started.
type haStart struct {
	crash    string // crash point, "" for none
	nth      int
	pause    bool   // the crash point stops the process (SIGSTOP) instead of killing it
	workers  int    // default 2
	storeURL string // default the cluster's (a proxy's, to cut it off)
	// keeper keeps the commit decisions in a participant
	// (xa.Config.DecisionResource) instead of the store.
	keeper crashcheck.Keeper
}

// start starts a replica process for node, running transfers until it is
// stopped (or killed at its crash point).
func (c *haCluster) start(node string, o haStart) *haProc {
	c.t.Helper()
	if o.workers == 0 {
		o.workers = 2
	}
	if o.storeURL == "" {
		o.storeURL = c.storeURL
	}
	c.mu.Lock()
	c.seed++
	seed := c.seed
	c.mu.Unlock()
	cmd := exec.Command(c.e.crashapp,
		"-pg", c.e.pair.PGURL(), "-mysql", c.e.pair.MyURL(), "-prefix", c.s.prefix,
		"-store", o.storeURL, "-store-schema", c.schema, "-lease-ttl", haTTL.String(), "-recover-every", haEvery.String(),
		"-node", node, "-order", string(crashcheck.Mixed), "-workers", fmt.Sprint(o.workers), "-count", "0",
		"-accounts", fmt.Sprint(chaosAccounts), "-seed", fmt.Sprint(seed), "-keeper", string(o.keeper))
	cmd.Env = append(os.Environ(), crashcheck.EnvCrashPoint+"="+o.crash, crashcheck.EnvCrashNth+"="+fmt.Sprint(max(o.nth, 1)))
	if o.pause {
		cmd.Env = append(cmd.Env, crashcheck.EnvCrashAction+"=stop")
	}
	p := &haProc{node: node, keeper: o.keeper, cmd: cmd, out: &syncBuf{}, errb: &syncBuf{}, done: make(chan struct{})}
	cmd.Stdout, cmd.Stderr = p.out, p.errb
	if err := cmd.Start(); err != nil {
		c.t.Fatal(err)
	}
	go func() {
		_ = cmd.Wait()
		p.endedAt = time.Now()
		close(p.done)
	}()
	c.mu.Lock()
	c.procs = append(c.procs, p)
	c.mu.Unlock()
	c.t.Cleanup(func() {
		if !p.exited() {
			_ = p.cmd.Process.Signal(syscall.SIGCONT)
			_ = p.cmd.Process.Kill()
			<-p.done
		}
	})
	return p
}

func (p *haProc) exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// killedBySignal reports whether the exited process died of SIGKILL.
func (p *haProc) killed() bool {
	ws, ok := p.cmd.ProcessState.Sys().(syscall.WaitStatus)
	return ok && ws.Signaled() && ws.Signal() == syscall.SIGKILL
}

// wait waits for the process to exit.
func (p *haProc) wait(t *testing.T, timeout time.Duration) {
	t.Helper()
	select {
	case <-p.done:
	case <-time.After(timeout):
		t.Fatalf("replica %s (pid %d) did not exit within %s; stderr:\n%s", p.node, p.cmd.Process.Pid, timeout, p.errb)
	}
}

// ready waits until the process holds its lease and returns its epoch.
func (p *haProc) ready(t *testing.T) int64 {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		for _, line := range strings.Split(p.out.String(), "\n") {
			var node string
			var epoch int64
			if n, _ := fmt.Sscanf(line, "note ready %s %d", &node, &epoch); n == 2 {
				return epoch
			}
		}
		if p.exited() {
			t.Fatalf("replica %s exited before it was ready (status %v); stderr:\n%s", p.node, p.cmd.ProcessState, p.errb)
		}
		if time.Now().After(deadline) {
			t.Fatalf("replica %s not ready after 30s; stderr:\n%s", p.node, p.errb)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// stop stops the process cleanly (SIGTERM: the transfers in flight finish,
// the lease is released) and checks that it exited with status 0.
func (p *haProc) stop(t *testing.T) {
	t.Helper()
	if err := p.cmd.Process.Signal(syscall.SIGTERM); err != nil && !p.exited() {
		t.Fatal(err)
	}
	p.wait(t, 30*time.Second)
	if code := p.cmd.ProcessState.ExitCode(); code != 0 {
		t.Errorf("replica %s stopped with SIGTERM exited with status %d (want 0); stderr:\n%s", p.node, code, p.errb)
	}
}

func (p *haProc) signal(t *testing.T, sig syscall.Signal) {
	t.Helper()
	if err := p.cmd.Process.Signal(sig); err != nil {
		t.Fatalf("signal %v to replica %s: %v", sig, p.node, err)
	}
}

// journal is what the process's callers were told so far.
func (p *haProc) journal(t *testing.T) crashcheck.Journal {
	t.Helper()
	j, err := crashcheck.ReadJournal(strings.NewReader(p.out.String()))
	if err != nil {
		t.Fatalf("replica %s: %v", p.node, err)
	}
	return j
}

// committed counts the transfers the process reported committed.
func (p *haProc) committed(t *testing.T) int {
	return p.journal(t).Count()[crashcheck.Committed]
}

// victim returns the transfer the process was running when its crash point
// killed it ("" if it did not).
func (p *haProc) victim() string {
	for _, line := range strings.Split(p.out.String(), "\n") {
		if f := strings.Fields(line); len(f) == 4 && f[0] == "note" && f[1] == "crash" {
			return f[3]
		}
	}
	return ""
}

// paused returns the transfer at which the process stopped itself (a
// pause crash point), "" if it did not.
func (p *haProc) paused() string {
	for _, line := range strings.Split(p.out.String(), "\n") {
		if f := strings.Fields(line); len(f) == 4 && f[0] == "note" && f[1] == "pause" {
			return f[3]
		}
	}
	return ""
}

// stopped reports whether every thread of the process is stopped by a
// signal (state T in /proc/PID/task/TID/stat): the process's own state is
// its main thread's, which stops first.
func (p *haProc) stopped() bool {
	dir := fmt.Sprintf("/proc/%d/task", p.cmd.Process.Pid)
	tasks, err := os.ReadDir(dir)
	if err != nil || len(tasks) == 0 {
		return false
	}
	for _, task := range tasks {
		b, err := os.ReadFile(dir + "/" + task.Name() + "/stat")
		if err != nil {
			return false
		}
		// pid (comm) state ...: comm may hold spaces; the state follows the last ')'.
		i := bytes.LastIndexByte(b, ')')
		if i < 0 || i+2 >= len(b) || b[i+2] != 'T' {
			return false
		}
	}
	return true
}

// waitCommits waits until the process reported n more transfers committed
// than from (it decides again).
func (p *haProc) waitCommits(t *testing.T, from, n int, timeout time.Duration) {
	t.Helper()
	if !poll(timeout, func() bool { return p.committed(t) >= from+n }) {
		t.Fatalf("replica %s committed %d transfers in %s (want %d more than %d); stderr:\n%s",
			p.node, p.committed(t)-from, timeout, n, from, p.errb)
	}
}

// restart starts node again after its process ended, retrying while the
// node is refused: a survivor may hold its lease for a moment (it claims an
// expired node in its pass, and releases it at the end), as a pod's
// restart would be retried. It fails after 3 TTLs of refusals.
func (c *haCluster) restart(node string, o haStart) (*haProc, int) {
	c.t.Helper()
	start := time.Now()
	for refused := 0; ; refused++ {
		q := c.start(node, o)
		if !poll(30*time.Second, func() bool { return q.exited() || strings.Contains(q.out.String(), "note ready ") }) {
			c.t.Fatalf("restarted %s neither ready nor refused; stderr:\n%s", node, q.errb)
		}
		if !q.exited() {
			return q, refused
		}
		if code := q.cmd.ProcessState.ExitCode(); code != crashcheck.ExitNodeLeased || time.Since(start) > 3*haTTL {
			c.t.Fatalf("restarted %s exited with status %d; stderr:\n%s", node, code, q.errb)
		}
	}
}

// keptDecisions counts node's commit decisions kept in either
// participant's decision table.
func (c *haCluster) keptDecisions(node string) int {
	c.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	n := 0
	for _, k := range []decisionlog.Keeper{c.s.bank.PG, c.s.bank.My} {
		kept, err := k.ListDecisions(ctx)
		if err != nil {
			c.t.Fatalf("listing the decisions kept in %s: %v", k.Name(), err)
		}
		for _, d := range kept {
			if !d.Abort && d.GTRID.Node() == node {
				n++
			}
		}
	}
	return n
}

// haLease is one row of the store's lease table, as the database sees it.
type haLease struct {
	Epoch  int64
	Holder string // the holding process's node id (the node, or a claimant)
	PID    int
	Live   bool // not expired by the database's clock
}

// lease reads node's lease row (ok false: none).
func (c *haCluster) lease(node string) (haLease, bool) {
	c.t.Helper()
	var l haLease
	err := c.pool.QueryRow(context.Background(),
		"SELECT epoch, holder_node, pid, expires_at > clock_timestamp() FROM "+c.schema+"."+pgstore.TableNodes+" WHERE node = $1", node).
		Scan(&l.Epoch, &l.Holder, &l.PID, &l.Live)
	if errors.Is(err, pgx.ErrNoRows) {
		return l, false
	}
	if err != nil {
		c.t.Fatalf("reading the lease of %s: %v", node, err)
	}
	return l, true
}

// waitLease polls node's lease until cond holds and returns it.
func (c *haCluster) waitLease(node string, timeout time.Duration, what string, cond func(haLease) bool) haLease {
	c.t.Helper()
	var l haLease
	if !poll(timeout, func() bool {
		var ok bool
		l, ok = c.lease(node)
		return ok && cond(l)
	}) {
		c.t.Fatalf("lease of %s: %s not seen within %s (last: %+v)", node, what, timeout, l)
	}
	return l
}

// stranded counts the prepared branches of nodes on both servers and their
// commit decisions in the store whose phase 2 has not ended.
func (c *haCluster) stranded(nodes ...string) (int, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	want := map[string]bool{}
	for _, n := range nodes {
		want[n] = true
	}
	n := 0
	for _, r := range []drivers.Resource{c.s.bank.PG, c.s.bank.My} {
		ps, err := r.Recover(ctx)
		if err != nil {
			return 0, err
		}
		for _, p := range ps {
			if p.Ours && want[p.XID.Global.Node()] {
				n++
			}
		}
	}
	for _, node := range nodes {
		k, err := crashcheck.StorePending(ctx, c.pool, c.schema, node)
		if err != nil {
			return 0, err
		}
		n += k
	}
	return n, nil
}

// strandedOn counts the prepared branches of node on one server (-1 if
// they cannot be listed).
func (c *haCluster) strandedOn(r drivers.Resource, node string) int {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	n, err := startup.InDoubt(ctx, node, r)
	if err != nil {
		return -1
	}
	return n
}

// waitSettled polls until nothing of nodes is stranded and returns how long
// that took from since.
func (c *haCluster) waitSettled(since time.Time, timeout time.Duration, nodes ...string) time.Duration {
	c.t.Helper()
	var last int
	var lastErr error
	if !poll(timeout, func() bool {
		last, lastErr = c.stranded(nodes...)
		return lastErr == nil && last == 0
	}) {
		c.t.Fatalf("nodes %v: %d branches or decisions still stranded after %s (last error: %v)", nodes, last, timeout, lastErr)
	}
	return time.Since(since)
}

// check checks every invariant over all the cluster's processes: money
// conserved, each transfer in both databases or in neither, what every
// caller was told is what the databases hold, the store's decision rows
// agree with the databases (a commit row in both, an abort row in
// neither, every transfer with a commit row), no prepared branch of any
// node left, the foreign prepared transactions untouched.
func (c *haCluster) check() (crashcheck.Result, int) {
	c.t.Helper()
	ctx := context.Background()
	c.mu.Lock()
	procs := append([]*haProc(nil), c.procs...)
	c.mu.Unlock()
	journal := crashcheck.Journal{}
	nodes := map[string]bool{}
	kept := map[string]bool{} // decisions in a participant, not in the store
	for _, p := range procs {
		nodes[p.node] = true
		for id, o := range p.journal(c.t) {
			journal[id] = o
			if p.keeper != crashcheck.KeeperNone {
				kept[id] = true
			}
		}
	}
	var names []string
	for n := range nodes {
		names = append(names, n)
	}
	entries, err := crashcheck.StoreEntries(ctx, c.pool, c.schema)
	if err != nil {
		c.t.Fatal(err)
	}
	res, err := crashcheck.Check(ctx, c.s.bank, crashcheck.Expect{
		Nodes: names, Total: c.s.total, Journal: journal, Entries: entries, Kept: kept, Foreign: c.e.foreign,
	})
	if err != nil {
		c.t.Fatalf("invariant check: %v", err)
	}
	for _, v := range res.Violations {
		c.t.Errorf("violation: %s", v)
	}
	if res.Stranded != 0 {
		c.t.Errorf("%d prepared branches of nodes %v stranded", res.Stranded, names)
	}
	c.t.Logf("%d processes, %d transfers begun, outcomes %v, %d committed in the databases, %d store rows",
		len(procs), len(journal), journal.Count(), res.Transfers, len(entries))
	return res, len(journal)
}

// stopAll stops every live process cleanly, waits until nothing is
// stranded and checks the invariants.
func (c *haCluster) stopAll(scenarioName string) crashcheck.Result {
	c.t.Helper()
	c.mu.Lock()
	procs := append([]*haProc(nil), c.procs...)
	c.mu.Unlock()
	var nodes []string
	for _, p := range procs {
		nodes = append(nodes, p.node)
		if !p.exited() {
			p.stop(c.t)
		}
	}
	// Every test settles the nodes it killed before it gets here, and a
	// clean stop lets the transfers in flight finish: nothing may be left.
	// If something is, it is an error, and one more replica finishes it
	// (as an operator's next deploy would) so that the invariants can
	// still be checked.
	if n, err := c.stranded(nodes...); err != nil || n > 0 {
		for _, node := range nodes {
			k, err := c.stranded(node)
			if k == 0 && err == nil {
				continue
			}
			c.t.Errorf("after every replica stopped cleanly: node %s: %d branches or decisions stranded (%v); a finishing replica takes over", node, k, err)
		}
		fin := c.start("ha-fin-"+suffix(), haStart{workers: 1})
		fin.ready(c.t)
		c.waitSettled(time.Now(), 60*time.Second, nodes...)
		fin.stop(c.t)
	}
	res, txns := c.check()
	var kills int
	for _, p := range procs {
		if p.killed() {
			kills++
		}
	}
	results.add(scenarioName, "both; shared store", kills, txns, res)
	return res
}

// proxyURL returns the store URL through a netfault proxy's address.
func proxyURL(t *testing.T, storeURL, addr string) string {
	t.Helper()
	u, err := url.Parse(storeURL)
	if err != nil {
		t.Fatal(err)
	}
	u.Host = addr
	return u.String()
}

// pgAddr is the chaos PostgreSQL's address.
func (e *chaosEnv) pgAddr() string { return e.pair.Addr(dbproc.PG) }
