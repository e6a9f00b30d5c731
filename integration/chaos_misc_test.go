package integration

import (
	"bytes"
	"context"
	"errors"
	"math/rand/v2"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/xabridge/xabridge/decisionlog"
	"github.com/xabridge/xabridge/drivers"
	"github.com/xabridge/xabridge/internal/bank"
	"github.com/xabridge/xabridge/internal/crashcheck"
	"github.com/xabridge/xabridge/recovery"
	"github.com/xabridge/xabridge/xa"
)

// TestChaosContention runs many workers on three rows per database, touching
// two of them
// in random order and interleaving the two databases at random: the
// databases detect the local deadlocks, the transaction timeout breaks the
// cross-database ones, and rows wait on each other's locks all the time.
// Each transaction must commit or abort whole, and none may be left
// prepared, even before recovery runs.
func TestChaosContention(t *testing.T) {
	e := getEnv(t)
	s := e.newScenario(t, 16)
	ctx := context.Background()
	coord, err := xa.New(ctx, xa.Config{
		NodeID: s.node, LogDir: s.logDir, Resources: []drivers.Resource{s.bank.PG, s.bank.My},
		Timeout: 2 * time.Second,
	})
	if err != nil {
		t.Fatal(err)
	}
	var journal bytes.Buffer
	jw := crashcheck.NewJournalWriter(&syncWriter{w: &journal})
	const workers, each = 8, 10
	var committed, retryable, timedOut, other atomic.Int64
	var wg sync.WaitGroup
	for w := 0; w < workers; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			rng := rand.New(rand.NewPCG(uint64(w), 42))
			for i := 0; i < each; i++ {
				id, err := contendedTransfer(ctx, coord, s, rng, jw.Begin)
				jw.End(id, crashcheck.OutcomeOf(err))
				switch {
				case err == nil:
					committed.Add(1)
				case xa.Retryable(err):
					retryable.Add(1)
				case errors.Is(err, context.DeadlineExceeded):
					timedOut.Add(1)
				default:
					other.Add(1)
					t.Logf("transfer %s: %v", id, err)
				}
			}
		}()
	}
	wg.Wait()
	// Nothing prepared behind the callers' backs, before any recovery.
	if n := prepared(t, s.bank, s.node); n != 0 {
		t.Errorf("%d branches left prepared after every transaction returned", n)
	}
	if err := coord.Close(); err != nil {
		t.Fatal(err)
	}
	if retryable.Load()+timedOut.Load() == 0 {
		t.Errorf("no deadlock, lock timeout or transaction timeout happened: the test did not contend")
	}
	j, err := crashcheck.ReadJournal(&journal)
	if err != nil {
		t.Fatal(err)
	}
	res := s.recoverAndCheck(j)
	results.add("contention: 8 workers on 3 rows per database", "both", 0, len(j), res)
	t.Logf("committed %d, deadlock/lock timeout %d, transaction timeout %d, other %d", committed.Load(), retryable.Load(), timedOut.Load(), other.Load())
}

// contendedTransfer moves money from PostgreSQL row a to MySQL row c and
// also locks the other row on each side, in a random statement order
// across both databases.
func contendedTransfer(ctx context.Context, c *xa.Coordinator, s *scenario, rng *rand.Rand, begun func(string)) (id string, err error) {
	acc, tr := s.bank.Table("accounts"), s.bank.Table("transfers")
	// Two of three rows on each side.
	a, cc := rng.Int64N(3)+1, rng.Int64N(3)+1
	b, d := a%3+1, cc%3+1
	amt := rng.Int64N(20) + 1
	// Mostly PostgreSQL's two rows (in random order) before MySQL's two:
	// local deadlocks the databases detect. Now and then any order, which
	// makes cross-database deadlocks only the transaction timeout breaks.
	perm := []int{0, 1, 2, 3}
	if rng.IntN(2) == 0 {
		perm[0], perm[1] = 1, 0
	}
	if rng.IntN(2) == 0 {
		perm[2], perm[3] = 3, 2
	}
	if rng.IntN(16) == 0 {
		perm = rng.Perm(4)
	}
	err = c.Run(ctx, func(ctx context.Context, tx *xa.Tx) error {
		id = tx.GlobalID().String()
		begun(id)
		pg, err := s.bank.PG.Enlist(ctx, tx)
		if err != nil {
			return err
		}
		my, err := s.bank.My.Enlist(ctx, tx)
		if err != nil {
			return err
		}
		for _, k := range perm {
			switch k {
			case 0:
				_, err = pg.Exec(ctx, "UPDATE "+acc+" SET balance = balance - $1 WHERE id = $2", amt, a)
			case 1:
				_, err = pg.Exec(ctx, "UPDATE "+acc+" SET balance = balance WHERE id = $1", b)
			case 2:
				_, err = my.ExecContext(ctx, "UPDATE "+acc+" SET balance = balance + ? WHERE id = ?", amt, cc)
			case 3:
				_, err = my.ExecContext(ctx, "UPDATE "+acc+" SET balance = balance WHERE id = ?", d)
			}
			if err != nil {
				return err
			}
		}
		if _, err := pg.Exec(ctx, "INSERT INTO "+tr+" (id, amount) VALUES ($1, $2)", id, amt); err != nil {
			return err
		}
		_, err = my.ExecContext(ctx, "INSERT INTO "+tr+" (id, amount) VALUES (?, ?)", id, amt)
		return err
	})
	return id, err
}

// TestChaosDuplicateDelivery delivers commit and rollback of the same
// prepared branches several times, concurrently and again afterwards, the
// way a retried message, a second recovery process and a restarted
// coordinator would: the effect must happen exactly once.
func TestChaosDuplicateDelivery(t *testing.T) {
	e := getEnv(t)
	ctx := context.Background()
	for _, tc := range []struct {
		name   string
		point  string
		commit bool
	}{
		{"commit", "after-decision", true},
		{"rollback", "after-prepare:1", false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			s := e.newScenario(t, 4)
			r := s.runChild(crashcheck.PGFirst, tc.point, 2, 1, 10, 0, 5)
			if !r.killed || !r.crashed {
				t.Fatalf("crash app not killed at %s; stderr:\n%s", tc.point, r.stderr)
			}
			g, err := drivers.ParseGlobalID(r.victim)
			if err != nil {
				t.Fatal(err)
			}
			if !tc.commit {
				// Rolling back agrees with the log only once the abort is
				// recorded (the fence), as recovery does.
				l, err := decisionlog.OpenFileLog(s.logDir, decisionlog.FileLogOptions{})
				if err != nil {
					t.Fatal(err)
				}
				if err := l.Abort(ctx, decisionlog.Action{GTRID: g, Op: "presume-abort", Actor: "test", At: time.Now()}); err != nil {
					t.Fatal(err)
				}
				if err := l.Close(); err != nil {
					t.Fatal(err)
				}
			}
			// Branch 0 is PostgreSQL, branch 1 MySQL (PGFirst).
			var done [2]atomic.Int64
			var wg sync.WaitGroup
			for round := 0; round < 3; round++ {
				for i, res := range []drivers.Resource{s.bank.PG, s.bank.My} {
					wg.Add(1)
					go func() {
						defer wg.Done()
						if deliver(t, res, drivers.XID{Global: g, Branch: uint8(i)}, tc.commit) {
							done[i].Add(1)
						}
					}()
				}
				if round == 1 {
					wg.Wait() // two concurrent rounds, then one more afterwards
				}
			}
			wg.Wait()
			for i := range done {
				if n := done[i].Load(); n != 1 {
					t.Errorf("branch %d finished %d times, want exactly once", i, n)
				}
			}
			s.wantPresent(r.victim, tc.commit)
			// A restarted coordinator re-delivers the logged decision; it
			// must find the work done and end it.
			res := s.recoverAndCheck(r.journal)
			s.wantPresent(r.victim, tc.commit)
			results.add("duplicate "+tc.name+" delivery (3x per branch)", "both", 1, len(r.journal), res)
		})
	}
}

// deliver commits or rolls back a prepared branch by XID until the server
// says it did (true) or that there is no such branch (false), retrying
// while it is busy (a MariaDB session still detaching).
func deliver(t *testing.T, r drivers.Resource, x drivers.XID, commit bool) bool {
	deadline := time.Now().Add(30 * time.Second)
	for {
		var err error
		if commit {
			err = r.CommitPrepared(context.Background(), x)
		} else {
			err = r.RollbackPrepared(context.Background(), x)
		}
		switch {
		case err == nil:
			return true
		case errors.Is(err, drivers.ErrNotFound):
			return false
		case time.Now().After(deadline):
			t.Errorf("delivering to %s: %v", r.Name(), err)
			return false
		}
		time.Sleep(20 * time.Millisecond) // backoff between retries of a busy branch
	}
}

// TestChaosClockSkew runs a coordinator whose clock is minutes off from the
// clock of recovery (and of the databases' host), with recovery passes
// running beside it while a transaction sits prepared. Recovery must not
// roll back the live transaction: it is active in the coordinator (Active),
// whatever its deadline says. Without Active (a misconfiguration) the fence
// still keeps the outcome atomic: recovery records the abort first, and the
// late commit decision is refused.
//
// "Coordinator behind" is simulated by running recovery's clock ahead:
// shifting xa.Config.Now backwards also moves the transaction's context
// deadline into the past (xa derives it from the shifted clock), which
// aborts every transaction at once; a real skewed host clock does not.
func TestChaosClockSkew(t *testing.T) {
	e := getEnv(t)
	for _, tc := range []struct {
		name         string
		coordSkew    time.Duration // added to the coordinator's clock
		recoverySkew time.Duration // added to recovery's clock
		useActive    bool
		commits      bool
	}{
		{"coordinator 10 minutes behind", 0, 10 * time.Minute, true, true},
		{"coordinator 10 minutes ahead", 10 * time.Minute, 0, true, true},
		{"10 minutes behind, recovery without Active: fenced", 0, 10 * time.Minute, false, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			s := e.newScenario(t, 4)
			ctx := context.Background()
			reached, resume := make(chan drivers.GlobalID, 1), make(chan struct{})
			coord, err := xa.New(ctx, xa.Config{
				NodeID: s.node, LogDir: s.logDir, Resources: []drivers.Resource{s.bank.PG, s.bank.My},
				Timeout: 5 * time.Second,
				Now:     func() time.Time { return time.Now().Add(tc.coordSkew) },
				Hook: func(st xa.Step, info xa.StepInfo) {
					if st == xa.StepAllPrepared {
						reached <- info.GTRID
						<-resume
					}
				},
			})
			if err != nil {
				t.Fatal(err)
			}
			defer coord.Close()
			var active func(drivers.GlobalID) bool
			if tc.useActive {
				active = coord.Active
			}
			rec, err := recovery.New(recovery.Config{
				NodeID: s.node, Log: coord.Log(), Resources: []drivers.Resource{s.bank.PG, s.bank.My},
				Active: active, Settle: 200 * time.Millisecond,
				Now: func() time.Time { return time.Now().Add(tc.recoverySkew) },
			})
			if err != nil {
				t.Fatal(err)
			}
			var journal bytes.Buffer
			jw := crashcheck.NewJournalWriter(&journal)
			errc := make(chan error, 1)
			var id string
			go func() {
				var err error
				id, err = crashcheck.Transfer(ctx, coord, s.bank, bank.Transfer{PGAccount: 1, MyAccount: 2, Amount: 30}, crashcheck.PGFirst, jw.Begin)
				errc <- err
			}()
			var g drivers.GlobalID
			select {
			case g = <-reached:
			case err := <-errc:
				t.Fatalf("transfer %s ended before it prepared: %v", id, err)
			case <-time.After(60 * time.Second):
				t.Fatal("transfer never prepared")
			}
			// Recovery passes while the transaction is prepared and
			// waiting for its decision: enough for the two-scan rule.
			acted := 0
			for start := time.Now(); time.Since(start) < 1200*time.Millisecond; time.Sleep(100 * time.Millisecond) {
				for _, b := range rec.Pass(ctx, false).Branches {
					if b.Ours && b.XID.Global == g && b.Result != "" {
						acted++
						if tc.useActive {
							t.Errorf("recovery acted on a live transaction: %s %s (%s)", b.Action, b.Result, b.Reason)
						}
					}
				}
			}
			close(resume)
			err = <-errc
			jw.End(id, crashcheck.OutcomeOf(err))
			if tc.commits && err != nil {
				t.Errorf("live transaction: %v", err)
			}
			if !tc.commits {
				if acted == 0 || !errors.Is(err, decisionlog.ErrFenced) {
					t.Errorf("recovery acted %d times; transaction error %v, want it fenced", acted, err)
				}
			}
			if err := coord.Close(); err != nil {
				t.Fatal(err)
			}
			j, err := crashcheck.ReadJournal(&journal)
			if err != nil {
				t.Fatal(err)
			}
			res := s.recoverAndCheck(j)
			s.wantPresent(g.String(), tc.commits)
			results.add("clock skew: "+tc.name, "both", 0, len(j), res)
		})
	}
}

// TestChaosCheckDetectsViolations shows the invariant check is not
// vacuous: a transfer undone on one database by hand, and a prepared branch
// of the node left behind, are each reported.
func TestChaosCheckDetectsViolations(t *testing.T) {
	e := getEnv(t)
	s := e.newScenario(t, 2)
	ctx := context.Background()
	coord, err := xa.New(ctx, xa.Config{NodeID: s.node, LogDir: s.logDir, Resources: []drivers.Resource{s.bank.PG, s.bank.My}})
	if err != nil {
		t.Fatal(err)
	}
	id, err := crashcheck.Transfer(ctx, coord, s.bank, bank.Transfer{PGAccount: 1, MyAccount: 1, Amount: 50}, crashcheck.PGFirst, nil)
	if err != nil {
		t.Fatal(err)
	}
	entries := coord.Log().(*decisionlog.FileLog).Entries()
	if err := coord.Close(); err != nil {
		t.Fatal(err)
	}
	// Undo the MySQL half by hand.
	for _, q := range []string{
		"DELETE FROM " + s.bank.Table("transfers") + " WHERE id = ?",
		"UPDATE " + s.bank.Table("accounts") + " SET balance = balance - 50 WHERE id = 1 AND ? <> ''",
	} {
		if _, err := s.bank.MyDB.ExecContext(ctx, q, id); err != nil {
			t.Fatal(err)
		}
	}
	// Leave a prepared branch of the node behind.
	g, err := drivers.ParseGlobalID(id)
	if err != nil {
		t.Fatal(err)
	}
	stray := drivers.XID{Global: drivers.MustGlobalID(s.node, g.Begin(), g.Seq()+1000, g.Deadline()), Branch: 0}
	pc, err := s.bank.PGPool.Acquire(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for _, q := range []string{"BEGIN", "UPDATE " + s.bank.Table("accounts") + " SET balance = balance WHERE id = 9",
		"PREPARE TRANSACTION '" + stray.GID() + "'"} {
		if _, err := pc.Exec(ctx, q); err != nil {
			pc.Release()
			t.Fatal(err)
		}
	}
	pc.Release()
	t.Cleanup(func() { _ = s.bank.PG.RollbackPrepared(context.Background(), stray) })
	res, err := crashcheck.Check(ctx, s.bank, crashcheck.Expect{
		Node: s.node, Total: s.total, Journal: crashcheck.Journal{id: crashcheck.Committed}, Entries: entries, Foreign: e.foreign,
	})
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"money not conserved", "only in PostgreSQL", "durability", "has a commit decision but is not in the databases"} {
		found := false
		for _, v := range res.Violations {
			found = found || strings.Contains(v, want)
		}
		if !found {
			t.Errorf("no violation mentioning %q in %q", want, res.Violations)
		}
	}
	if res.Stranded != 1 {
		t.Errorf("stranded %d, want the 1 branch left prepared", res.Stranded)
	}
}
