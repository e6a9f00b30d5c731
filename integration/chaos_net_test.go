package integration

import (
	"bytes"
	"context"
	"encoding/hex"
	"regexp"
	"testing"
	"time"

	"github.com/xabridge/xabridge/drivers"
	"github.com/xabridge/xabridge/internal/bank"
	"github.com/xabridge/xabridge/internal/crashcheck"
	"github.com/xabridge/xabridge/internal/dbproc"
	"github.com/xabridge/xabridge/internal/netfault"
	"github.com/xabridge/xabridge/xa"
)

// netRun is a workload running through TCP proxies in front of both
// private servers.
type netRun struct {
	t       *testing.T
	s       *scenario
	proxies map[dbproc.Server]*netfault.Proxy
	bank    *bank.Bank // connected through the proxies
	coord   *xa.Coordinator
	w       *crashcheck.Workload
	journal *syncWriter
	cancel  context.CancelFunc
	done    chan struct{}
}

func (e *chaosEnv) startNetRun(t *testing.T, timeout time.Duration) *netRun {
	t.Helper()
	s := e.newScenario(t, 4)
	r := &netRun{t: t, s: s, proxies: map[dbproc.Server]*netfault.Proxy{}, journal: &syncWriter{w: &bytes.Buffer{}}, done: make(chan struct{})}
	for _, srv := range []dbproc.Server{dbproc.PG, dbproc.My} {
		p, err := netfault.Listen(e.pair.Addr(srv))
		if err != nil {
			t.Fatal(err)
		}
		r.proxies[srv] = p
	}
	ctx := context.Background()
	b, err := bank.Open(ctx, "postgres://postgres@"+r.proxies[dbproc.PG].Addr()+"/xabridge?sslmode=disable",
		"mysql://root@"+r.proxies[dbproc.My].Addr()+"/xabridge", 4)
	if err != nil {
		t.Fatal(err)
	}
	if err := b.SetPrefix(s.prefix); err != nil {
		t.Fatal(err)
	}
	r.bank = b
	r.coord, err = xa.New(ctx, xa.Config{
		NodeID: s.node, LogDir: s.logDir, Resources: []drivers.Resource{b.PG, b.My},
		Timeout: timeout, Phase2Timeout: time.Second, RollbackTimeout: time.Second,
	})
	if err != nil {
		t.Fatal(err)
	}
	r.w = &crashcheck.Workload{Bank: b, Coord: r.coord, Order: crashcheck.Mixed, Workers: 2, Accounts: chaosAccounts, Seed: 11,
		Journal: crashcheck.NewJournalWriter(r.journal)}
	wctx, cancel := context.WithCancel(ctx)
	r.cancel = cancel
	go func() {
		defer close(r.done)
		r.w.Run(wctx)
	}()
	r.waitCommits(3, "before the fault")
	return r
}

// waitCommits waits until n more transfers have committed.
func (r *netRun) waitCommits(n int64, when string) {
	r.t.Helper()
	base := r.w.Progress().Committed.Load()
	if !poll(60*time.Second, func() bool { return r.w.Progress().Committed.Load() >= base+n }) {
		r.t.Fatalf("fewer than %d transfers committed within 60s %s (%s)", n, when, r.w.Progress())
	}
}

// outcome waits until the journal has the outcome of transfer id.
func (r *netRun) outcome(id string) crashcheck.Outcome {
	r.t.Helper()
	var o crashcheck.Outcome
	ok := poll(60*time.Second, func() bool {
		r.journal.mu.Lock()
		j, err := crashcheck.ReadJournal(bytes.NewReader(r.journal.w.Bytes()))
		r.journal.mu.Unlock()
		if err != nil {
			return false
		}
		o = j[id]
		return o != crashcheck.InFlight
	})
	if !ok {
		r.t.Fatalf("transfer %s never returned", id)
	}
	return o
}

// finish stops the workload, the coordinator and the proxies, recovers,
// checks the invariants and returns the journal and the result.
func (r *netRun) finish() (crashcheck.Journal, crashcheck.Result) {
	r.t.Helper()
	r.cancel()
	<-r.done
	if err := r.coord.Close(); err != nil {
		r.t.Errorf("closing the coordinator: %v", err)
	}
	r.bank.Close()
	for _, p := range r.proxies {
		if err := p.Close(); err != nil {
			r.t.Errorf("closing a proxy: %v", err)
		}
	}
	j, err := crashcheck.ReadJournal(bytes.NewReader(r.journal.w.Bytes()))
	if err != nil {
		r.t.Fatal(err)
	}
	return j, r.s.recoverAndCheck(j)
}

var (
	pgGIDRe   = regexp.MustCompile(`xab1:([a-z0-9.\-]+):`)
	myGTRIDRe = regexp.MustCompile(`X'([0-9a-fA-F]+)'`)
)

// victimOf extracts the global id from a cut statement.
func victimOf(t *testing.T, srv dbproc.Server, chunk []byte) string {
	t.Helper()
	if srv == dbproc.PG {
		if m := pgGIDRe.FindSubmatch(chunk); m != nil {
			return string(m[1])
		}
	} else if m := myGTRIDRe.FindSubmatch(chunk); m != nil {
		if g, err := hex.DecodeString(string(m[1])); err == nil {
			return string(g)
		}
	}
	t.Fatalf("no xid in the cut statement %q", chunk)
	return ""
}

// TestChaosNetwork puts a TCP proxy between the coordinator and each
// database and breaks the connection at the worst moments, on each engine:
//   - cut right after PREPARE reached the server (the answer is lost): the
//     branch is in doubt, so the transaction aborts and the branch is rolled
//     back by XID, never guessed;
//   - cut right after COMMIT reached the server: the transaction is decided,
//     so phase 2 retries and the transfer ends committed on both sides;
//   - cut after COMMIT and keep the partition: the caller is told "commit
//     pending" (never "aborted"), and after the partition heals the transfer
//     is committed on both sides;
//   - a slow participant (latency beyond the transaction timeout): the
//     transactions abort, whole;
//   - a black hole during the work (partition): the transactions abort, and
//     once it heals transfers commit again.
//
// After each, recovery runs and every invariant is checked.
func TestChaosNetwork(t *testing.T) {
	e := getEnv(t)
	pattern := map[dbproc.Server][2]string{
		dbproc.PG: {"PREPARE TRANSACTION", "COMMIT PREPARED"},
		dbproc.My: {"XA PREPARE", "XA COMMIT"},
	}
	for _, srv := range []dbproc.Server{dbproc.PG, dbproc.My} {
		engine := map[dbproc.Server]string{dbproc.PG: "postgres", dbproc.My: "mariadb"}[srv]
		t.Run(engine+"/cut-mid-prepare", func(t *testing.T) {
			t.Parallel()
			r := e.startNetRun(t, 5*time.Second)
			cut, err := r.proxies[srv].CutOnce(pattern[srv][0], netfault.CutAfterSend, nil)
			if err != nil {
				t.Fatal(err)
			}
			<-cut.Fired()
			victim := victimOf(t, srv, cut.Chunk())
			if o := r.outcome(victim); o != crashcheck.Aborted {
				t.Errorf("transfer %s whose PREPARE answer was lost was reported %q, want aborted", victim, o)
			}
			r.waitCommits(3, "after the cut")
			j, res := r.finish()
			r.s.wantPresent(victim, false)
			results.add("connection cut after PREPARE sent", engine, 1, len(j), res)
		})
		t.Run(engine+"/cut-mid-commit", func(t *testing.T) {
			t.Parallel()
			r := e.startNetRun(t, 5*time.Second)
			cut, err := r.proxies[srv].CutOnce(pattern[srv][1], netfault.CutAfterSend, nil)
			if err != nil {
				t.Fatal(err)
			}
			<-cut.Fired()
			victim := victimOf(t, srv, cut.Chunk())
			if o := r.outcome(victim); o != crashcheck.Committed && o != crashcheck.Pending {
				t.Errorf("transfer %s whose COMMIT answer was lost was reported %q, want committed or pending", victim, o)
			}
			r.waitCommits(3, "after the cut")
			j, res := r.finish()
			r.s.wantPresent(victim, true)
			results.add("connection cut after COMMIT sent", engine, 1, len(j), res)
		})
		t.Run(engine+"/partition-mid-commit", func(t *testing.T) {
			t.Parallel()
			r := e.startNetRun(t, 5*time.Second)
			p := r.proxies[srv]
			cut, err := p.CutOnce(pattern[srv][1], netfault.CutAfterSend, p.Blackhole)
			if err != nil {
				t.Fatal(err)
			}
			<-cut.Fired()
			victim := victimOf(t, srv, cut.Chunk())
			if o := r.outcome(victim); o != crashcheck.Pending {
				t.Errorf("transfer %s cut off during COMMIT was reported %q, want commit pending", victim, o)
			}
			p.Heal()
			r.waitCommits(3, "after the partition healed")
			j, res := r.finish()
			r.s.wantPresent(victim, true)
			results.add("partition after COMMIT sent", engine, 1, len(j), res)
		})
		t.Run(engine+"/slow-participant", func(t *testing.T) {
			t.Parallel()
			r := e.startNetRun(t, time.Second)
			p := r.proxies[srv]
			aborted := r.w.Progress().Aborted.Load()
			p.SetLatency(400 * time.Millisecond)
			if !poll(60*time.Second, func() bool { return r.w.Progress().Aborted.Load() >= aborted+3 }) {
				t.Fatalf("no transfer timed out against a participant 400ms away (%s)", r.w.Progress())
			}
			p.SetLatency(0)
			r.waitCommits(3, "after the latency was removed")
			j, res := r.finish()
			results.add("slow participant (latency > timeout)", engine, 0, len(j), res)
		})
		t.Run(engine+"/partition-during-work", func(t *testing.T) {
			t.Parallel()
			r := e.startNetRun(t, 2*time.Second)
			p := r.proxies[srv]
			aborted := r.w.Progress().Aborted.Load()
			p.Blackhole()
			if !poll(60*time.Second, func() bool { return r.w.Progress().Aborted.Load() >= aborted+2 }) {
				t.Fatalf("no transfer aborted while its database was unreachable (%s)", r.w.Progress())
			}
			p.Heal()
			r.waitCommits(3, "after the partition healed")
			j, res := r.finish()
			results.add("black hole (partition) during work", engine, 1, len(j), res)
		})
	}
}

// wantPresent checks that transfer id is in both databases (want) or in
// neither.
func (s *scenario) wantPresent(id string, want bool) {
	s.t.Helper()
	inPG, inMy, err := crashcheck.TransferPresent(context.Background(), s.bank, id)
	if err != nil {
		s.t.Fatal(err)
	}
	if inPG != want || inMy != want {
		s.t.Errorf("transfer %s: in postgres %v, in mysql %v; want both %v", id, inPG, inMy, want)
	}
}
