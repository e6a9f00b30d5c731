package integration

import (
	"context"
	"database/sql"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	mysqldriver "github.com/go-sql-driver/mysql"

	"github.com/xabridge/xabridge/decisionlog"
	"github.com/xabridge/xabridge/drivers"
	"github.com/xabridge/xabridge/internal/bank"
	"github.com/xabridge/xabridge/internal/dbtest"
	"github.com/xabridge/xabridge/mysql"
	"github.com/xabridge/xabridge/postgres"
	"github.com/xabridge/xabridge/recovery"
	"github.com/xabridge/xabridge/xa"
)

// keeperKind is a participant that keeps the commit decisions.
type keeperKind struct {
	name string
	pg   bool // the PostgreSQL participant; else the MariaDB one
	// multi: the MariaDB keeper's pool has multiStatements=true, so its
	// decision INSERT and COMMIT travel in one query.
	multi bool
}

var keeperKinds = []keeperKind{
	{name: "postgres", pg: true},
	{name: "mariadb"},
	{name: "mariadb-multistatements", multi: true},
}

// setup returns b's resource that keeps the decisions, with its table
// created, and the other participant. For multi it swaps the bank's
// MariaDB resource for one (of the same name) on a multi-statement pool.
func (k keeperKind) setup(t *testing.T, b *bank.Bank) (decisionlog.Keeper, drivers.Resource) {
	t.Helper()
	ctx := context.Background()
	if k.pg {
		if err := b.PG.EnsureDecisionTable(ctx); err != nil {
			t.Fatal(err)
		}
		return b.PG, b.My
	}
	if k.multi {
		cfg, err := mysql.ParseURL(dbtest.MySQL(t))
		if err != nil {
			t.Fatal(err)
		}
		cfg.MultiStatements = true
		conn, err := mysqldriver.NewConnector(cfg)
		if err != nil {
			t.Fatal(err)
		}
		db := sql.OpenDB(conn)
		db.SetMaxOpenConns(16)
		t.Cleanup(func() { _ = db.Close() })
		b.My = mysql.New(b.My.Name(), db)
	}
	if err := b.My.EnsureDecisionTable(ctx); err != nil {
		t.Fatal(err)
	}
	return b.My, b.PG
}

// keptRows counts the decision rows of node in the keeper's table.
func keptRows(t *testing.T, k decisionlog.Keeper, node string) (commits, aborts int) {
	t.Helper()
	ds, err := k.ListDecisions(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	for _, d := range ds {
		if d.GTRID.Node() != node {
			continue
		}
		if !d.Abort {
			commits++
		} else {
			aborts++
		}
	}
	return commits, aborts
}

// waitUntil polls cond every `every` until it holds. It reports failure
// with t.Errorf and returns false, so that it can run off the test's
// goroutine.
func waitUntil(t *testing.T, what string, every time.Duration, cond func() (bool, error)) bool {
	t.Helper()
	for deadline := time.Now().Add(30 * time.Second); ; {
		ok, err := cond()
		if err != nil {
			t.Errorf("waiting for %s: %v", what, err)
			return false
		}
		if ok {
			return true
		}
		if time.Now().After(deadline) {
			t.Errorf("timed out waiting for %s", what)
			return false
		}
		time.Sleep(every)
	}
}

// With the decision kept in one participant, concurrent transfers commit
// atomically, the keeper never prepares, the file log writes nothing, and
// the decision rows are deleted once phase 2 is done.
func TestDecisionInParticipantCommitsAndCleansUp(t *testing.T) {
	for _, k := range keeperKinds {
		t.Run(k.name, func(t *testing.T) {
			b := newBank(t, 8)
			keeper, _ := k.setup(t, b)
			var keeperPrepared atomic.Int64
			fl, err := decisionlog.OpenFileLog(t.TempDir(), decisionlog.FileLogOptions{})
			if err != nil {
				t.Fatal(err)
			}
			defer fl.Close()
			c := newCoord(t, b, func(cfg *xa.Config) {
				cfg.Resources = []drivers.Resource{b.PG, b.My}
				cfg.Log = fl
				cfg.DecisionResource = keeper.Name()
				cfg.Hook = func(s xa.Step, info xa.StepInfo) {
					if s == xa.StepPrepared && info.Resource == keeper.Name() {
						keeperPrepared.Add(1)
					}
				}
			})
			const workers, each = 6, 10
			var wg sync.WaitGroup
			errs := make(chan error, workers*each)
			for w := range workers {
				wg.Go(func() {
					for i := range each {
						amt := int64(i%5 + 1)
						if _, err := b.Do(context.Background(), c, bank.Transfer{PGAccount: int64(w + 1), MyAccount: int64(w + 1), Amount: amt}); err != nil {
							errs <- err
						}
					}
				})
			}
			wg.Wait()
			close(errs)
			for err := range errs {
				t.Fatal(err)
			}
			node := c.NodeID()
			if err := c.Close(); err != nil { // flushes the row deletes
				t.Fatal(err)
			}
			st := assertInvariants(t, b, node)
			if st.PGTransfers != workers*each {
				t.Fatalf("%d transfers committed, want %d", st.PGTransfers, workers*each)
			}
			if n := keeperPrepared.Load(); n != 0 {
				t.Fatalf("the keeper prepared %d times; it must never prepare", n)
			}
			if s := fl.Stats(); s.Appends != 0 {
				t.Fatalf("the file log holds %d records; the decisions belong in the keeper", s.Appends)
			}
			if commits, aborts := keptRows(t, keeper, node); commits+aborts != 0 {
				t.Fatalf("%d decision rows and %d abort markers left after Close", commits, aborts)
			}
		})
	}
}

// lockScene is a transfer whose keeper waits, in its decision INSERT, on
// the row lock of an uncommitted abort marker for the same gtrid.
type lockScene struct {
	session int64 // the keeper branch's backend pid or connection id
	// end commits or rolls back the marker's transaction.
	end func(commit bool) error
	// kill ends the keeper's session and waits until it is gone.
	kill func() error
}

// keeperLockScene runs one transfer whose keeper's INSERT waits on a row
// lock held by an uncommitted abort marker for the same gtrid, and lets
// then decide what happens to the waiting keeper. It returns the
// transfer's gtrid and Run's error.
func keeperLockScene(t *testing.T, b *bank.Bank, c *xa.Coordinator, k keeperKind, then func(s *lockScene)) (drivers.GlobalID, error) {
	t.Helper()
	ctx := context.Background()
	var (
		g     drivers.GlobalID
		scene *lockScene
		done  = make(chan struct{})
	)
	defer func() {
		<-done
		if scene != nil {
			_ = scene.end(false)
		}
	}()
	err := c.Run(ctx, func(ctx context.Context, tx *xa.Tx) error {
		defer func() {
			go func() {
				defer close(done)
				if scene == nil {
					return
				}
				if !waitUntil(t, "the keeper's INSERT to wait on the marker's row lock", 150*time.Millisecond, func() (bool, error) {
					return scene.lockWaiting(b, k)
				}) {
					_ = scene.end(false) // unblock the keeper, so Run returns
					return
				}
				then(scene)
			}()
		}()
		g = tx.GlobalID()
		pg, err := b.PG.Enlist(ctx, tx)
		if err != nil {
			return err
		}
		my, err := b.My.Enlist(ctx, tx)
		if err != nil {
			return err
		}
		s := &lockScene{}
		if k.pg {
			if err := pg.QueryRow(ctx, "SELECT pg_backend_pid()").Scan(&s.session); err != nil {
				return err
			}
			admin, err := b.PGPool.Begin(ctx)
			if err != nil {
				return err
			}
			s.end = func(commit bool) error {
				if commit {
					return admin.Commit(context.Background())
				}
				return admin.Rollback(context.Background())
			}
			scene = s
			if _, err := admin.Exec(ctx, "INSERT INTO "+postgres.DecisionTable+" (gtrid, state, participants) VALUES ($1, 'A', '')", g.String()); err != nil {
				return err
			}
			s.kill = func() error { return killPG(t, b, s.session) }
		} else {
			if err := my.QueryRowContext(ctx, "SELECT CONNECTION_ID()").Scan(&s.session); err != nil {
				return err
			}
			admin, err := b.MyDB.Conn(ctx)
			if err != nil {
				return err
			}
			var once sync.Once
			s.end = func(commit bool) error {
				err := fmt.Errorf("the marker's transaction has already ended")
				once.Do(func() {
					q := "ROLLBACK"
					if commit {
						q = "COMMIT"
					}
					_, err = admin.ExecContext(context.Background(), q)
					_ = admin.Close()
				})
				return err
			}
			scene = s
			for _, q := range []string{"BEGIN", "INSERT INTO " + mysql.DecisionTable + " VALUES ('" + g.String() + "', 'A', '', UTC_TIMESTAMP(6))"} {
				if _, err := admin.ExecContext(ctx, q); err != nil {
					return err
				}
			}
			s.kill = func() error { return killMy(t, b, s.session) }
		}
		if _, err := pg.Exec(ctx, "UPDATE "+b.Table("accounts")+" SET balance = balance - 5 WHERE id = 1"); err != nil {
			return err
		}
		_, err = my.ExecContext(ctx, "UPDATE "+b.Table("accounts")+" SET balance = balance + 5 WHERE id = 1")
		return err
	})
	return g, err
}

// lockWaiting reports whether the keeper's session waits for a row lock.
// (MariaDB's INNODB_TRX is a cache refreshed only after 100 ms without
// readers: poll it slowly.)
func (s *lockScene) lockWaiting(b *bank.Bank, k keeperKind) (bool, error) {
	var n int
	var err error
	if k.pg {
		err = b.PGPool.QueryRow(context.Background(), `SELECT COUNT(*) FROM pg_stat_activity WHERE pid = $1 AND wait_event_type = 'Lock'`, s.session).Scan(&n)
	} else {
		err = b.MyDB.QueryRowContext(context.Background(), `SELECT COUNT(*) FROM information_schema.INNODB_TRX
			WHERE trx_mysql_thread_id = ? AND trx_state = 'LOCK WAIT'`, s.session).Scan(&n)
	}
	return n > 0, err
}

// killPG terminates a PostgreSQL backend and waits until it has exited.
func killPG(t *testing.T, b *bank.Bank, pid int64) error {
	ctx := context.Background()
	var ok bool
	if err := b.PGPool.QueryRow(ctx, "SELECT pg_terminate_backend($1)", pid).Scan(&ok); err != nil || !ok {
		return fmt.Errorf("pg_terminate_backend(%d): %v %v", pid, ok, err)
	}
	waitUntil(t, "the keeper's backend to exit", 10*time.Millisecond, func() (bool, error) {
		var n int
		err := b.PGPool.QueryRow(ctx, "SELECT COUNT(*) FROM pg_stat_activity WHERE pid = $1", pid).Scan(&n)
		return n == 0, err
	})
	return nil
}

// killMy kills a MariaDB session and waits until it has left the
// processlist.
func killMy(t *testing.T, b *bank.Bank, id int64) error {
	ctx := context.Background()
	if _, err := b.MyDB.ExecContext(ctx, fmt.Sprintf("KILL CONNECTION %d", id)); err != nil {
		return err
	}
	waitUntil(t, "the keeper's session to end", 10*time.Millisecond, func() (bool, error) {
		var n int
		err := b.MyDB.QueryRowContext(ctx, "SELECT COUNT(*) FROM information_schema.PROCESSLIST WHERE ID = ?", id).Scan(&n)
		return n == 0, err
	})
	return nil
}

// Recovery's abort marker, committed while the keeper waits on it,
// refuses the decision: the whole transaction aborts.
func TestDecisionInParticipantFenceRace(t *testing.T) {
	for _, k := range keeperKinds {
		t.Run(k.name, func(t *testing.T) {
			b := newBank(t, 4)
			keeper, _ := k.setup(t, b)
			c := newCoord(t, b, func(cfg *xa.Config) {
				cfg.Resources = []drivers.Resource{b.PG, b.My}
				cfg.DecisionResource = keeper.Name()
			})
			g, err := keeperLockScene(t, b, c, k, func(s *lockScene) {
				if err := s.end(true); err != nil {
					t.Error(err)
				}
			})
			if xa.OutcomeOf(err) != xa.Aborted {
				t.Fatalf("Run = %v, want aborted (fenced by the abort marker)", err)
			}
			assertInvariants(t, b, c.NodeID())
			if pg, my, _ := b.Balances(context.Background(), 1, 1); pg != balance || my != balance {
				t.Fatalf("balances %d/%d changed", pg, my)
			}
			_ = keeper.ForgetDecisions(context.Background(), []drivers.GlobalID{g})
		})
	}
}

// A keeper whose session dies while it waits in its decision INSERT:
// PostgreSQL had its INSERT and COMMIT pipelined, and so has MariaDB with
// multiStatements, so the outcome is unknown; recovery reads the keeper's
// table (no decision), fences the transaction with an abort marker and
// rolls the other prepared branch back. MariaDB without multiStatements
// never sent its COMMIT: the keeper is refused for certain and the
// transaction aborts at once.
func TestDecisionInParticipantKeeperKilled(t *testing.T) {
	for _, k := range keeperKinds {
		t.Run(k.name, func(t *testing.T) {
			b := newBank(t, 4)
			ctx := context.Background()
			keeper, _ := k.setup(t, b)
			c := newCoord(t, b, func(cfg *xa.Config) {
				cfg.Resources = []drivers.Resource{b.PG, b.My}
				cfg.DecisionResource = keeper.Name()
			})
			g, err := keeperLockScene(t, b, c, k, func(s *lockScene) {
				if err := s.kill(); err != nil {
					t.Error(err)
				}
				if err := s.end(false); err != nil {
					t.Error(err)
				}
			})
			inDoubt := k.pg || k.multi
			if !inDoubt {
				if xa.OutcomeOf(err) != xa.Aborted {
					t.Fatalf("Run = %v, want aborted (the keeper's COMMIT was never sent)", err)
				}
				if d, ok, err := keeper.LookupDecision(ctx, g); err != nil || ok && !d.Abort {
					t.Fatalf("decision row %+v %v %v: want none", d, ok, err)
				}
			} else {
				if xa.OutcomeOf(err) != xa.Unknown {
					t.Fatalf("Run = %v, want outcome unknown (the keeper's commit got no answer)", err)
				}
				if n := prepared(t, b, c.NodeID()); n != 1 {
					t.Fatalf("%d branches prepared, want the other one left for recovery", n)
				}
				zero := time.Duration(0)
				rec, err := recovery.New(recovery.Config{NodeID: c.NodeID(), Log: c.Log(), Resources: []drivers.Resource{b.PG, b.My},
					DecisionResource: keeper.Name(), Settle: -1, MinAge: &zero, Active: c.Active})
				if err != nil {
					t.Fatal(err)
				}
				recoverAll(t, rec, c.NodeID())
				d, ok, err := keeper.LookupDecision(ctx, g)
				if err != nil || !ok || !d.Abort {
					t.Fatalf("decision row %+v %v %v: want recovery's abort marker", d, ok, err)
				}
			}
			assertInvariants(t, b, c.NodeID())
			if pg, my, _ := b.Balances(ctx, 1, 1); pg != balance || my != balance {
				t.Fatalf("balances %d/%d, want both unchanged", pg, my)
			}
			_ = keeper.ForgetDecisions(ctx, []drivers.GlobalID{g})
		})
	}
}

// A coordinator that died after the keeper committed the decision leaves
// the other branch prepared; recovery finds the decision in the keeper's
// table (without being told which resource keeps decisions), commits the
// branch, and deletes the row.
func TestRecoveryCommitsFromKeeperTable(t *testing.T) {
	for _, k := range keeperKinds {
		t.Run(k.name, func(t *testing.T) {
			b := newBank(t, 4)
			ctx := context.Background()
			keeper, other := k.setup(t, b)
			node := "it-" + suffix()
			now := time.Now().UTC().Truncate(time.Millisecond)
			g := drivers.MustGlobalID(node, now, 1, now.Add(time.Minute))
			xo := drivers.XID{Global: g, Branch: 1}
			ob, err := other.Begin(ctx, xo)
			if err != nil {
				t.Fatal(err)
			}
			update(t, b, ob, 9)
			if v, err := ob.Prepare(ctx); err != nil || v != drivers.VoteCommit {
				t.Fatalf("prepare: %v %v", v, err)
			}
			_ = ob.Close() // the coordinator dies: its session goes
			begin := keeper.Begin
			if kb, ok := keeper.(decisionlog.KeptBeginner); ok {
				begin = kb.BeginKept
			}
			kb, err := begin(ctx, drivers.XID{Global: g})
			if err != nil {
				t.Fatal(err)
			}
			update(t, b, kb, -9)
			if err := keeper.CommitWithDecision(ctx, kb, g, []decisionlog.Participant{{Resource: other.Name(), Branch: xo.Branch}}); err != nil {
				t.Fatal(err)
			}
			_ = kb.Close()

			fl, err := decisionlog.OpenFileLog(t.TempDir(), decisionlog.FileLogOptions{})
			if err != nil {
				t.Fatal(err)
			}
			defer fl.Close()
			// No DecisionResource: the decision is read from every keeper anyway.
			rec, err := recovery.New(recovery.Config{NodeID: node, Log: fl, Resources: []drivers.Resource{b.PG, b.My}, Settle: -1})
			if err != nil {
				t.Fatal(err)
			}
			first := ours(rec.Pass(ctx, false), node)
			if len(first) != 1 || first[0].Class != recovery.CommitPending {
				t.Fatalf("first pass: %+v, want the other branch classed commit-pending", first)
			}
			if ended := recoverAll(t, rec, node); len(ended) != 1 || ended[0] != g.String() {
				t.Fatalf("ended %v, want %s", ended, g)
			}
			pgBal, myBal, _ := b.Balances(ctx, 2, 2)
			if pgBal+myBal != 2*balance || pgBal == balance {
				t.Fatalf("balances %d/%d, want both sides of the committed transaction", pgBal, myBal)
			}
			if commits, aborts := keptRows(t, keeper, node); commits+aborts != 0 {
				t.Fatalf("%d/%d rows left; recovery deletes finished decisions", commits, aborts)
			}
		})
	}
}

// update adds delta to account 2 in branch br (of either engine).
func update(t *testing.T, b *bank.Bank, br drivers.Branch, delta int) {
	t.Helper()
	ctx := context.Background()
	q := fmt.Sprintf("UPDATE %s SET balance = balance + %d WHERE id = 2", b.Table("accounts"), delta)
	var err error
	if h, herr := b.PG.Enlist(ctx, fixed{br}); herr == nil {
		_, err = h.Exec(ctx, q)
	} else if h, herr := b.My.Enlist(ctx, fixed{br}); herr == nil {
		_, err = h.ExecContext(ctx, q)
	} else {
		t.Fatalf("branch %T belongs to neither database", br)
	}
	if err != nil {
		t.Fatal(err)
	}
}

// ours returns the branches of node in rep.
func ours(rep *recovery.Report, node string) []recovery.Branch {
	var out []recovery.Branch
	for _, b := range rep.Branches {
		if b.Ours && b.XID.Global.Node() == node {
			out = append(out, b)
		}
	}
	return out
}

// recoverAll runs recovery passes until no branch of node is left (a
// MariaDB branch is busy while its old session detaches), and returns the
// decisions the passes ended.
func recoverAll(t *testing.T, rec *recovery.Recoverer, node string) []string {
	t.Helper()
	var ended []string
	delay := time.Millisecond
	for deadline := time.Now().Add(20 * time.Second); ; {
		rep := rec.Pass(context.Background(), false)
		ended = append(ended, rep.Ended...)
		left := 0
		for _, b := range ours(rep, node) {
			if b.Result == "" || b.Err != nil || b.Result == "busy: retry later" {
				left++
			}
		}
		if left == 0 {
			return ended
		}
		if time.Now().After(deadline) {
			t.Fatalf("recovery still leaves %d branches of %s: %+v", left, node, ours(rep, node))
		}
		time.Sleep(delay)
		delay = min(2*delay, 100*time.Millisecond)
	}
}

// fixed is an Enlister that hands out one branch begun elsewhere.
type fixed struct{ b drivers.Branch }

func (f fixed) Enlist(context.Context, drivers.Resource) (drivers.Branch, error) { return f.b, nil }
