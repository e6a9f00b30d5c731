package replica

import (
	"errors"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/xabridge/xabridge/decisionlog"
	"github.com/xabridge/xabridge/decisionlog/pgstore"
	"github.com/xabridge/xabridge/drivers"
	"github.com/xabridge/xabridge/internal/bank"
	"github.com/xabridge/xabridge/xa"
)

// TestOpenRefusesBadConfig: each mistake is refused with an error naming
// it, and takes no lease (the node can be opened right after).
func TestOpenRefusesBadConfig(t *testing.T) {
	ctx := ctxT(t)
	w := newWorld(t)
	res := []drivers.Resource{w.bank.PG, w.bank.My}
	fl, err := decisionlog.OpenFileLog(t.TempDir(), decisionlog.FileLogOptions{})
	if err != nil {
		t.Fatal(err)
	}
	defer fl.Close()
	node := "bad-" + suffix()
	tests := []struct {
		name string
		cfg  Config
		want string
	}{
		{"no node id", Config{Coordinator: xa.Config{Resources: res}, Pool: w.pool}, "node"},
		{"log and store", Config{Coordinator: xa.Config{NodeID: node, Resources: res, Log: fl}, Pool: w.pool, Store: pgstore.Options{Schema: w.schema}}, "Coordinator.Log must be nil"},
		{"store node differs", Config{Coordinator: xa.Config{NodeID: node, Resources: res}, Pool: w.pool, Store: pgstore.Options{Node: "other", Schema: w.schema}}, `Store.Node "other"`},
		{"store options without a store", Config{Coordinator: xa.Config{NodeID: node, Resources: res, LogDir: t.TempDir()}, Store: pgstore.Options{LeaseTTL: time.Second}}, "without a store"},
		{"bad schema", Config{Coordinator: xa.Config{NodeID: node, Resources: res}, Pool: w.pool, Store: pgstore.Options{Schema: "x; drop"}}, "schema"},
		{"bad decision resource", Config{Coordinator: xa.Config{NodeID: node, Resources: res, DecisionResource: "nope"}, Pool: w.pool, Store: pgstore.Options{Schema: w.schema}}, "nope"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r, err := Open(ctx, tt.cfg)
			if err == nil {
				_ = r.Close()
				t.Fatal("opened")
			}
			if !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("error %q does not say %q", err, tt.want)
			}
		})
	}
	// Nothing was left holding the node.
	n := w.open(node, nodeOpts{})
	if n.r.Store().Epoch() < 1 {
		t.Fatal("no epoch")
	}
}

// TestDuplicateNodeRefused: a second replica with a live node's id is
// refused with pgstore.ErrNodeLeased, and the first keeps working.
func TestDuplicateNodeRefused(t *testing.T) {
	ctx := ctxT(t)
	w := newWorld(t)
	first := w.open("dup-"+suffix(), nodeOpts{})
	_, err := Open(ctx, Config{
		Coordinator: xa.Config{NodeID: first.id, Resources: []drivers.Resource{w.bank.PG, w.bank.My}},
		Pool:        w.pool,
		Store:       pgstore.Options{Schema: w.schema},
	})
	if !errors.Is(err, pgstore.ErrNodeLeased) {
		t.Fatalf("second replica of %s: %v, want ErrNodeLeased", first.id, err)
	}
	if _, err := first.b.Do(ctx, first.r.Coordinator(), bank.Transfer{PGAccount: 1, MyAccount: 1, Amount: 1}); err != nil {
		t.Fatal(err)
	}
	w.assertInvariants(first.id)
}

// TestFileLogReplica: without a store, a replica is the coordinator and its
// own recovery on a file log: passes run, nothing is taken over.
func TestFileLogReplica(t *testing.T) {
	ctx := ctxT(t)
	w := newWorld(t)
	r, err := Open(ctx, Config{
		Coordinator:  xa.Config{NodeID: "file-" + suffix(), LogDir: t.TempDir(), Resources: []drivers.Resource{w.bank.PG, w.bank.My}},
		RecoverEvery: 100 * time.Millisecond,
	})
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	if r.Store() != nil || r.RecoverEvery() != 100*time.Millisecond {
		t.Fatalf("store %v, every %s", r.Store(), r.RecoverEvery())
	}
	if _, err := w.bank.Do(ctx, r.Coordinator(), bank.Transfer{PGAccount: 2, MyAccount: 2, Amount: 5}); err != nil {
		t.Fatal(err)
	}
	rep, err := r.Pass(ctx)
	if err != nil || rep.Own == nil || len(rep.Takeovers) != 0 {
		t.Fatalf("pass: %+v, %v", rep, err)
	}
	waitFor(t, 10*time.Second, "the loop's passes", func() bool { return r.Stats().Passes >= 3 })
	if err := r.Close(); err != nil {
		t.Fatal(err)
	}
	w.assertInvariants(r.Coordinator().NodeID())
}

// TestCloseStopsGoroutines: Close stops the loop, the lease watcher, the
// coordinator and the store; a pass after Close is refused.
func TestCloseStopsGoroutines(t *testing.T) {
	w := newWorld(t)
	ctx := ctxT(t)
	res := []drivers.Resource{w.bank.PG, w.bank.My}
	open := func(id string) *Replica {
		r, err := Open(ctx, Config{
			Coordinator:  xa.Config{NodeID: id, Resources: res},
			Pool:         w.pool,
			Store:        pgstore.Options{Schema: w.schema, LeaseTTL: time.Second},
			RecoverEvery: 50 * time.Millisecond,
		})
		if err != nil {
			t.Fatal(err)
		}
		return r
	}
	// Warm the pools' own goroutines up first (connections the transfers
	// and passes use).
	warm := open("warm-" + suffix())
	if _, err := w.bank.Do(ctx, warm.Coordinator(), bank.Transfer{PGAccount: 4, MyAccount: 4, Amount: 1}); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 10*time.Second, "passes", func() bool { return warm.Stats().Passes >= 2 })
	_ = warm.Close()
	base := ours()
	for range 3 {
		r := open("gl-" + suffix())
		if _, err := w.bank.Do(ctx, r.Coordinator(), bank.Transfer{PGAccount: 4, MyAccount: 4, Amount: 1}); err != nil {
			t.Fatal(err)
		}
		waitFor(t, 10*time.Second, "passes", func() bool { return r.Stats().Passes >= 2 })
		if err := r.Close(); err != nil {
			t.Fatal(err)
		}
		if _, err := r.Pass(ctx); !errors.Is(err, ErrClosed) {
			t.Fatalf("pass after Close: %v", err)
		}
	}
	deadline := time.Now().Add(10 * time.Second)
	for ours() > base {
		if time.Now().After(deadline) {
			buf := make([]byte, 1<<20)
			t.Fatalf("%d goroutines in xabridge code, %d before:\n%s", ours(), base, buf[:runtime.Stack(buf, true)])
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// ours counts the goroutines with a frame in xabridge's code, but the
// running one (the test's): the pools' own goroutines (health checks,
// connection watchers) come and go with their connections.
func ours() int {
	buf := make([]byte, 1<<20)
	n := 0
	for _, g := range strings.Split(string(buf[:runtime.Stack(buf, true)]), "\n\n") {
		if strings.Contains(g, "github.com/xabridge/xabridge/") && !strings.Contains(g, "[running]") {
			n++
		}
	}
	return n
}
