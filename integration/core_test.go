// Package integration holds end-to-end tests of xabridge against real
// PostgreSQL and MySQL/MariaDB servers (see internal/dbtest for how they are
// found or started).
package integration

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/xabridge/xabridge/decisionlog"
	"github.com/xabridge/xabridge/drivers"
	"github.com/xabridge/xabridge/internal/bank"
	"github.com/xabridge/xabridge/internal/dbtest"
	"github.com/xabridge/xabridge/internal/startup"
	"github.com/xabridge/xabridge/xa"
)

const (
	accounts = 20
	balance  = 1000
)

func suffix() string {
	var b [4]byte
	_, _ = rand.Read(b[:])
	return hex.EncodeToString(b[:])
}

// newBank opens both databases and creates a fresh pair of bank tables
// owned by this test.
func newBank(t *testing.T, conns int) *bank.Bank {
	t.Helper()
	ctx := context.Background()
	b, err := bank.Open(ctx, dbtest.PG(t), dbtest.MySQL(t), conns)
	if err != nil {
		t.Fatal(err)
	}
	if err := b.SetPrefix("xab_it_" + suffix()); err != nil {
		t.Fatal(err)
	}
	if err := b.Setup(ctx, accounts, balance); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := b.Drop(context.Background()); err != nil {
			t.Errorf("dropping test tables: %v", err)
		}
		b.Close()
	})
	return b
}

func newCoord(t *testing.T, b *bank.Bank, mod func(*xa.Config)) *xa.Coordinator {
	t.Helper()
	cfg := xa.Config{
		NodeID:    "it-" + suffix(),
		LogDir:    t.TempDir(),
		Resources: []drivers.Resource{b.PG, b.My},
	}
	if mod != nil {
		mod(&cfg)
	}
	c, err := xa.New(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = c.Close() })
	return c
}

// assertInvariants checks money is conserved, every transfer is in both
// databases or neither, and no branch of this coordinator is prepared.
func assertInvariants(t *testing.T, b *bank.Bank, node string) bank.State {
	t.Helper()
	ctx := context.Background()
	st, err := b.Check(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if want := int64(2 * accounts * balance); st.Total() != want {
		t.Errorf("total money %d, want %d", st.Total(), want)
	}
	if st.Violations() != 0 {
		t.Errorf("atomicity violated: only in postgres %v, only in mysql %v, amount mismatch %v", st.OnlyPG, st.OnlyMy, st.AmountMismatch)
	}
	if n := prepared(t, b, node); n != 0 {
		t.Errorf("%d branches of node %s left prepared", n, node)
	}
	return st
}

// prepared counts prepared branches of node on both databases.
func prepared(t *testing.T, b *bank.Bank, node string) int {
	t.Helper()
	n, err := startup.InDoubt(context.Background(), node, b.PG, b.My)
	if err != nil {
		t.Fatal(err)
	}
	return n
}

func TestCommitAcrossEngines(t *testing.T) {
	b := newBank(t, 4)
	c := newCoord(t, b, nil)
	id, err := b.Do(context.Background(), c, bank.Transfer{PGAccount: 1, MyAccount: 2, Amount: 70})
	if err != nil {
		t.Fatal(err)
	}
	pg, my, err := b.Balances(context.Background(), 1, 2)
	if err != nil {
		t.Fatal(err)
	}
	if pg != balance-70 || my != balance+70 {
		t.Fatalf("balances pg=%d my=%d, want %d and %d", pg, my, balance-70, balance+70)
	}
	st := assertInvariants(t, b, c.NodeID())
	if st.PGTransfers != 1 || st.MyTransfers != 1 {
		t.Fatalf("transfer %s recorded %d/%d times", id, st.PGTransfers, st.MyTransfers)
	}
	g, err := drivers.ParseGlobalID(id)
	if err != nil {
		t.Fatal(err)
	}
	if e, ok := c.Log().Lookup(g); !ok || e.State != decisionlog.StateDone {
		t.Fatalf("log has %v for %s, want done", e.State, id)
	}
}

func TestRollbackAcrossEngines(t *testing.T) {
	b := newBank(t, 4)
	c := newCoord(t, b, nil)
	stop := errors.New("changed my mind")
	err := c.Run(context.Background(), func(ctx context.Context, tx *xa.Tx) error {
		pg, err := b.PG.Enlist(ctx, tx)
		if err != nil {
			return err
		}
		my, err := b.My.Enlist(ctx, tx)
		if err != nil {
			return err
		}
		if _, err := pg.Exec(ctx, "UPDATE "+b.Table("accounts")+" SET balance = 0 WHERE id = 1"); err != nil {
			return err
		}
		if _, err := my.ExecContext(ctx, "UPDATE "+b.Table("accounts")+" SET balance = 0 WHERE id = 1"); err != nil {
			return err
		}
		return stop
	})
	if !errors.Is(err, xa.ErrAborted) || !errors.Is(err, stop) {
		t.Fatalf("err = %v, want an abort carrying the callback's error", err)
	}
	pg, my, err := b.Balances(context.Background(), 1, 1)
	if err != nil {
		t.Fatal(err)
	}
	if pg != balance || my != balance {
		t.Fatalf("rolled-back writes visible: pg=%d my=%d", pg, my)
	}
	assertInvariants(t, b, c.NodeID())
}

func TestPanicRollsBackEverything(t *testing.T) {
	b := newBank(t, 4)
	c := newCoord(t, b, nil)
	func() {
		defer func() {
			if recover() == nil {
				t.Fatal("panic was swallowed")
			}
		}()
		_ = c.Run(context.Background(), func(ctx context.Context, tx *xa.Tx) error {
			pg, _ := b.PG.Enlist(ctx, tx)
			my, _ := b.My.Enlist(ctx, tx)
			_, _ = pg.Exec(ctx, "UPDATE "+b.Table("accounts")+" SET balance = 0 WHERE id = 3")
			_, _ = my.ExecContext(ctx, "UPDATE "+b.Table("accounts")+" SET balance = 0 WHERE id = 3")
			panic("bug in the callback")
		})
	}()
	pg, my, err := b.Balances(context.Background(), 3, 3)
	if err != nil {
		t.Fatal(err)
	}
	if pg != balance || my != balance {
		t.Fatalf("writes of a panicking transaction visible: pg=%d my=%d", pg, my)
	}
	assertInvariants(t, b, c.NodeID())
}

// A constraint PostgreSQL only checks at PREPARE makes the PostgreSQL branch
// refuse to prepare; the MySQL branch, already prepared or not, must roll
// back.
func TestPrepareFailureOnOneBranchAbortsTheOther(t *testing.T) {
	b := newBank(t, 4)
	c := newCoord(t, b, nil)
	ctx := context.Background()
	tbl := "xab_it_deferred_" + suffix()
	if _, err := b.PGPool.Exec(ctx, "CREATE TABLE "+tbl+" (k INT, CONSTRAINT u UNIQUE (k) DEFERRABLE INITIALLY DEFERRED)"); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _, _ = b.PGPool.Exec(context.Background(), "DROP TABLE "+tbl) })
	err := c.Run(ctx, func(ctx context.Context, tx *xa.Tx) error {
		pg, err := b.PG.Enlist(ctx, tx)
		if err != nil {
			return err
		}
		my, err := b.My.Enlist(ctx, tx)
		if err != nil {
			return err
		}
		// Both inserts succeed now; the duplicate is only found at PREPARE.
		if _, err := pg.Exec(ctx, "INSERT INTO "+tbl+" VALUES (1), (1)"); err != nil {
			return err
		}
		_, err = my.ExecContext(ctx, "UPDATE "+b.Table("accounts")+" SET balance = balance + 5 WHERE id = 4")
		return err
	})
	if !errors.Is(err, xa.ErrAborted) || !errors.Is(err, drivers.ErrRefused) {
		t.Fatalf("err = %v, want an abort because PostgreSQL refused to prepare", err)
	}
	_, my, err := b.Balances(ctx, 4, 4)
	if err != nil {
		t.Fatal(err)
	}
	if my != balance {
		t.Fatalf("mysql branch committed although postgres refused: balance %d", my)
	}
	var n int
	if err := b.PGPool.QueryRow(ctx, "SELECT count(*) FROM "+tbl).Scan(&n); err != nil || n != 0 {
		t.Fatalf("postgres rows %d (%v), want 0", n, err)
	}
	assertInvariants(t, b, c.NodeID())
}

// A branch blocked on a row lock past the context deadline: the transaction
// aborts cleanly, releases everything, and leaves nothing prepared.
func TestTimeoutWhileWaitingOnALockAborts(t *testing.T) {
	for _, engine := range []string{"postgres", "mysql"} {
		t.Run(engine, func(t *testing.T) {
			b := newBank(t, 4)
			c := newCoord(t, b, nil)
			ctx := context.Background()
			// Hold the row lock in a plain local transaction.
			release := holdRowLock(t, b, engine, 5)
			tctx, cancel := context.WithTimeout(ctx, 500*time.Millisecond)
			defer cancel()
			start := time.Now()
			_, err := b.Do(tctx, c, bank.Transfer{PGAccount: 5, MyAccount: 5, Amount: 10})
			if !errors.Is(err, xa.ErrAborted) {
				t.Fatalf("err = %v, want ErrAborted", err)
			}
			if d := time.Since(start); d > 10*time.Second {
				t.Fatalf("abort took %s", d)
			}
			release()
			pg, my, err := b.Balances(ctx, 5, 5)
			if err != nil {
				t.Fatal(err)
			}
			if pg != balance || my != balance {
				t.Fatalf("balances pg=%d my=%d after a timed-out transfer", pg, my)
			}
			assertInvariants(t, b, c.NodeID())
			// The pools are healthy: the next transfer commits.
			if _, err := b.Do(ctx, c, bank.Transfer{PGAccount: 5, MyAccount: 5, Amount: 10}); err != nil {
				t.Fatalf("transfer after the timeout: %v", err)
			}
		})
	}
}

// holdRowLock locks one account row on the given engine in a local
// transaction and returns the function that releases it.
func holdRowLock(t *testing.T, b *bank.Bank, engine string, id int) func() {
	t.Helper()
	ctx := context.Background()
	q := fmt.Sprintf("SELECT balance FROM %s WHERE id = %d FOR UPDATE", b.Table("accounts"), id)
	if engine == "postgres" {
		tx, err := b.PGPool.Begin(ctx)
		if err != nil {
			t.Fatal(err)
		}
		var v int64
		if err := tx.QueryRow(ctx, q).Scan(&v); err != nil {
			t.Fatal(err)
		}
		return func() { _ = tx.Rollback(ctx) }
	}
	tx, err := b.MyDB.BeginTx(ctx, nil)
	if err != nil {
		t.Fatal(err)
	}
	var v int64
	if err := tx.QueryRowContext(ctx, q).Scan(&v); err != nil {
		t.Fatal(err)
	}
	return func() { _ = tx.Rollback() }
}

func TestConcurrentTransfersKeepInvariants(t *testing.T) {
	const workers, each = 32, 10
	b := newBank(t, workers)
	c := newCoord(t, b, nil)
	var wg sync.WaitGroup
	var mu sync.Mutex
	outcomes := map[string]int{}
	for w := 0; w < workers; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; i < each; i++ {
				tr := bank.Transfer{PGAccount: int64(w%accounts + 1), MyAccount: int64((w*7+i)%accounts + 1), Amount: int64(i%9+1) * int64(1-2*(w%2))}
				_, err := b.Do(context.Background(), c, tr)
				mu.Lock()
				switch {
				case err == nil:
					outcomes["committed"]++
				case errors.Is(err, bank.ErrInsufficientFunds):
					outcomes["insufficient"]++
				default:
					outcomes[xa.OutcomeOf(err).String()]++
					t.Errorf("transfer: %v", err)
				}
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	st := assertInvariants(t, b, c.NodeID())
	if st.PGTransfers != outcomes["committed"] {
		t.Errorf("%d transfers recorded, %d committed", st.PGTransfers, outcomes["committed"])
	}
	t.Logf("outcomes: %v", outcomes)
}

// A branch that only reads votes read-only: a read on PostgreSQL plus a write
// on MySQL commits without a decision record.
func TestReadOnlyBranchSkipsTheDecision(t *testing.T) {
	b := newBank(t, 4)
	c := newCoord(t, b, nil)
	ctx := context.Background()
	err := c.Run(ctx, func(ctx context.Context, tx *xa.Tx) error {
		pg, err := b.PG.Enlist(ctx, tx)
		if err != nil {
			return err
		}
		my, err := b.My.Enlist(ctx, tx)
		if err != nil {
			return err
		}
		var v int64
		if err := pg.QueryRow(ctx, "SELECT balance FROM "+b.Table("accounts")+" WHERE id = 6").Scan(&v); err != nil {
			return err
		}
		_, err = my.ExecContext(ctx, "UPDATE "+b.Table("accounts")+" SET balance = ? WHERE id = 6", v)
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	if s := c.Log().(*decisionlog.FileLog).Stats(); s.Appends != 0 {
		t.Fatalf("read-only branch still logged %d records", s.Appends)
	}
	assertInvariants(t, b, c.NodeID())
}
