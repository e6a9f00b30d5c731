package replica

import (
	"context"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/xabridge/xabridge/decisionlog/pgstore"
	"github.com/xabridge/xabridge/drivers"
	"github.com/xabridge/xabridge/internal/bank"
	"github.com/xabridge/xabridge/internal/dbtest"
	"github.com/xabridge/xabridge/internal/startup"
	"github.com/xabridge/xabridge/xa"
)

// TestTakeoverEndsStalledSessions: a node cut off from the store (its
// lease runs out) while its transactions hang with their MariaDB sessions
// open, as a paused process's do. MariaDB refuses to finish those branches
// from another session while their sessions live, so the claimant ends the
// node's marked sessions: every branch of the node is settled while it is
// still stalled, within TTL + a pass or two. A live peer's transaction,
// stopped prepared on MariaDB meanwhile, keeps its session and commits on
// it. When the stalled node goes on, no caller is told committed for what
// rolled back, and it rejoins under a new epoch.
func TestTakeoverEndsStalledSessions(t *testing.T) {
	ctx := ctxT(t)
	w := newWorld(t)
	sfx := suffix()
	const ttl = 2 * time.Second
	stop, peerStop := newStopper(), newStopper()
	var releaseOnce, peerOnce sync.Once
	release := func() { releaseOnce.Do(func() { close(stop.release) }) }
	releasePeer := func() { peerOnce.Do(func() { close(peerStop.release) }) }
	// On a failure, the stopped transactions must still end, or closing
	// the nodes would wait for them forever. (Registered before the nodes:
	// cleanups run last-in first-out.)
	defer release()
	defer releasePeer()
	victim := w.open("st-"+sfx, nodeOpts{storeProxy: true, hook: stop.hook, ttl: ttl})
	surv := w.open("ss-"+sfx, nodeOpts{ttl: ttl, every: 500 * time.Millisecond})
	peer := w.open("sp-"+sfx, nodeOpts{ttl: ttl, hook: peerStop.hook, noTakeover: true})
	results, gs := runStopped(t, victim, stop, dyingStops, 1)
	peerResults, _ := runStopped(t, peer, peerStop, []stopAt{{step: xa.StepPrepared, resource: "mysql"}}, 10)
	if n, _ := startup.InDoubt(ctx, victim.id, w.bank.My); n == 0 {
		t.Fatal("nothing of the victim is prepared on MariaDB")
	}
	epoch0 := victim.r.Store().Epoch()

	victim.proxies[0].Blackhole() // the store only: its MariaDB sessions stay open
	cut := time.Now()
	waitFor(t, 30*time.Second, "the survivor to settle the stalled node's branches on both databases", func() bool {
		n, err := w.prepared(victim.id)
		if err != nil || n != 0 {
			return false
		}
		p, err := surv.r.Store().PendingContext(ctx, victim.id)
		return err == nil && len(p) == 0
	})
	took := time.Since(cut)
	t.Logf("store cut → nothing of the stalled node prepared or pending in %s (TTL %s, passes every %s)", took.Round(time.Millisecond), ttl, surv.r.RecoverEvery())
	if limit := ttl + 2*surv.r.RecoverEvery() + 5*time.Second; took > limit {
		t.Errorf("took %s, more than TTL + two passes + settle and scans (%s)", took, limit)
	}
	// The takeover counts once its claim is released, after the last pass.
	waitFor(t, 10*time.Second, "the survivor to count a finished takeover", func() bool { return surv.r.Stats().Takeovers >= 1 })
	// The live peer's branch: still prepared on its own session, and it
	// commits there.
	if n, _ := startup.InDoubt(ctx, peer.id, w.bank.My); n != 1 {
		t.Errorf("the live peer has %d branches prepared on MariaDB, want its 1", n)
	}
	releasePeer()
	if r := <-peerResults; r.err != nil {
		t.Errorf("the live peer's transfer, stopped prepared during the takeover: %v", r.err)
	}

	release()
	for range dyingStops {
		r := <-results
		pg, my := w.transferIn(r.id)
		if r.err == nil && !(pg && my) {
			t.Errorf("stalled node's transfer %s: told committed, present pg=%v my=%v", r.id, pg, my)
		}
		if xa.OutcomeOf(r.err) == xa.Aborted && (pg || my) {
			t.Errorf("stalled node's transfer %s: told aborted (%v), present pg=%v my=%v", r.id, r.err, pg, my)
		}
	}
	for _, g := range gs {
		pg, my := w.transferIn(g.String())
		if want := decided(stop.stepOf(g)); pg != want || my != want {
			t.Errorf("%s stopped at %v: present pg=%v my=%v, want %v", g, stop.stepOf(g), pg, my, want)
		}
	}
	victim.proxies[0].Heal()
	waitFor(t, 30*time.Second, "the stalled node to rejoin under a new epoch", func() bool {
		return victim.r.Store().LeaseErr() == nil && victim.r.Store().Epoch() > epoch0+1
	})
	waitFor(t, 30*time.Second, "a transfer on the rejoined node", func() bool {
		tctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		defer cancel()
		_, err := victim.b.Do(tctx, victim.r.Coordinator(), bank.Transfer{PGAccount: 19, MyAccount: 19, Amount: 3})
		return err == nil
	})
	w.assertInvariants(victim.id, surv.id, peer.id)
}

// TestSharedResourcesRefused: a resource carries one mark, so a second
// replica of the process on the same resources is refused while the first
// is open (a takeover of one would end the other's sessions), and accepted
// once it closed.
func TestSharedResourcesRefused(t *testing.T) {
	ctx := ctxT(t)
	w := newWorld(t)
	sfx := suffix()
	first := w.open("sh1-"+sfx, nodeOpts{})
	cfg := Config{
		Coordinator: xa.Config{NodeID: "sh2-" + sfx, Resources: []drivers.Resource{first.b.PG, first.b.My}},
		Pool:        storePool(t, dbtest.PG(t)),
		Store:       pgstore.Options{Schema: w.schema, LeaseTTL: 2 * time.Second},
	}
	if r, err := Open(ctx, cfg); err == nil || !strings.Contains(err.Error(), "give each replica its own resources") {
		if r != nil {
			_ = r.Close()
		}
		t.Fatalf("a second replica on the first's resources: %v; want a refusal", err)
	}
	first.close()
	r, err := Open(ctx, cfg)
	if err != nil {
		t.Fatalf("the same resources once the first replica closed: %v", err)
	}
	if err := r.Close(); err != nil {
		t.Fatal(err)
	}
}
