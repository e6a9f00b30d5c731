package replica

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/xabridge/xabridge/decisionlog"
	"github.com/xabridge/xabridge/decisionlog/pgstore"
	"github.com/xabridge/xabridge/drivers"
	"github.com/xabridge/xabridge/internal/bank"
	"github.com/xabridge/xabridge/recovery"
	"github.com/xabridge/xabridge/xa"
)

// The stops of a dying node's transactions: decided (before phase 2, and
// during it with one branch committed) and undecided (all prepared, or
// only MariaDB's). Decided ones must commit, undecided ones roll back.
var dyingStops = []stopAt{
	{step: xa.StepDecided},
	{step: xa.StepDecided},
	{step: xa.StepCommitting, resource: "mysql"},
	{step: xa.StepAllPrepared},
	{step: xa.StepAllPrepared},
	{step: xa.StepPrepared, resource: "mysql"},
}

func decided(s stopAt) bool { return s.step == xa.StepDecided || s.step == xa.StepCommitting }

// TestTakeoverOfDeadNode: a node dies (every connection cut, its lease no
// longer renewed, never released) with commit decisions pending and
// undecided prepared branches. One of two survivors claims it after its
// lease expires, commits the decided transactions, rolls back the
// undecided ones (abort recorded first), and releases it: nothing of the
// dead node is left prepared within TTL + a pass or two (plus the settle
// wait), and money is conserved. Then the dead node comes back under a
// new epoch and sees what the claimant did. With decisions in the log, and
// kept in PostgreSQL (keeper mode).
func TestTakeoverOfDeadNode(t *testing.T) {
	for _, keeper := range []bool{false, true} {
		name := "log"
		if keeper {
			name = "keeper"
		}
		t.Run(name, func(t *testing.T) { testTakeoverOfDeadNode(t, keeper) })
	}
}

func testTakeoverOfDeadNode(t *testing.T, keeper bool) {
	ctx := ctxT(t)
	w := newWorld(t)
	if keeper {
		w.keeper = true
		if err := w.bank.PG.EnsureDecisionTable(ctx); err != nil {
			t.Fatal(err)
		}
	}
	sfx := suffix()
	const ttl = 2 * time.Second
	stop := newStopper()
	victim := w.open("dead-"+sfx, nodeOpts{viaProxy: true, hook: stop.hook, ttl: ttl})
	survivors := []*node{
		w.open("sa-"+sfx, nodeOpts{ttl: ttl, every: 500 * time.Millisecond}),
		w.open("sb-"+sfx, nodeOpts{ttl: ttl, every: 500 * time.Millisecond}),
	}
	// The victim works before it dies.
	for i := range 3 {
		if _, err := victim.b.Do(ctx, victim.r.Coordinator(), bank.Transfer{PGAccount: int64(15 + i), MyAccount: int64(15 + i), Amount: 5}); err != nil {
			t.Fatalf("transfer before the death: %v", err)
		}
	}
	results, gs := runStopped(t, victim, stop, dyingStops, 1)
	if n, _ := w.prepared(victim.id); n == 0 {
		t.Fatal("nothing of the victim is prepared")
	}
	epoch0 := victim.r.Store().Epoch()

	killed := time.Now()
	victim.kill()
	waitFor(t, 60*time.Second, "the survivors to settle the dead node", func() bool {
		n, err := w.prepared(victim.id)
		if err != nil || n != 0 {
			return false
		}
		p, err := survivors[0].r.Store().PendingContext(ctx, victim.id)
		return err == nil && len(p) == 0
	})
	took := time.Since(killed)
	t.Logf("takeover (%s): kill → nothing of the dead node prepared or pending in %s (lease TTL %s, passes every %s, settle 1s)",
		map[bool]string{false: "log", true: "keeper"}[keeper], took.Round(time.Millisecond), ttl, survivors[0].r.RecoverEvery())
	if limit := ttl + 2*survivors[0].r.RecoverEvery() + 5*time.Second; took > limit {
		t.Errorf("takeover took %s, more than TTL + two passes + settle and scans (%s)", took, limit)
	}

	// The dead process's goroutines go on into dead connections; what they
	// are told no longer reaches anyone, but it must not say "committed"
	// for what rolled back.
	close(stop.release)
	for range dyingStops {
		r := <-results
		pg, my := w.transferIn(r.id)
		if r.err == nil && !(pg && my) {
			t.Errorf("dead node's transfer %s: told committed, present pg=%v my=%v", r.id, pg, my)
		}
		if xa.OutcomeOf(r.err) == xa.Aborted && (pg || my) {
			t.Errorf("dead node's transfer %s: told aborted (%v), present pg=%v my=%v", r.id, r.err, pg, my)
		}
	}
	victim.close()

	// Decided transactions committed everywhere; undecided ones nowhere,
	// with the abort recorded in the store.
	st := survivors[0].r.Store()
	for _, g := range gs {
		pg, my := w.transferIn(g.String())
		e, _, err := st.LookupContext(ctx, g)
		if err != nil {
			t.Fatal(err)
		}
		if want := decided(stop.stepOf(g)); pg != want || my != want {
			t.Errorf("%s stopped at %v: present pg=%v my=%v, want %v", g, stop.stepOf(g), pg, my, want)
		} else if !want && e.State != decisionlog.StateAborted {
			t.Errorf("%s rolled back, but the store says %v (want the claimant's abort)", g, e.State)
		}
	}
	var won int64
	for _, s := range survivors {
		won += s.r.Stats().Takeovers
	}
	if won < 1 {
		t.Errorf("no survivor reports a takeover")
	}
	info, err := st.NodeInfo(ctx, victim.id)
	if err != nil {
		t.Fatal(err)
	}
	if info.Epoch <= epoch0 || info.Holder.Node == victim.id || info.State != pgstore.NodeExpired {
		t.Errorf("dead node's lease after the takeover: %+v (its own epoch was %d)", info, epoch0)
	}
	w.assertInvariants(victim.id)
	if keeper {
		// The dead node's kept commit decisions are finished: deleted
		// from the keeper's table (abort markers stay until retention).
		var kept int
		if err := w.bank.PGPool.QueryRow(ctx, `SELECT count(*) FROM xabridge_decisions WHERE state = 'C' AND gtrid LIKE $1`, victim.id+".%").Scan(&kept); err != nil {
			t.Fatal(err)
		}
		if kept != 0 {
			t.Errorf("%d commit decisions of the dead node left in the keeper", kept)
		}
	}

	// The dead node comes back (same id, a new process): under a new epoch,
	// it sees the claimant's aborts and ends, has nothing left to do, and
	// works.
	back := w.open(victim.id, nodeOpts{ttl: ttl})
	if got := back.r.Store().Epoch(); got != info.Epoch+1 {
		t.Errorf("the returning node's epoch %d, want %d", got, info.Epoch+1)
	}
	for _, g := range gs {
		e, _, err := back.r.Store().LookupContext(ctx, g)
		if err != nil {
			t.Fatal(err)
		}
		want := decisionlog.StateAborted
		if decided(stop.stepOf(g)) {
			want = decisionlog.StateDone
			if keeper {
				// Kept decisions are in the keeper, not the store.
				want = decisionlog.StateNone
			}
		}
		if e.State != want {
			t.Errorf("the returning node sees %s as %v, want %v", g, e.State, want)
		}
	}
	rep, err := back.r.Pass(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if rep.Own.Remaining() != 0 || acted(rep.Own) != 0 {
		t.Errorf("the returning node's own pass found work: %d remaining, %d acted", rep.Own.Remaining(), acted(rep.Own))
	}
	if _, err := back.b.Do(ctx, back.r.Coordinator(), bank.Transfer{PGAccount: 19, MyAccount: 19, Amount: 3}); err != nil {
		t.Errorf("transfer on the returning node: %v", err)
	}
	w.assertInvariants(victim.id, survivors[0].id, survivors[1].id)
}

// TestClaimRace: survivors race for one expired node; exactly one claims
// it, and while it holds the claim the others' TakeOver is refused. After
// each release they race again, a new epoch each time.
func TestClaimRace(t *testing.T) {
	ctx := ctxT(t)
	w := newWorld(t)
	sfx := suffix()
	victim := w.open("gone-"+sfx, nodeOpts{viaProxy: true, ttl: time.Second})
	victim.kill()
	var stores []*pgstore.Store
	for i := range 4 {
		s, err := pgstore.Open(ctx, w.pool, pgstore.Options{Node: fmt.Sprintf("c%d-%s", i, sfx), Schema: w.schema, LeaseTTL: 2 * time.Second})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = s.Close() })
		stores = append(stores, s)
	}
	waitFor(t, 10*time.Second, "the dead node's lease to expire", func() bool {
		info, err := stores[0].NodeInfo(ctx, victim.id)
		return err == nil && info.State == pgstore.NodeExpired
	})
	resources := []drivers.Resource{w.bank.PG, w.bank.My}
	lastEpoch := int64(0)
	for round := range 5 {
		var (
			wg     sync.WaitGroup
			start  = make(chan struct{})
			epochs = make([]int64, len(stores))
			errs   = make([]error, len(stores))
		)
		for i, s := range stores {
			wg.Add(1)
			go func() {
				defer wg.Done()
				<-start
				epochs[i], errs[i] = s.Claim(ctx, victim.id)
			}()
		}
		close(start)
		wg.Wait()
		winner := -1
		for i, err := range errs {
			switch {
			case err == nil && winner >= 0:
				t.Fatalf("round %d: stores %d and %d both claimed the node", round, winner, i)
			case err == nil:
				winner = i
			case !isLeased(err):
				t.Fatalf("round %d: claim by store %d: %v", round, i, err)
			}
		}
		if winner < 0 {
			t.Fatalf("round %d: nobody claimed the expired node", round)
		}
		if epochs[winner] <= lastEpoch {
			t.Fatalf("round %d: epoch %d after %d", round, epochs[winner], lastEpoch)
		}
		lastEpoch = epochs[winner]
		for i, s := range stores {
			if i == winner {
				continue
			}
			if _, err := TakeOver(ctx, s, victim.id, recovery.Config{Resources: resources, Settle: -1}); !isLeased(err) {
				t.Fatalf("round %d: takeover by store %d while %d holds the claim: %v", round, i, winner, err)
			}
		}
		if err := stores[winner].Release(ctx, victim.id); err != nil {
			t.Fatal(err)
		}
	}
	// A whole TakeOver, once released, works and leaves it expired.
	rep, err := TakeOver(ctx, stores[1], victim.id, recovery.Config{Resources: resources, Settle: -1})
	if err != nil || rep.Remaining() != 0 {
		t.Fatalf("takeover of an empty dead node: %v", err)
	}
	if info, err := stores[1].NodeInfo(ctx, victim.id); err != nil || info.State != pgstore.NodeExpired || info.Epoch != lastEpoch+1 {
		t.Fatalf("after the takeover: %+v, %v", info, err)
	}
}

// TestLiveNodeNeverTouched: a survivor's passes never act on a live node's
// prepared transactions, however long they stay prepared, and TakeOver of
// a live node is refused without touching anything.
func TestLiveNodeNeverTouched(t *testing.T) {
	ctx := ctxT(t)
	w := newWorld(t)
	sfx := suffix()
	stop := newStopper()
	live := w.open("live-"+sfx, nodeOpts{hook: stop.hook, ttl: time.Second})
	surv := w.open("surv-"+sfx, nodeOpts{ttl: time.Second, every: 200 * time.Millisecond})
	stops := []stopAt{{step: xa.StepDecided}, {step: xa.StepAllPrepared}}
	results, _ := runStopped(t, live, stop, stops, 1)
	before, err := w.prepared(live.id)
	if err != nil || before < 3 {
		t.Fatalf("prepared branches of the live node: %d, %v", before, err)
	}
	// Several lease TTLs and many survivor passes.
	p0 := surv.r.Stats().Passes
	waitFor(t, 30*time.Second, "the survivor's passes", func() bool { return surv.r.Stats().Passes >= p0+12 })
	if st := surv.r.Stats(); st.Takeovers != 0 || st.TakeoverFailures != 0 {
		t.Fatalf("the survivor took over a live node: %+v", st)
	}
	if _, err := TakeOver(ctx, surv.r.Store(), live.id, recovery.Config{Resources: []drivers.Resource{w.bank.PG, w.bank.My}, Settle: -1}); !isLeased(err) {
		t.Fatalf("TakeOver of a live node: %v, want ErrNodeLeased", err)
	}
	if n, err := w.prepared(live.id); err != nil || n != before {
		t.Fatalf("the live node's prepared branches went from %d to %d (%v)", before, n, err)
	}
	close(stop.release)
	for range stops {
		if r := <-results; r.err != nil {
			t.Errorf("the live node's transfer %s: %v", r.id, r.err)
		}
	}
	w.assertInvariants(live.id, surv.id)
}

// TestLeaseLostMidTraffic: a node cut off from its store (a black hole)
// while transfers run stops deciding: callers are told aborted or in
// doubt, never committed for what is not. A survivor takes the node over
// once its lease expires; when the cut heals the node takes its lease
// again under a later epoch and works again.
func TestLeaseLostMidTraffic(t *testing.T) {
	ctx := ctxT(t)
	w := newWorld(t)
	sfx := suffix()
	const ttl = time.Second
	n := w.open("cut-"+sfx, nodeOpts{storeProxy: true, ttl: ttl, every: 300 * time.Millisecond, timeout: 3 * time.Second})
	surv := w.open("surv-"+sfx, nodeOpts{ttl: ttl, every: 300 * time.Millisecond})
	proxy := n.proxies[0]
	epoch0 := n.r.Store().Epoch()

	var (
		mu      sync.Mutex
		results []result
		stopped atomic.Bool
		wg      sync.WaitGroup
		okCount atomic.Int64
	)
	for i := range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for j := 0; !stopped.Load(); j++ {
				tctx, cancel := context.WithTimeout(ctx, 10*time.Second)
				id, err := n.b.Do(tctx, n.r.Coordinator(), bank.Transfer{PGAccount: int64(1 + i), MyAccount: int64(1 + (i+j)%accounts), Amount: int64(1 + j%7)})
				cancel()
				if errors.Is(err, bank.ErrInsufficientFunds) {
					continue
				}
				if err == nil {
					okCount.Add(1)
				}
				mu.Lock()
				results = append(results, result{id, err})
				mu.Unlock()
			}
		}()
	}
	waitFor(t, 20*time.Second, "transfers before the cut", func() bool { return okCount.Load() >= 20 })
	proxy.Blackhole()
	cutAt := time.Now()
	select {
	case <-n.r.Store().Lost():
	case <-time.After(20 * time.Second):
		t.Fatal("the cut-off node did not notice it lost its lease")
	}
	t.Logf("lease lost %s after the cut", time.Since(cutAt).Round(time.Millisecond))
	waitFor(t, 20*time.Second, "the survivor to take the cut-off node over", func() bool { return surv.r.Stats().Takeovers >= 1 })
	proxy.Heal()
	waitFor(t, 30*time.Second, "the node to take its lease again", func() bool { return n.r.Stats().Reacquired >= 1 })
	okBefore := okCount.Load()
	waitFor(t, 20*time.Second, "transfers after the lease came back", func() bool { return okCount.Load() >= okBefore+10 })
	stopped.Store(true)
	wg.Wait()
	if e := n.r.Store().Epoch(); e < epoch0+2 {
		t.Errorf("epoch after the takeover and reacquire %d, want at least %d", e, epoch0+2)
	}
	// In-doubt branches of the cut are settled by the claimant or, after
	// their fence, by the node's own recovery.
	waitFor(t, 40*time.Second, "nothing of the node left prepared", func() bool {
		c, err := w.prepared(n.id)
		return err == nil && c == 0
	})
	// Only now: a branch of the cut still prepared holds its rows' locks,
	// and a transfer on them would wait past its deadline.
	if _, err := n.b.Do(ctx, n.r.Coordinator(), bank.Transfer{PGAccount: 9, MyAccount: 9, Amount: 1}); err != nil {
		t.Errorf("transfer under the new epoch: %v", err)
	}
	var aborted, unknown, committed int
	for _, r := range results {
		pg, my := w.transferIn(r.id)
		switch xa.OutcomeOf(r.err) {
		case xa.Committed, xa.CommitPending:
			committed++
			if !pg || !my {
				t.Errorf("transfer %s: told %v, present pg=%v my=%v", r.id, r.err, pg, my)
			}
		case xa.Aborted:
			aborted++
			if pg || my {
				t.Errorf("transfer %s: told aborted (%v), present pg=%v my=%v", r.id, r.err, pg, my)
			}
		default:
			unknown++
		}
	}
	t.Logf("%d transfers: %d committed, %d aborted, %d in doubt; epoch %d → %d; node %+v; survivor %+v",
		len(results), committed, aborted, unknown, epoch0, n.r.Store().Epoch(), n.r.Stats(), surv.r.Stats())
	if aborted+unknown == 0 {
		t.Errorf("no transfer was refused while the node had no lease")
	}
	w.assertInvariants(n.id, surv.id)
}

// TestLeaseLostDecisionOutcome: what the coordinator tells a caller whose
// decision comes after the node lost its lease: aborted or in doubt, never
// committed. Partitioned from the store, the answer may be in doubt (the
// store cannot even read whether a decision is durable); paused past its
// expiry while a peer claimed the node, the database refuses the decision
// and the caller is told aborted (ErrFenced). Either way the node takes its
// lease again afterwards and nothing is left prepared.
func TestLeaseLostDecisionOutcome(t *testing.T) {
	tests := []struct {
		name string
		// lose makes the node lose its lease; it returns what ends the
		// loss once the caller has its answer.
		lose      func(t *testing.T, w *world, n *node) (heal func())
		wantFence bool
	}{
		{"partitioned", func(t *testing.T, w *world, n *node) func() {
			n.proxies[0].Blackhole()
			t.Cleanup(n.proxies[0].Heal)
			select {
			case <-n.r.Store().Lost():
			case <-time.After(20 * time.Second):
				t.Fatal("the lease was not lost")
			}
			return n.proxies[0].Heal
		}, false},
		{"paused-and-claimed", func(t *testing.T, w *world, n *node) func() {
			// As if the process had been paused past its lease: the
			// database's expiry passes and a peer claims the node.
			ctx := ctxT(t)
			if _, err := w.pool.Exec(ctx, `UPDATE `+w.schema+`.`+pgstore.TableNodes+` SET expires_at = clock_timestamp() WHERE node = $1`, n.id); err != nil {
				t.Fatal(err)
			}
			peer, err := pgstore.Open(ctx, w.pool, pgstore.Options{Node: "peer-" + suffix(), Schema: w.schema, LeaseTTL: time.Second})
			if err != nil {
				t.Fatal(err)
			}
			if _, err := peer.Claim(ctx, n.id); err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { _ = peer.Close() })
			return func() {
				if err := peer.Release(ctx, n.id); err != nil {
					t.Error(err)
				}
			}
		}, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			w := newWorld(t)
			stop := newStopper()
			n := w.open("fenced-"+suffix(), nodeOpts{storeProxy: true, hook: stop.hook, ttl: time.Second, noTakeover: true, timeout: 3 * time.Second})
			epoch0 := n.r.Store().Epoch()
			results, gs := runStopped(t, n, stop, []stopAt{{step: xa.StepAllPrepared}}, 1)
			heal := tt.lose(t, w, n)
			close(stop.release)
			r := <-results
			out := xa.OutcomeOf(r.err)
			switch {
			case tt.wantFence && (out != xa.Aborted || !errors.Is(r.err, decisionlog.ErrFenced)):
				t.Fatalf("decision after the lease was taken: %v (outcome %v), want aborted by the fence", r.err, out)
			case out != xa.Aborted && out != xa.Unknown:
				t.Fatalf("decision without a lease: %v (outcome %v), want aborted or in doubt", r.err, out)
			}
			t.Logf("caller told %v: %v", out, r.err)
			heal()
			waitFor(t, 20*time.Second, "the lease taken again", func() bool { return n.r.Stats().Reacquired >= 1 })
			if e := n.r.Store().Epoch(); e <= epoch0 {
				t.Errorf("epoch after reacquire %d, was %d", e, epoch0)
			}
			waitFor(t, 30*time.Second, "nothing of the node left prepared", func() bool {
				c, err := w.prepared(n.id)
				return err == nil && c == 0
			})
			if pg, my := w.transferIn(gs[0].String()); pg || my {
				t.Fatalf("transfer refused a decision is present pg=%v my=%v", pg, my)
			}
			if _, err := n.b.Do(ctxT(t), n.r.Coordinator(), bank.Transfer{PGAccount: 3, MyAccount: 3, Amount: 1}); err != nil {
				t.Errorf("transfer under the new epoch: %v", err)
			}
			w.assertInvariants(n.id)
		})
	}
}

// TestRestartRollsBackDeadIncarnation: a node dies with undecided prepared
// branches and no peer takes it over; the same node id restarts (refused
// while the old lease lives, then under a new epoch) and its first pass
// rolls the dead incarnation's branches back at once, without waiting for
// their fence (Coordinator.Timeout), and commits its decided ones.
func TestRestartRollsBackDeadIncarnation(t *testing.T) {
	ctx := ctxT(t)
	w := newWorld(t)
	stop := newStopper()
	const ttl = time.Second
	victim := w.open("rst-"+suffix(), nodeOpts{viaProxy: true, hook: stop.hook, ttl: ttl, noTakeover: true, timeout: time.Minute})
	results, gs := runStopped(t, victim, stop, []stopAt{{step: xa.StepAllPrepared}, {step: xa.StepDecided}}, 1)
	victim.kill()
	defer func() {
		// The dead process's goroutines go on into dead connections.
		close(stop.release)
		for range gs {
			<-results
		}
		victim.close()
	}()

	cfg := Config{
		Coordinator: xa.Config{NodeID: victim.id, Resources: []drivers.Resource{w.bank.PG, w.bank.My}, Timeout: time.Minute},
		Pool:        w.pool,
		Store:       pgstore.Options{Schema: w.schema, LeaseTTL: ttl},
		NoTakeover:  true,
	}
	var back *Replica
	refused := 0
	waitFor(t, 20*time.Second, "the node's old lease to expire", func() bool {
		r, err := Open(ctx, cfg)
		if isLeased(err) {
			refused++
			return false
		}
		if err != nil {
			t.Fatal(err)
		}
		back = r
		return true
	})
	defer back.Close()
	opened := time.Now()
	waitFor(t, 30*time.Second, "the dead incarnation's branches settled", func() bool {
		n, err := w.prepared(victim.id)
		return err == nil && n == 0
	})
	took := time.Since(opened)
	if refused == 0 {
		t.Errorf("the restarted node was never refused while its old lease lived")
	}
	t.Logf("restart: refused %d times while the old lease lived; dead incarnation settled %s after the reopen (fence would be %s)", refused, took.Round(time.Millisecond), time.Minute)
	if took > 15*time.Second {
		t.Errorf("the dead incarnation's branches took %s: waited for their fence?", took)
	}
	for _, g := range gs {
		pg, my := w.transferIn(g.String())
		if want := decided(stop.stepOf(g)); pg != want || my != want {
			t.Errorf("%s stopped at %v: present pg=%v my=%v, want %v", g, stop.stepOf(g), pg, my, want)
		}
	}
	w.assertInvariants(victim.id)
}

// TestKillUnderLoad: three replicas on one store run transfers; one is
// killed (every connection cut) at whatever step its transactions are in.
// The two others keep working, one of them takes the dead node over, and
// nothing of it stays prepared; every caller's answer matches the
// databases and money is conserved.
func TestKillUnderLoad(t *testing.T) {
	ctx := ctxT(t)
	w := newWorld(t)
	sfx := suffix()
	const ttl = 2 * time.Second
	victim := w.open("kv-"+sfx, nodeOpts{viaProxy: true, ttl: ttl, every: 500 * time.Millisecond})
	nodes := []*node{victim,
		w.open("ka-"+sfx, nodeOpts{ttl: ttl, every: 500 * time.Millisecond}),
		w.open("kb-"+sfx, nodeOpts{ttl: ttl, every: 500 * time.Millisecond}),
	}
	var (
		mu      sync.Mutex
		results []result
		wg      sync.WaitGroup
		stops   = make([]atomic.Bool, len(nodes))
		done    = make([]atomic.Int64, len(nodes))
	)
	for i, n := range nodes {
		for c := range 3 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for j := 0; !stops[i].Load(); j++ {
					tctx, cancel := context.WithTimeout(ctx, 15*time.Second)
					acct := int64(1 + (i*6+c*2+j)%accounts)
					id, err := n.b.Do(tctx, n.r.Coordinator(), bank.Transfer{PGAccount: acct, MyAccount: int64(1 + (j*7+c)%accounts), Amount: int64(1 + j%5)})
					cancel()
					if errors.Is(err, bank.ErrInsufficientFunds) || id == "" {
						continue
					}
					done[i].Add(1)
					mu.Lock()
					results = append(results, result{id, err})
					mu.Unlock()
				}
			}()
		}
	}
	waitFor(t, 30*time.Second, "transfers on every node", func() bool {
		return done[0].Load() >= 15 && done[1].Load() >= 15 && done[2].Load() >= 15
	})
	killed := time.Now()
	victim.kill()
	stops[0].Store(true)
	stranded, _ := w.prepared(victim.id)
	waitFor(t, 60*time.Second, "the dead node settled", func() bool {
		n, err := w.prepared(victim.id)
		if err != nil || n != 0 {
			return false
		}
		p, err := nodes[1].r.Store().PendingContext(ctx, victim.id)
		return err == nil && len(p) == 0
	})
	took := time.Since(killed)
	before := done[1].Load() + done[2].Load()
	waitFor(t, 30*time.Second, "the survivors to go on", func() bool { return done[1].Load()+done[2].Load() >= before+10 })
	stops[1].Store(true)
	stops[2].Store(true)
	wg.Wait()
	t.Logf("kill under load: %d branches of the dead node prepared just after the kill, none (nor a pending decision) %s after it (lease TTL %s, passes every 500ms); %d transfers answered",
		stranded, took.Round(time.Millisecond), ttl, len(results))
	var told [4]int
	for _, r := range results {
		pg, my := w.transferIn(r.id)
		out := xa.OutcomeOf(r.err)
		told[out]++
		switch {
		case (out == xa.Committed || out == xa.CommitPending) && !(pg && my):
			t.Errorf("transfer %s: told %v, present pg=%v my=%v", r.id, r.err, pg, my)
		case out == xa.Aborted && (pg || my):
			t.Errorf("transfer %s: told aborted (%v), present pg=%v my=%v", r.id, r.err, pg, my)
		}
	}
	t.Logf("told: %d committed, %d aborted, %d commit pending, %d in doubt", told[xa.Committed], told[xa.Aborted], told[xa.CommitPending], told[xa.Unknown])
	// The survivors' own in-doubt transactions (none expected) settle by
	// their own recovery; the dead node's are settled already.
	w.assertInvariants(victim.id, nodes[1].id, nodes[2].id)
}
