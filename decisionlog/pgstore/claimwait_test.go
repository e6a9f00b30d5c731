package pgstore

import (
	"errors"
	"testing"
	"time"
)

// A lease given back while live (Close, Release) is marked released in its
// row; one that lapsed (its holder stopped renewing) is not.
func TestReleasedTellsAStopFromALapse(t *testing.T) {
	t.Parallel()
	pool := testPool(t, nil)
	schema := testSchema(t, pool)
	ctx := ctxT(t)
	a := openStore(t, pool, schema, "rel-a", nil)
	peer := openStore(t, pool, schema, "rel-peer", nil)
	if ni, err := peer.NodeInfo(ctx, "rel-a"); err != nil || ni.State != NodeLive || ni.Released {
		t.Fatalf("live lease: %+v, %v", ni, err)
	}
	if err := a.Close(); err != nil {
		t.Fatal(err)
	}
	ni, err := peer.NodeInfo(ctx, "rel-a")
	if err != nil || ni.State != NodeExpired || !ni.Released || ni.Holder.Node != "rel-a" {
		t.Fatalf("after Close: %+v, %v; want expired and released by its own node", ni, err)
	}
	// Claimed and released by a peer: released too, held by the peer.
	if _, err := peer.Claim(ctx, "rel-a"); err != nil {
		t.Fatal(err)
	}
	if err := peer.Release(ctx, "rel-a"); err != nil {
		t.Fatal(err)
	}
	if ni, err := peer.NodeInfo(ctx, "rel-a"); err != nil || ni.State != NodeExpired || !ni.Released || ni.Holder.Node != "rel-peer" {
		t.Fatalf("after the peer's Release: %+v, %v", ni, err)
	}
	// A lapse: opened again, then its renewals stop reaching the row.
	b := openStore(t, pool, schema, "rel-b", func(o *Options) { o.LeaseTTL = time.Second })
	expireLease(t, b, "rel-b")
	if ni, err := peer.NodeInfo(ctx, "rel-b"); err != nil || ni.State != NodeExpired || ni.Released {
		t.Fatalf("lapsed lease: %+v, %v; want expired, not released", ni, err)
	}
}

// Open waits while a claimant (another node's store taking this node
// over) holds the node's lease, and takes it once the claim is released:
// one epoch after the claim's, not a failure. A live holder of the node
// itself is refused at once, and a claim that outlasts ClaimWait is
// refused when ClaimWait ends.
func TestOpenWaitsForAClaimant(t *testing.T) {
	t.Parallel()
	pool := testPool(t, nil)
	schema := testSchema(t, pool)
	ctx := ctxT(t)
	a := openStore(t, pool, schema, "cw-a", nil)
	if err := a.Close(); err != nil {
		t.Fatal(err)
	}
	peer := openStore(t, pool, schema, "cw-peer", nil)
	claim, err := peer.Claim(ctx, "cw-a")
	if err != nil || claim != 2 {
		t.Fatalf("claim: epoch %d, %v; want 2", claim, err)
	}

	// No wait: refused at once, naming the claimant.
	_, err = Open(ctx, pool, Options{Node: "cw-a", Schema: schema, ClaimWait: -1})
	var le *LeasedError
	if !errors.As(err, &le) || le.Holder.Node != "cw-peer" {
		t.Fatalf("Open with ClaimWait -1 during a claim: %v, want a LeasedError naming cw-peer", err)
	}

	// A claim that outlasts ClaimWait: refused when it ends.
	start := time.Now()
	_, err = Open(ctx, pool, Options{Node: "cw-a", Schema: schema, ClaimWait: 300 * time.Millisecond})
	if !errors.Is(err, ErrNodeLeased) || time.Since(start) < 300*time.Millisecond {
		t.Fatalf("Open with ClaimWait 300ms during a longer claim: %v after %s, want ErrNodeLeased after 300ms", err, time.Since(start))
	}

	// The claim released while Open waits: Open takes the lease.
	waiting := make(chan struct{})
	var once bool
	hooks := &testHooks{claimWait: func(le *LeasedError) {
		if !once && le.Holder.Node == "cw-peer" {
			once = true
			close(waiting)
		}
	}}
	type res struct {
		s   *Store
		err error
	}
	done := make(chan res, 1)
	go func() {
		s, err := Open(ctx, pool, Options{Node: "cw-a", Schema: schema, ClaimWait: 30 * time.Second, hooks: hooks})
		done <- res{s, err}
	}()
	select {
	case <-waiting:
	case r := <-done:
		t.Fatalf("Open returned during the claim: %v", r.err)
	}
	if err := peer.Release(ctx, "cw-a"); err != nil {
		t.Fatal(err)
	}
	r := <-done
	if r.err != nil {
		t.Fatalf("Open after the claim was released: %v", r.err)
	}
	t.Cleanup(func() { _ = r.s.Close() })
	if r.s.Epoch() != claim+1 {
		t.Fatalf("epoch after the claim %d, want %d (exactly one holder per epoch)", r.s.Epoch(), claim+1)
	}

	// A live process of the node itself: refused at once, not waited for.
	start = time.Now()
	_, err = Open(ctx, pool, Options{Node: "cw-a", Schema: schema, ClaimWait: 30 * time.Second})
	if !errors.As(err, &le) || le.Holder.Node != "cw-a" || time.Since(start) > 10*time.Second {
		t.Fatalf("second Open of a live node: %v after %s, want an immediate LeasedError", err, time.Since(start))
	}
}
