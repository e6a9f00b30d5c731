package integration

import (
	"context"
	"encoding/json"
	"fmt"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/xabridge/xabridge/decisionlog/pgstore"
	"github.com/xabridge/xabridge/internal/crashcheck"
	"github.com/xabridge/xabridge/internal/dbtest"
	"github.com/xabridge/xabridge/internal/dbtest/containers"
)

// The coordinator in a container: the HA tests on separate network hosts.
// Three coordinator containers (the xabridge CLI built from this checkout,
// containers.CoordinatorImage) run `xabridge demo transfer --store` with
// node ids of their own on one shared decision store, each at its own
// address on the Docker chaos network beside the PostgreSQL container
// (participant and store database) and the MariaDB one. Nothing runs in
// the test process but the observer: `xabridge nodes -o json` is run
// inside a live coordinator container (docker exec), the invariants are
// read from the databases. Gated like the other Docker tests
// (getDockerEnv): the container leg of scripts/test runs it,
// XABRIDGE_TEST_DB=local skips it.

var (
	coordImageOnce sync.Once
	coordImage     string
	coordImageErr  error
)

// coordinatorImage builds (or reuses) the coordinator image, once per test
// binary.
func coordinatorImage(t *testing.T) string {
	t.Helper()
	coordImageOnce.Do(func() {
		root, err := dbtest.RepoRoot()
		if err != nil {
			coordImageErr = err
			return
		}
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
		defer cancel()
		start := time.Now()
		var built bool
		coordImage, built, coordImageErr = containers.CoordinatorImage(ctx, root)
		what := "reused"
		if built {
			what = "built"
		}
		logTiming(t, "coordinator image %s %s in %s (go build included)", coordImage, what, time.Since(start).Round(time.Millisecond))
	})
	if coordImageErr != nil {
		t.Fatalf("coordinator image: %v", coordImageErr)
	}
	return coordImage
}

// dockerCoord is one coordinator container.
type dockerCoord struct {
	node string
	app  *containers.App
}

// nodeView is one node of `xabridge nodes -o json` (its stable fields).
type nodeView struct {
	Node   string `json:"node"`
	Epoch  int64  `json:"epoch"`
	State  string `json:"state"`
	Holder struct {
		Node string `json:"node"`
		Host string `json:"host"`
	} `json:"holder"`
	AcquiredAt       string `json:"acquired_at"` // RFC 3339, the store's clock
	PendingDecisions int    `json:"pending_decisions"`
	InDoubtBranches  *int   `json:"in_doubt_branches"`
}

// settled: nothing of the node is prepared on either database (scanned)
// and no commit decision of it is pending.
func (n nodeView) settled() bool {
	return n.InDoubtBranches != nil && *n.InDoubtBranches == 0 && n.PendingDecisions == 0
}

// dockerHA is the coordinator containers of one test on a haCluster's
// tables and store schema.
type dockerHA struct {
	t     *testing.T
	c     *haCluster
	set   *containers.Set
	image string
	env   map[string]string
}

// start starts a coordinator container for node running transfers until
// stopped.
func (h *dockerHA) start(node string) *dockerCoord {
	h.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	app, err := h.set.StartApp(ctx, containers.AppSpec{Name: node, Image: h.image, Env: h.env,
		Cmd: []string{"demo", "transfer", "--node-id", node, "--table-prefix", h.c.s.prefix, "--reset=false",
			"--count", "1000000", "--concurrency", "2", "--accounts", fmt.Sprint(chaosAccounts),
			"--lease-ttl", haTTL.String(), "--recover-interval", haEvery.String()}})
	if err != nil {
		h.t.Fatal(err)
	}
	h.c.mu.Lock()
	h.c.others = append(h.c.others, node)
	h.c.mu.Unlock()
	h.t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		if h.t.Failed() {
			out, errOut, err := app.Logs(ctx)
			h.t.Logf("coordinator container %s (%s) output (%v):\n%s\nstderr:\n%s", node, app.IP, err, tail(out, 40), tail(errOut, 40))
		}
		if err := app.Terminate(ctx); err != nil {
			h.t.Errorf("removing coordinator container %s: %v", node, err)
		}
	})
	return &dockerCoord{node: node, app: app}
}

// tail returns the last n lines of s.
func tail(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	return strings.Join(lines[max(0, len(lines)-n):], "\n")
}

// starts counts the times the coordinator said it started ("xabridge demo:
// node N, epoch E, on the shared store") and returns the last epoch.
func (d *dockerCoord) starts(t *testing.T) (int, int64) {
	t.Helper()
	out, _, err := d.app.Logs(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	n, epoch := 0, int64(0)
	for _, line := range strings.Split(out, "\n") {
		var node string
		var e int64
		if k, _ := fmt.Sscanf(line, "xabridge demo: node %s epoch %d,", &node, &e); k == 2 && strings.TrimSuffix(node, ",") == d.node {
			n, epoch = n+1, e
		}
	}
	return n, epoch
}

// ready waits until the coordinator started for the (before+1)th time and
// returns its epoch.
func (d *dockerCoord) ready(t *testing.T, before int) int64 {
	t.Helper()
	var epoch int64
	if !pollEvery(60*time.Second, 100*time.Millisecond, func() bool {
		n, e := d.starts(t)
		epoch = e
		return n > before
	}) {
		out, errOut, _ := d.app.Logs(context.Background())
		t.Fatalf("coordinator container %s did not start within 60s:\n%s\nstderr:\n%s", d.node, tail(out, 20), tail(errOut, 20))
	}
	return epoch
}

// committed counts the node's transfers in PostgreSQL (a transfer's id is
// its global id, which starts with its node).
func (h *dockerHA) committed(node string) int {
	h.t.Helper()
	var n int
	if err := h.c.s.bank.PGPool.QueryRow(context.Background(),
		"SELECT count(*) FROM "+h.c.s.bank.Table("transfers")+" WHERE id LIKE $1", node+".%").Scan(&n); err != nil {
		h.t.Fatal(err)
	}
	return n
}

// waitCommits waits until node has n more transfers than from.
func (h *dockerHA) waitCommits(node string, from, n int, timeout time.Duration) {
	h.t.Helper()
	if !pollEvery(timeout, 100*time.Millisecond, func() bool { return h.committed(node) >= from+n }) {
		h.t.Fatalf("coordinator %s committed %d transfers in %s (want %d more than %d)", node, h.committed(node)-from, timeout, n, from)
	}
}

// nodes runs `xabridge nodes -o json` inside the coordinator container in
// (its environment names the store and both databases, so the branches
// are counted): exit 0, or 3 while an expired node has branches left.
func (h *dockerHA) nodes(in *dockerCoord) (map[string]nodeView, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	out, errOut, code, err := in.app.Exec(ctx, "/xabridge", "nodes", "-o", "json")
	if err != nil {
		return nil, err
	}
	if code != 0 && code != 3 {
		return nil, fmt.Errorf("xabridge nodes in %s: exit %d: %s", in.node, code, strings.TrimSpace(errOut))
	}
	var j struct {
		Nodes []nodeView `json:"nodes"`
	}
	if err := json.Unmarshal([]byte(out), &j); err != nil {
		return nil, fmt.Errorf("xabridge nodes in %s: %w: %q", in.node, err, out)
	}
	m := map[string]nodeView{}
	for _, n := range j.Nodes {
		m[n.Node] = n
	}
	return m, nil
}

// waitNode polls `xabridge nodes -o json` in the container in until node's
// entry satisfies cond, and returns it and the states seen meanwhile.
func (h *dockerHA) waitNode(in *dockerCoord, node string, timeout time.Duration, what string, cond func(nodeView) bool) (nodeView, []string) {
	h.t.Helper()
	var last nodeView
	var lastErr error
	var states []string
	if !pollEvery(timeout, 100*time.Millisecond, func() bool {
		m, err := h.nodes(in)
		if lastErr = err; err != nil {
			return false
		}
		n, ok := m[node]
		if !ok {
			return false
		}
		last = n
		s := fmt.Sprintf("%s(epoch %d, holder %s)", n.State, n.Epoch, n.Holder.Node)
		if len(states) == 0 || states[len(states)-1] != s {
			states = append(states, s)
		}
		return cond(n)
	}) {
		h.t.Fatalf("xabridge nodes: %s: %s not seen within %s (last: %+v, states seen %v, last error %v)", node, what, timeout, last, states, lastErr)
	}
	return last, states
}

// staleDecisions counts node's decision rows written under an epoch up to
// epoch at or after since (the database's clock): the store must refuse
// every decision of a process whose lease was claimed.
func (h *dockerHA) staleDecisions(node string, epoch int64, since time.Time) int {
	h.t.Helper()
	var n int
	if err := h.c.pool.QueryRow(context.Background(),
		"SELECT count(*) FROM "+h.c.schema+"."+pgstore.TableDecisions+" WHERE node = $1 AND epoch <= $2 AND written_at >= $3",
		node, epoch, since).Scan(&n); err != nil {
		h.t.Fatal(err)
	}
	return n
}

// TestDockerCoordinatorsHA runs three coordinator containers on one
// shared store under load, then:
//
//   - `docker kill` of one: a survivor claims its lease (epoch + 1) and
//     settles its branches, with no operator, within lease TTL + one
//     recovery pass, as `xabridge nodes -o json` shows; `docker start`
//     brings it back under a newer epoch;
//   - `docker network disconnect` of another (cut off from the store, the
//     databases and its peers): its lease runs out, a survivor takes its
//     node over and settles its PostgreSQL branches while it is still cut
//     off (its MariaDB branches wait for their sessions: MariaDB cannot
//     finish a branch whose owner session it still sees connected); once
//     reconnected it writes no decision under its old epoch and rejoins
//     under a new one, and decides again.
//
// Then every container is stopped (SIGTERM) and the invariants are
// checked: `xabridge demo check` (money conserved, each transfer in both
// databases or neither), the store's decisions agree with the databases,
// no prepared branch of any node left, the foreign prepared transactions
// untouched.
func TestDockerCoordinatorsHA(t *testing.T) {
	e := getDockerEnv(t)
	ctx := context.Background()
	h := &dockerHA{t: t, set: e.pair.(dockerPair).set, image: coordinatorImage(t)}
	began := time.Now() // after the image (timed on its own)
	h.c = e.newHACluster(t)
	h.env = map[string]string{
		"XABRIDGE_PG": e.pair.PGURL(), "XABRIDGE_MYSQL": e.pair.MyURL(),
		"XABRIDGE_STORE": h.c.storeURL, "XABRIDGE_STORE_SCHEMA": h.c.schema,
	}
	id := suffix()
	coords := []*dockerCoord{h.start("dc-a-" + id), h.start("dc-b-" + id), h.start("dc-c-" + id)}
	for _, d := range coords {
		d.ready(t, 0)
	}
	for _, d := range coords {
		h.waitCommits(d.node, 0, 3, 60*time.Second)
	}
	ips := make([]string, len(coords))
	for i, d := range coords {
		ips[i] = d.node + "@" + d.app.IP
	}
	logTiming(t, "three coordinator containers (%s) deciding %s after they were started", strings.Join(ips, ", "), time.Since(began).Round(time.Millisecond))

	// (a) docker kill.
	victim, a, b := coords[0], coords[1], coords[2]
	before, _ := h.waitNode(a, victim.node, 30*time.Second, "live", func(n nodeView) bool { return n.State == "live" && n.Holder.Node == victim.node })
	preA, preB := h.committed(a.node), h.committed(b.node)
	if err := victim.app.Kill(ctx); err != nil {
		t.Fatal(err)
	}
	killed := time.Now()
	survivors := []string{a.node, b.node}
	var claimedAfter time.Duration
	after, states := h.waitNode(a, victim.node, 60*time.Second, "taken over by a survivor and settled", func(n nodeView) bool {
		taken := n.Epoch > before.Epoch && slices.Contains(survivors, n.Holder.Node)
		if taken && claimedAfter == 0 {
			claimedAfter = time.Since(killed)
		}
		return taken && n.settled()
	})
	settled := time.Since(killed)
	logTiming(t, "docker kill of %s: claimed (epoch %d→%d by %s) within %s, zero prepared and pending after %s (budget %s); states seen %v",
		victim.node, before.Epoch, after.Epoch, after.Holder.Node, claimedAfter.Round(time.Millisecond), settled.Round(time.Millisecond), takeoverBudget, states)
	if settled > takeoverBudget {
		t.Errorf("the killed coordinator's branches were settled %s after docker kill; want within %s (TTL %s + one pass)", settled, takeoverBudget, haTTL)
	}
	if n, err := h.c.stranded(victim.node); err != nil || n != 0 {
		t.Errorf("after xabridge nodes showed %s settled: %d branches or decisions stranded (%v)", victim.node, n, err)
	}
	// The survivors kept deciding.
	h.waitCommits(a.node, preA, 2, 30*time.Second)
	h.waitCommits(b.node, preB, 2, 30*time.Second)

	// docker start: the killed node comes back under a newer epoch. The
	// claimant may still hold its lease for a moment (it releases it at
	// the end of its pass): the start is then refused, and retried, as a
	// container's restart policy would.
	restarted := time.Now()
	var epoch int64
	for attempt := 0; ; attempt++ {
		n, _ := victim.starts(t)
		if err := victim.app.Start(ctx); err != nil {
			t.Fatal(err)
		}
		ok := pollEvery(30*time.Second, 100*time.Millisecond, func() bool {
			k, _ := victim.starts(t)
			running, err := victim.app.Running(ctx)
			return k > n || (err == nil && !running)
		})
		if k, e := victim.starts(t); ok && k > n {
			epoch = e
			break
		}
		if attempt == 3 || time.Since(restarted) > 3*haTTL {
			_, errOut, _ := victim.app.Logs(ctx)
			t.Fatalf("docker start of %s: not running under a lease after %d attempts:\n%s", victim.node, attempt+1, tail(errOut, 10))
		}
	}
	logTiming(t, "docker start of %s: running again under epoch %d (claimant's %d) %s after the start",
		victim.node, epoch, after.Epoch, time.Since(restarted).Round(time.Millisecond))
	if epoch <= after.Epoch {
		t.Errorf("restarted %s holds epoch %d, not above the claimant's %d", victim.node, epoch, after.Epoch)
	}
	h.waitCommits(victim.node, h.committed(victim.node), 2, 30*time.Second)

	// (b) docker network disconnect.
	cut, observer := coords[1], coords[2]
	pre, _ := h.waitNode(observer, cut.node, 30*time.Second, "live", func(n nodeView) bool { return n.State == "live" && n.Holder.Node == cut.node })
	if err := cut.app.Disconnect(ctx); err != nil {
		t.Fatal(err)
	}
	at := time.Now()
	claim, _ := h.waitNode(observer, cut.node, 30*time.Second, "claimed by a survivor", func(n nodeView) bool {
		return n.Epoch > pre.Epoch && n.Holder.Node != cut.node
	})
	toClaim := time.Since(at)
	// While it is cut off, the claimant settles every PostgreSQL branch
	// and decision of the node; a MariaDB branch whose session the server
	// still sees connected (its client is cut off, not gone) cannot be
	// finished from another session until that session ends.
	pgLeft := -1
	if !pollEvery(takeoverBudget, 100*time.Millisecond, func() bool {
		pgLeft = h.c.strandedOn(h.c.s.bank.PG, cut.node)
		return pgLeft == 0
	}) {
		t.Errorf("%d PostgreSQL branches of the disconnected node still prepared %s after the disconnect (claimed after %s)", pgLeft, takeoverBudget, toClaim)
	}
	myLeft := h.c.strandedOn(h.c.s.bank.My, cut.node)
	logTiming(t, "docker network disconnect of %s: claimed (epoch %d→%d by %s) after %s; PostgreSQL branches settled after %s; %d MariaDB branches wait for their owner's sessions",
		cut.node, pre.Epoch, claim.Epoch, claim.Holder.Node, toClaim.Round(time.Millisecond), time.Since(at).Round(time.Millisecond), myLeft)
	stalled := h.committed(cut.node)
	if err := cut.app.Connect(ctx); err != nil {
		t.Fatal(err)
	}
	healed := time.Now()
	back, _ := h.waitNode(observer, cut.node, 60*time.Second, "held again by its own container under a newer epoch", func(n nodeView) bool {
		return n.State == "live" && n.Holder.Node == cut.node && n.Holder.Host == cut.node && n.Epoch > claim.Epoch
	})
	logTiming(t, "docker network connect of %s: rejoined under epoch %d (was %d, claimed at %d) %s after the reconnect",
		cut.node, back.Epoch, pre.Epoch, claim.Epoch, time.Since(healed).Round(time.Millisecond))
	// The process itself saw the loss (package replica logs it when its
	// lease watcher fires: from then on it writes no decision until it
	// holds the node again).
	if _, errOut, err := cut.app.Logs(ctx); err != nil || !strings.Contains(errOut, "node lease lost") {
		t.Errorf("the disconnected coordinator %s did not log that it lost its lease (%v):\n%s", cut.node, err, tail(errOut, 10))
	}
	h.waitCommits(cut.node, stalled, 3, 30*time.Second)
	claimedAt, err := time.Parse(time.RFC3339Nano, claim.AcquiredAt)
	if err != nil {
		t.Fatalf("xabridge nodes: acquired_at of the claim: %v", err)
	}
	if n := h.staleDecisions(cut.node, pre.Epoch, claimedAt); n != 0 {
		t.Errorf("%d decisions of %s written under its old epoch %d after the claim (at %s)", n, cut.node, pre.Epoch, claim.AcquiredAt)
	}

	// The end: every container stopped cleanly (SIGTERM: the transfers in
	// flight finish, the lease is released, the demo checks the
	// invariants), nothing left in doubt. Each demo's own check is final
	// only for the last one stopped: before, the others' transfers in
	// flight are prepared branches, and it says "in doubt" (exit 3).
	for i, d := range coords {
		if err := d.app.Stop(ctx, 30*time.Second); err != nil {
			t.Errorf("docker stop %s: %v", d.node, err)
		}
		code, err := d.app.Wait(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if code != 0 && (code != 3 || i == len(coords)-1) {
			out, _, _ := d.app.Logs(ctx)
			t.Errorf("coordinator %s stopped by SIGTERM exited with status %d (want 0, or 3 while peers ran):\n%s", d.node, code, tail(out, 15))
		}
	}
	var nodes []string
	for _, d := range coords {
		nodes = append(nodes, d.node)
	}
	h.c.waitSettled(time.Now(), 30*time.Second, nodes...)
	chk, err := h.set.StartApp(ctx, containers.AppSpec{Name: "dc-check-" + id, Image: h.image, Env: h.env,
		Cmd: []string{"demo", "check", "--table-prefix", h.c.s.prefix}})
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = chk.Terminate(context.Background()) }()
	code, err := chk.Wait(ctx)
	out, errOut, _ := chk.Logs(ctx)
	if err != nil || code != 0 {
		t.Errorf("xabridge demo check: exit %d (%v):\n%s%s", code, err, out, errOut)
	}
	entries, err := crashcheck.StoreEntries(ctx, h.c.pool, h.c.schema)
	if err != nil {
		t.Fatal(err)
	}
	res, err := crashcheck.Check(ctx, h.c.s.bank, crashcheck.Expect{
		Nodes: nodes, Total: h.c.s.total, Entries: entries, Foreign: e.foreign,
		// Ended commit decisions are deleted a minute after their end.
		LogCompacted: true,
	})
	if err != nil {
		t.Fatal(err)
	}
	for _, v := range res.Violations {
		t.Errorf("violation: %s", v)
	}
	if res.Stranded != 0 {
		t.Errorf("%d prepared branches of %v left", res.Stranded, nodes)
	}
	t.Logf("demo check in a container: %s", strings.ReplaceAll(strings.TrimSpace(out), "\n", "; "))
	logTiming(t, "coordinator containers: %d transfers committed, %d store rows; the test took %s after the image", res.Transfers, len(entries), time.Since(began).Round(time.Millisecond))
	results.add("docker: three coordinator containers on a shared store, one docker kill, one network disconnect", "both; shared store", 1, res.Transfers, res)
}
