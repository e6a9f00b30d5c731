package pgstore

import (
	"context"
	"errors"
	"testing"

	"github.com/xabridge/xabridge/decisionlog"
)

// A Reader sees what a Store wrote, takes no lease, creates nothing, and
// writes nothing.
func TestReader(t *testing.T) {
	pool := testPool(t, nil)
	ctx := ctxT(t)

	t.Run("no store", func(t *testing.T) {
		schema := testSchema(t, pool)
		if _, err := OpenReader(ctx, pool, ReaderOptions{Schema: schema}); !errors.Is(err, ErrNoStore) {
			t.Fatalf("OpenReader on an empty schema = %v, want ErrNoStore", err)
		}
		var n int
		if err := pool.QueryRow(ctx, `SELECT count(*) FROM pg_namespace WHERE nspname = $1`, schema).Scan(&n); err != nil || n != 0 {
			t.Fatalf("OpenReader created schema %s (count %d, err %v)", schema, n, err)
		}
		if err := CheckStore(ctx, pool, schema); !errors.Is(err, ErrNoStore) {
			t.Fatalf("CheckStore = %v, want ErrNoStore", err)
		}
		if _, err := OpenReader(ctx, pool, ReaderOptions{Schema: "Bad-Name"}); err == nil {
			t.Fatal("OpenReader accepted a bad schema name")
		}
	})

	t.Run("reads", func(t *testing.T) {
		schema := testSchema(t, pool)
		st := openStore(t, pool, schema, "rd-1", nil)
		committed, aborted := liveGid("rd-1"), liveGid("rd-1")
		if err := st.Commit(ctx, decisionlog.Decision{GTRID: committed, Label: "order-17", Participants: []decisionlog.Participant{{Resource: "pg", Branch: 0}}}); err != nil {
			t.Fatal(err)
		}
		if err := st.Abort(ctx, decisionlog.Action{GTRID: aborted, Op: "rollback", Reason: "test"}); err != nil {
			t.Fatal(err)
		}
		r, err := OpenReader(ctx, pool, ReaderOptions{Schema: schema})
		if err != nil {
			t.Fatal(err)
		}
		before, err := r.NodeInfo(ctx, "rd-1")
		if err != nil || before.State != NodeLive {
			t.Fatalf("NodeInfo = %+v, %v; want live", before, err)
		}
		e, found, err := r.LookupContext(ctx, committed)
		if err != nil || !found || e.State != decisionlog.StateCommitted {
			t.Fatalf("Lookup(committed) = %+v, %v, %v", e, found, err)
		}
		pend, err := r.PendingContext(ctx, "rd-1")
		if err != nil || len(pend) != 1 || pend[0].GTRID != committed {
			t.Fatalf("Pending = %v, %v", pend, err)
		}
		all, err := r.Entries(ctx, "")
		if err != nil || len(all) != 2 {
			t.Fatalf("Entries = %v, %v; want 2", all, err)
		}
		states := map[decisionlog.State]bool{}
		for _, e := range all {
			states[e.State] = true
			if e.GTRID == committed && (e.Decision == nil || e.Decision.Label != "order-17") {
				t.Errorf("Entries lost the decision's label: %+v", e.Decision)
			}
		}
		if !states[decisionlog.StateCommitted] || !states[decisionlog.StateAborted] {
			t.Errorf("Entries states = %v", states)
		}
		if none, err := r.Entries(ctx, "other"); err != nil || len(none) != 0 {
			t.Errorf("Entries(other) = %v, %v", none, err)
		}
		l, err := r.Log("rd-1")
		if err != nil {
			t.Fatal(err)
		}
		if got := l.Pending(); len(got) != 1 {
			t.Errorf("Log.Pending = %v", got)
		}
		if err := l.Abort(ctx, decisionlog.Action{GTRID: liveGid("rd-1")}); !errors.Is(err, ErrReadOnly) {
			t.Errorf("Log.Abort = %v, want ErrReadOnly", err)
		}
		if err := l.End(committed); !errors.Is(err, ErrReadOnly) {
			t.Errorf("Log.End = %v, want ErrReadOnly", err)
		}
		after, err := r.NodeInfo(ctx, "rd-1")
		if err != nil || after.Epoch != before.Epoch || after.Holder != before.Holder {
			t.Errorf("the reader changed the lease: %+v -> %+v (%v)", before, after, err)
		}
		if e, _, _ := r.LookupContext(ctx, committed); e.State != decisionlog.StateCommitted {
			t.Errorf("a read-only End changed the entry: %v", e.State)
		}
	})
}

// A read that fails is an error through decisionlog.CheckedReader (the
// Reader's log, a claimed node's log and the store's own), never "no
// decision"; the unchecked Lookup and Pending, which cannot return it,
// answer nothing.
func TestCheckedReadsReturnTheError(t *testing.T) {
	pool := testPool(t, nil)
	ctx := ctxT(t)
	schema := testSchema(t, pool)
	st := openStore(t, pool, schema, "ck-1", nil)
	g := liveGid("ck-1")
	if err := st.Commit(ctx, decisionlog.Decision{GTRID: g, Participants: []decisionlog.Participant{{Resource: "pg", Branch: 0}}}); err != nil {
		t.Fatal(err)
	}
	rpool := testPool(t, nil) // the reader's own pool, closed below
	r, err := OpenReader(ctx, rpool, ReaderOptions{Schema: schema})
	if err != nil {
		t.Fatal(err)
	}
	rl, err := r.Log("ck-1")
	if err != nil {
		t.Fatal(err)
	}
	logs := map[string]decisionlog.Log{"reader": rl, "store": st}
	for name, l := range logs {
		if _, ok := l.(decisionlog.CheckedReader); !ok {
			t.Fatalf("%s: not a decisionlog.CheckedReader", name)
		}
		e, found, err := decisionlog.LookupChecked(ctx, l, g)
		if err != nil || !found || e.State != decisionlog.StateCommitted {
			t.Fatalf("%s: LookupChecked = %+v, %v, %v; want the commit decision", name, e, found, err)
		}
		if ds, err := decisionlog.PendingChecked(ctx, l); err != nil || len(ds) != 1 {
			t.Fatalf("%s: PendingChecked = %v, %v; want the decision", name, ds, err)
		}
	}
	rpool.Close()
	if _, found, err := decisionlog.LookupChecked(ctx, rl, g); err == nil || found {
		t.Fatalf("reader on a closed pool: LookupChecked found=%v err=%v, want an error", found, err)
	}
	if _, err := decisionlog.PendingChecked(ctx, rl); err == nil {
		t.Fatal("reader on a closed pool: PendingChecked succeeded")
	}
	if _, found := rl.Lookup(g); found {
		t.Fatal("reader on a closed pool: Lookup found the decision")
	}
	// The store's own log, with a read that cannot complete.
	done, cancel := context.WithCancel(ctx)
	cancel()
	if _, _, err := decisionlog.LookupChecked(done, st, g); err == nil {
		t.Fatal("store: LookupChecked with a cancelled context succeeded")
	}
	if _, err := decisionlog.PendingChecked(done, st); err == nil {
		t.Fatal("store: PendingChecked with a cancelled context succeeded")
	}
}
