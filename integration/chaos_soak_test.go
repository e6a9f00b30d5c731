package integration

import (
	"fmt"
	"math/rand/v2"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/xabridge/xabridge/internal/crashcheck"
)

// soakDuration is how long TestChaosRandomKills runs: -soak, or
// XABRIDGE_SOAK (a Go duration); 0 means the short run CI does.
func soakDuration(t *testing.T) time.Duration {
	if *soakFlag > 0 {
		return *soakFlag
	}
	if v := os.Getenv("XABRIDGE_SOAK"); v != "" {
		d, err := time.ParseDuration(v)
		if err != nil || d < 0 {
			t.Fatalf("XABRIDGE_SOAK=%q: want a duration such as 10m", v)
		}
		return d
	}
	return 0
}

// TestChaosRandomKills runs the crash app again and again on the same
// tables and log, killing it each time either from outside at a random
// moment or at a random crash point, with the decisions kept in the log or
// in a participant at random, and recovers and checks every invariant after
// each kill. CI runs a few kills; with -soak 30m (or
// XABRIDGE_SOAK=30m) it runs for that long and prints a summary (run it with
// -v -timeout 0 to see it and not be cut short).
func TestChaosRandomKills(t *testing.T) {
	e := getEnv(t)
	soak := soakDuration(t)
	s := e.newScenario(t, 4)
	rng := rand.New(rand.NewPCG(uint64(time.Now().UnixNano()), 1))
	points := append(crashcheck.MatrixPoints(), "after-all-prepared", "after-end")
	// A share of the runs are replicas on a shared store: a survivor
	// replica takes the killed one over (see storeSoakRun).
	hc := e.haClusterOn(t, s)
	storeNode := "chs-" + suffix()
	start := time.Now()
	var kills, txns, violations, stranded, runs int
	for runs = 0; ; runs++ {
		if soak == 0 && runs == 6 || soak > 0 && time.Since(start) > soak {
			break
		}
		if runs%3 == 2 {
			n, res := storeSoakRun(t, hc, storeNode, points, rng)
			kills++
			txns += n
			violations += len(res.Violations)
			stranded += res.Stranded
			results.add("random SIGKILL of a replica on the shared store, taken over by a survivor", "both; shared store", 1, n, res)
			if t.Failed() {
				break
			}
			continue
		}
		order := []crashcheck.Order{crashcheck.PGFirst, crashcheck.MyFirst, crashcheck.Mixed}[rng.IntN(3)]
		// Each run keeps its decisions in the log or in a participant; the
		// runs share the tables and the log, so recovery also finds what
		// runs with another keeper left behind.
		s.keeper = []crashcheck.Keeper{crashcheck.KeeperNone, crashcheck.KeeperPG, crashcheck.KeeperMy}[rng.IntN(3)]
		var r childRun
		if runs%2 == 0 {
			// From outside, at any moment: the process may be anywhere.
			r = s.runChild(order, "", 1, 4, 0, time.Duration(150+rng.IntN(500))*time.Millisecond, rng.Uint64())
		} else {
			point := points[rng.IntN(len(points))]
			if s.keeper != crashcheck.KeeperNone && strings.HasPrefix(point, "after-prepare:") {
				// The keeper's branch never prepares: with a fixed order
				// the point might never be reached.
				order = crashcheck.Mixed
			}
			r = s.runChild(order, point, 1+rng.IntN(20), 4, 0, 0, rng.Uint64())
		}
		if !r.killed {
			t.Fatalf("run %d: the crash app was not killed (exit %d); stderr:\n%s", runs, r.exitCode, r.stderr)
		}
		kills++
		res := s.recoverAndCheck(r.journal)
		txns += len(r.journal)
		violations += len(res.Violations)
		stranded += res.Stranded
		results.add("random SIGKILL (outside or at a random step; decisions in the log or a participant)", "both", 1, len(r.journal), res)
		if t.Failed() {
			break
		}
	}
	summary := fmt.Sprintf("soak: %d kills, %d transactions, %d transfers committed, %d violations, %d stranded, %s",
		kills, txns, mustTransfers(t, s), violations, stranded, time.Since(start).Round(time.Second))
	t.Log(summary)
	if soak > 0 {
		fmt.Println(summary)
	}
}

func mustTransfers(t *testing.T, s *scenario) int {
	t.Helper()
	st, err := s.bank.Check(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	return st.PGTransfers
}

// storeSoakRun runs a replica on the shared store with node id node, kills
// it (from outside at a random moment, or at a random crash point), starts
// a survivor replica that takes its node over once the lease expires, waits
// until nothing of the node is stranded, stops the survivor and checks the
// invariants over every replica of the soak so far.
func storeSoakRun(t *testing.T, hc *haCluster, node string, points []string, rng *rand.Rand) (int, crashcheck.Result) {
	t.Helper()
	var p *haProc
	if rng.IntN(2) == 0 {
		p = hc.start(node, haStart{workers: 4})
		p.ready(t)
		time.AfterFunc(time.Duration(150+rng.IntN(500))*time.Millisecond, func() { _ = p.cmd.Process.Kill() })
	} else {
		p = hc.start(node, haStart{workers: 4, crash: points[rng.IntN(len(points))], nth: 1 + rng.IntN(20)})
	}
	p.wait(t, time.Minute)
	if !p.killed() {
		t.Fatalf("replica %s was not killed (status %v); stderr:\n%s", node, p.cmd.ProcessState, p.errb)
	}
	surv := hc.start("chs-surv-"+suffix(), haStart{workers: 1})
	surv.ready(t)
	settled := hc.waitSettled(p.endedAt, time.Minute, node)
	// The dead process's lease runs out (the survivor may claim it), so
	// that the next store run takes the node back under a new epoch.
	hc.waitLease(node, time.Minute, "no longer held by the dead process", func(l haLease) bool { return l.Holder != node || !l.Live })
	t.Logf("store run: the killed replica's branches settled %s after the kill", settled.Round(time.Millisecond))
	surv.stop(t)
	res, _ := hc.check()
	return len(p.journal(t)), res
}
