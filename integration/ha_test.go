package integration

import (
	"context"
	"fmt"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/xabridge/xabridge/internal/crashcheck"
	"github.com/xabridge/xabridge/internal/dbproc"
	"github.com/xabridge/xabridge/internal/netfault"
)

// takeoverBudget is how long after a replica's death its branches may stay
// stranded: its lease runs out (TTL), a survivor's next pass starts (at most
// one interval later) and claims it, and that pass settles its branches
// (the two-scan wait, then the commits and rollbacks). The slack covers a
// 2-core machine shared with other tests.
const takeoverBudget = haTTL + haEvery + haSettle + 3*time.Second

func logTiming(t *testing.T, format string, a ...any) {
	t.Helper()
	t.Logf("timing: "+format, a...)
}

// TestHAKillAtEveryStep runs three replica processes on one store under
// load and SIGKILLs one of them at each protocol step: before its
// transaction prepares, between the two prepares, once the commit decision
// is durable, and during phase 2. No operator acts: a survivor must claim
// the dead node's lease and settle its branches within lease TTL + one
// recovery pass; the killed transaction ends committed everywhere once its
// decision was durable, aborted everywhere before. The survivors keep
// deciding throughout.
func TestHAKillAtEveryStep(t *testing.T) {
	e := getEnv(t)
	for _, step := range []struct {
		name, point string
		keeper      crashcheck.Keeper
	}{
		{"before-prepare", "after-work", crashcheck.KeeperNone},
		{"between-prepares", "after-prepare:0", crashcheck.KeeperNone},
		{"after-decision", "after-decision", crashcheck.KeeperNone},
		{"during-phase2", "after-commit:0", crashcheck.KeeperNone},
		// Decisions kept in a participant are taken over too.
		{"keeper-after-decision", "after-decision", crashcheck.KeeperMy},
	} {
		t.Run(step.name, func(t *testing.T) {
			t.Parallel() // own tables, own store schema, own node ids
			c := e.newHACluster(t)
			id := suffix()
			victim := c.start("ha-k-"+id, haStart{crash: step.point, nth: 6, keeper: step.keeper})
			a := c.start("ha-a-"+id, haStart{keeper: step.keeper})
			b := c.start("ha-b-"+id, haStart{keeper: step.keeper})
			e0 := victim.ready(t)
			a.ready(t)
			b.ready(t)
			victim.wait(t, 60*time.Second)
			if !victim.killed() || victim.victim() == "" {
				t.Fatalf("the replica was not killed at %s (status %v); stderr:\n%s", step.point, victim.cmd.ProcessState, victim.errb)
			}
			kill := victim.endedAt
			preA, preB := a.committed(t), b.committed(t)
			claimed := c.waitLease(victim.node, 30*time.Second, "claimed by a survivor", func(l haLease) bool {
				return l.Epoch > e0 && l.Holder != victim.node
			})
			toClaim := time.Since(kill)
			settled := c.waitSettled(kill, 30*time.Second, victim.node)
			if step.keeper != crashcheck.KeeperNone {
				// The kept decision rows of the dead node are gone too
				// once its branches are finished.
				if !poll(30*time.Second, func() bool { return c.keptDecisions(victim.node) == 0 }) {
					t.Errorf("%d decisions of the dead node still kept in a participant", c.keptDecisions(victim.node))
				}
				settled = time.Since(kill)
			}
			logTiming(t, "SIGKILL at %s: claimed (epoch %d→%d by %s) after %s, zero stranded after %s (budget %s)",
				step.point, e0, claimed.Epoch, claimed.Holder, toClaim.Round(time.Millisecond), settled.Round(time.Millisecond), takeoverBudget)
			if settled > takeoverBudget {
				t.Errorf("the dead node's branches were settled %s after the kill; want within %s (TTL %s + one pass)", settled, takeoverBudget, haTTL)
			}
			// The dead node comes back under a new epoch and decides.
			back, _ := c.restart(victim.node, haStart{keeper: step.keeper})
			if ep := back.ready(t); ep <= claimed.Epoch {
				t.Errorf("the restarted node holds epoch %d, not above the claimant's %d", ep, claimed.Epoch)
			}
			back.waitCommits(t, 0, 2, 20*time.Second)
			// The survivors kept deciding.
			a.waitCommits(t, preA, 2, 20*time.Second)
			b.waitCommits(t, preB, 2, 20*time.Second)
			c.stopAll("HA: replica SIGKILL at " + step.point + ", survivors take over")
			cp, err := crashcheck.ParseCrashPoint(step.point)
			if err != nil {
				t.Fatal(err)
			}
			c.s.wantPresent(victim.victim(), cp.Decided())
		})
	}
}

// TestHAStoreCutOff cuts one replica off from the store (its store
// connections go through a netfault proxy, which black-holes them) while
// its participants stay reachable. It must stop deciding; a survivor takes
// its node over; when the cut heals, what was held in flight reaches the
// store late and must not land as a decision, and the replica rejoins under
// a new epoch and decides again.
func TestHAStoreCutOff(t *testing.T) {
	e := getEnv(t)
	t.Parallel()
	c := e.newHACluster(t)
	proxy, err := netfault.Listen(e.pgAddr())
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = proxy.Close() }()
	id := suffix()
	cut := c.start("ha-cut-"+id, haStart{storeURL: proxyURL(t, c.storeURL, proxy.Addr())})
	a := c.start("ha-a-"+id, haStart{})
	b := c.start("ha-b-"+id, haStart{})
	e0 := cut.ready(t)
	a.ready(t)
	b.ready(t)
	cut.waitCommits(t, 0, 3, 30*time.Second)

	proxy.Blackhole()
	at := time.Now()
	claimed := c.waitLease(cut.node, 30*time.Second, "claimed by a survivor", func(l haLease) bool {
		return l.Epoch > e0 && l.Holder != cut.node
	})
	logTiming(t, "store cut: node claimed (epoch %d→%d by %s) %s after the cut", e0, claimed.Epoch, claimed.Holder, time.Since(at).Round(time.Millisecond))
	// A claim comes a TTL after the replica's last renewal, so by now its
	// own estimate of its lease (TTL − margin after that renewal) ran out:
	// it decides nothing more until it rejoins. (Phase 2 of decisions made
	// before the cut took milliseconds, with the participants reachable.)
	stalled := cut.committed(t)
	// Keep the cut until the claimant's takeover pass is over (it releases
	// the lease): the node's branches prepared before the cut are settled
	// while the replica is still cut off.
	c.waitLease(cut.node, 30*time.Second, "released by the claimant", func(l haLease) bool { return l.Epoch >= claimed.Epoch && !l.Live })
	if n := cut.committed(t); n != stalled {
		t.Errorf("the replica cut off from the store reported %d more transfers committed after it was taken over", n-stalled)
	}
	proxy.Heal()
	healed := time.Now()
	back := c.waitLease(cut.node, 30*time.Second, "held again by the replica under a new epoch", func(l haLease) bool {
		return l.Holder == cut.node && l.PID == cut.cmd.Process.Pid && l.Live && l.Epoch > claimed.Epoch
	})
	logTiming(t, "store cut: rejoined under epoch %d (was %d, claimed at %d) %s after the heal", back.Epoch, e0, claimed.Epoch, time.Since(healed).Round(time.Millisecond))
	cut.waitCommits(t, stalled, 3, 30*time.Second)
	c.stopAll("HA: replica cut off from the store, taken over, rejoins")
}

// TestHAPaused stops one replica with SIGSTOP past its lease, in the
// middle of a transaction whose commit decision is durable and whose
// branches are prepared on their open sessions (its crash point stops it
// there; other workers are wherever they were). A survivor claims its node,
// ends its MariaDB sessions (MariaDB finishes a prepared branch from
// another session only once the owner's is gone) and settles all of its
// branches and decisions while it is still stopped, within the takeover
// budget. SIGCONT then resumes it where it stopped: it must write no
// decision under its old epoch (what it was deciding ends aborted or in
// doubt, never a commit the databases do not hold), and it rejoins under a
// new epoch and decides again.
func TestHAPaused(t *testing.T) {
	e := getEnv(t)
	t.Parallel()
	c := e.newHACluster(t)
	id := suffix()
	paused := c.start("ha-p-"+id, haStart{workers: 4, crash: "after-decision", nth: 6, pause: true})
	a := c.start("ha-a-"+id, haStart{})
	b := c.start("ha-b-"+id, haStart{})
	e0 := paused.ready(t)
	a.ready(t)
	b.ready(t)
	if !poll(60*time.Second, func() bool { return paused.paused() != "" && paused.stopped() }) {
		t.Fatalf("the replica did not stop itself at its pause point; stderr:\n%s", paused.errb)
	}
	at := time.Now()
	victim := paused.paused()
	myAtStop := c.strandedOn(c.s.bank.My, paused.node)
	if myAtStop < 1 {
		inPG, inMy, perr := crashcheck.TransferPresent(context.Background(), c.s.bank, victim)
		t.Logf("paused transfer %s present: pg %v my %v (%v)", victim, inPG, inMy, perr)
		t.Fatalf("%d MariaDB branches (%d PostgreSQL) of the paused node prepared at the pause at %s; want at least its decided transfer's; stopped %v exited %v (%v); stdout:\n%s\nstderr:\n%s",
			myAtStop, c.strandedOn(c.s.bank.PG, paused.node), victim, paused.stopped(), paused.exited(), paused.cmd.ProcessState, paused.out, paused.errb)
	}
	claimed := c.waitLease(paused.node, 30*time.Second, "claimed by a survivor", func(l haLease) bool {
		return l.Epoch > e0 && l.Holder != paused.node
	})
	toClaim := time.Since(at)
	// Everything of the node settled while it is stopped: prepared
	// branches on both servers, and commit decisions not ended.
	left := -1
	var leftErr error
	if !poll(takeoverBudget+5*time.Second, func() bool {
		left, leftErr = c.stranded(paused.node)
		return leftErr == nil && left == 0
	}) {
		t.Fatalf("%d branches or decisions of the paused node still stranded %s after SIGSTOP (claimed after %s; MariaDB: %d; last error %v)",
			left, time.Since(at).Round(time.Millisecond), toClaim, c.strandedOn(c.s.bank.My, paused.node), leftErr)
	}
	settled := time.Since(at)
	if !paused.stopped() {
		t.Fatal("the paused replica is no longer stopped: its branches may have been finished by itself")
	}
	logTiming(t, "SIGSTOP: claimed (epoch %d→%d by %s) after %s; zero stranded (%d MariaDB branches prepared at the pause) after %s while still stopped (budget %s)",
		e0, claimed.Epoch, claimed.Holder, toClaim.Round(time.Millisecond), myAtStop, settled.Round(time.Millisecond), takeoverBudget)
	if settled > takeoverBudget {
		t.Errorf("the paused node's branches were settled %s after SIGSTOP; want within %s (TTL %s + one pass)", settled, takeoverBudget, haTTL)
	}
	c.s.wantPresent(victim, true) // its decision was durable: committed everywhere by the claimant
	before := paused.committed(t)
	preA, preB := a.committed(t), b.committed(t)
	paused.signal(t, syscall.SIGCONT)
	resumed := time.Now()
	back := c.waitLease(paused.node, 30*time.Second, "held again by the resumed replica under a new epoch", func(l haLease) bool {
		return l.Holder == paused.node && l.PID == paused.cmd.Process.Pid && l.Live && l.Epoch > claimed.Epoch
	})
	logTiming(t, "SIGCONT: rejoined under epoch %d %s after resuming", back.Epoch, time.Since(resumed).Round(time.Millisecond))
	paused.waitCommits(t, before, 3, 30*time.Second)
	a.waitCommits(t, preA, 2, 20*time.Second)
	b.waitCommits(t, preB, 2, 20*time.Second)
	// stopAll checks every invariant, among them that no decision row of
	// the store is missing from the databases (no stale decision landed)
	// and that what the resumed process told its callers is what the
	// databases hold.
	c.stopAll("HA: replica paused (SIGSTOP) past its lease, taken over, resumed")
	c.s.wantPresent(victim, true)
}

// TestHADuplicateNode starts a second process with a live replica's node
// id: it is refused (exit status 3, an error naming the lease holder)
// while the first goes on under its epoch. Then the first stops (its lease
// is released) and two processes race for the node: exactly one wins.
func TestHADuplicateNode(t *testing.T) {
	e := getEnv(t)
	t.Parallel()
	c := e.newHACluster(t)
	node := "ha-dup-" + suffix()
	first := c.start(node, haStart{workers: 1})
	e0 := first.ready(t)
	first.waitCommits(t, 0, 2, 30*time.Second)

	second := c.start(node, haStart{workers: 1})
	second.wait(t, 30*time.Second)
	if code := second.cmd.ProcessState.ExitCode(); code != crashcheck.ExitNodeLeased {
		t.Errorf("second process with node id %s: exit status %d, want %d (node leased); stderr:\n%s", node, code, crashcheck.ExitNodeLeased, second.errb)
	}
	if msg := second.errb.String(); !strings.Contains(msg, "held by") || !strings.Contains(msg, fmt.Sprint(first.cmd.Process.Pid)) {
		t.Errorf("the refusal does not say who holds the node (pid %d): %q", first.cmd.Process.Pid, msg)
	}
	if first.exited() {
		t.Fatalf("the first process died: %v; stderr:\n%s", first.cmd.ProcessState, first.errb)
	}
	if l, _ := c.lease(node); l.Epoch != e0 || l.PID != first.cmd.Process.Pid || !l.Live {
		t.Errorf("lease after the refused start: %+v, want epoch %d held live by pid %d", l, e0, first.cmd.Process.Pid)
	}
	n := first.committed(t)
	first.waitCommits(t, n, 2, 20*time.Second)

	// The race for the released lease.
	first.stop(t)
	racers := []*haProc{c.start(node, haStart{workers: 1}), c.start(node, haStart{workers: 1})}
	var winner *haProc
	if !poll(30*time.Second, func() bool {
		won, lost := 0, 0
		for _, p := range racers {
			switch {
			case p.exited():
				lost++
			case strings.Contains(p.out.String(), "note ready "):
				won++
				winner = p
			}
		}
		return won+lost == 2
	}) {
		t.Fatalf("the racing processes did not settle; stderr:\n%s\n%s", racers[0].errb, racers[1].errb)
	}
	wins := 0
	for _, p := range racers {
		if !p.exited() {
			wins++
		} else if code := p.cmd.ProcessState.ExitCode(); code != crashcheck.ExitNodeLeased {
			t.Errorf("losing racer: exit status %d, want %d; stderr:\n%s", code, crashcheck.ExitNodeLeased, p.errb)
		}
	}
	if wins != 1 {
		t.Fatalf("%d processes hold node %s, want exactly 1", wins, node)
	}
	l, _ := c.lease(node)
	if l.PID != winner.cmd.Process.Pid || l.Epoch <= e0 || !l.Live {
		t.Errorf("lease after the race: %+v, want a new epoch (> %d) held by the winner, pid %d", l, e0, winner.cmd.Process.Pid)
	}
	winner.waitCommits(t, 0, 2, 20*time.Second)
	c.stopAll("HA: duplicate node id refused; race for a released lease")
}

// TestHAStoreServerKill SIGKILLs the PostgreSQL server holding the store
// (a database of its own, on the server that is also the PostgreSQL
// participant) while three replicas run transfers, and starts it again.
// Every replica must get going again — deciding under a lease, its own or
// a new epoch — and every invariant holds. Not parallel: it kills the
// server every other test uses.
func TestHAStoreServerKill(t *testing.T) {
	e := getEnv(t)
	c := e.newHACluster(t)
	id := suffix()
	procs := []*haProc{c.start("ha-s1-"+id, haStart{}), c.start("ha-s2-"+id, haStart{}), c.start("ha-s3-"+id, haStart{})}
	for _, p := range procs {
		p.ready(t)
		p.waitCommits(t, 0, 3, 30*time.Second)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	if err := e.pair.Kill9(ctx, dbproc.PG); err != nil {
		t.Fatal(err)
	}
	killed := time.Now()
	if err := e.pair.StartServer(ctx, dbproc.PG); err != nil {
		t.Fatal(err)
	}
	logTiming(t, "store server SIGKILL: back up after %s", time.Since(killed).Round(time.Millisecond))
	for _, p := range procs {
		n := p.committed(t)
		p.waitCommits(t, n, 3, 60*time.Second)
	}
	logTiming(t, "store server SIGKILL: every replica deciding again %s after the kill", time.Since(killed).Round(time.Millisecond))
	c.stopAll("HA: store's PostgreSQL SIGKILLed and restarted under load")
}

// TestHARollingRestart stops and restarts each of three replicas in turn
// (SIGTERM: in-flight transfers finish, the lease is released) while the
// others run transfers: the restarted process takes its node back under a
// new epoch without waiting for the TTL, and decides again.
func TestHARollingRestart(t *testing.T) {
	e := getEnv(t)
	t.Parallel()
	c := e.newHACluster(t)
	id := suffix()
	procs := []*haProc{c.start("ha-r1-"+id, haStart{}), c.start("ha-r2-"+id, haStart{}), c.start("ha-r3-"+id, haStart{})}
	epochs := make([]int64, len(procs))
	for i, p := range procs {
		epochs[i] = p.ready(t)
		p.waitCommits(t, 0, 2, 30*time.Second)
	}
	for i, p := range procs {
		p.stop(t)
		at := time.Now()
		// A survivor may claim the released lease in its next pass (there
		// is nothing to take over, and it releases it again at once): the
		// restarted process is then refused, as a pod would be, and tries
		// again.
		next, refused := c.restart(p.node, haStart{})
		epoch := next.ready(t)
		logTiming(t, "rolling restart of %s: back under epoch %d (was %d) %s after the stop, %d refused starts",
			p.node, epoch, epochs[i], time.Since(at).Round(time.Millisecond), refused)
		if epoch <= epochs[i] {
			t.Errorf("%s restarted under epoch %d, not above %d", p.node, epoch, epochs[i])
		}
		next.waitCommits(t, 0, 2, 30*time.Second)
		procs[i] = next
	}
	c.stopAll("HA: rolling restart of three replicas under load")
}
