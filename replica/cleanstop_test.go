package replica

import (
	"testing"
	"time"

	"github.com/xabridge/xabridge/decisionlog/pgstore"
	"github.com/xabridge/xabridge/drivers"
	"github.com/xabridge/xabridge/internal/strand"
)

// A replica stopped cleanly (Close releases its lease) with nothing left is
// not claimed by a survivor: restarted, it holds its node one epoch later,
// not two. Once something of it is left (a branch of it prepared), a
// survivor takes it over as before and settles it.
func TestCleanStopIsNotTakenOver(t *testing.T) {
	ctx := ctxT(t)
	w := newWorld(t)
	sfx := suffix()
	a := w.open("cs-a-"+sfx, nodeOpts{ttl: time.Second, noTakeover: true})
	surv := w.open("cs-s-"+sfx, nodeOpts{ttl: time.Second, every: 50 * time.Millisecond})
	epoch := a.r.Store().Epoch()
	a.close()
	ni, err := surv.r.Store().NodeInfo(ctx, a.id)
	if err != nil || ni.State != pgstore.NodeExpired || !ni.Released {
		t.Fatalf("after a clean stop: %+v, %v; want expired and released", ni, err)
	}

	// Many survivor passes, each seeing the released, expired lease.
	p0 := surv.r.Stats().Passes
	waitFor(t, 30*time.Second, "the survivor's passes", func() bool { return surv.r.Stats().Passes >= p0+10 })
	if st := surv.r.Stats(); st.Takeovers != 0 || st.TakeoverFailures != 0 {
		t.Fatalf("the survivor claimed a cleanly stopped node with nothing left: %+v", st)
	}
	if ni, err := surv.r.Store().NodeInfo(ctx, a.id); err != nil || ni.Epoch != epoch || ni.Holder.Node != a.id {
		t.Fatalf("the stopped node's lease: %+v, %v; want epoch %d, still its own", ni, err, epoch)
	}
	a2 := w.open(a.id, nodeOpts{ttl: time.Second, noTakeover: true})
	if got := a2.r.Store().Epoch(); got != epoch+1 {
		t.Fatalf("restart after a clean stop: epoch %d, want %d", got, epoch+1)
	}

	// Stopped again, leaving a prepared branch behind (as a stop in the
	// middle of phase 1 would): the survivor takes it over and rolls it
	// back.
	a2.close()
	now := time.Now()
	g := strand.GlobalID(a.id, now.Add(-time.Second), now.Add(time.Hour), 1)
	x := drivers.XID{Global: g, Branch: 0}
	if err := strand.Prepare(ctx, w.bank.PG, x, "UPDATE "+w.bank.Table("accounts")+" SET balance = balance + 1 WHERE id = 1"); err != nil {
		t.Fatal(err)
	}
	// The branch is gone before TakeOver returns and is counted: wait for
	// both.
	waitFor(t, 30*time.Second, "the survivor's takeover of the branch left", func() bool {
		n, err := w.prepared(a.id)
		return err == nil && n == 0 && surv.r.Stats().Takeovers >= 1
	})
	if ni, err := surv.r.Store().NodeInfo(ctx, a.id); err != nil || ni.Epoch != epoch+2 || ni.Holder.Node != surv.id {
		t.Fatalf("after the takeover: %+v, %v; want epoch %d held last by %s", ni, err, epoch+2, surv.id)
	}
	w.assertInvariants(a.id, surv.id)
}
