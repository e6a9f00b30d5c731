package integration

import (
	"bytes"
	"context"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/xabridge/xabridge/drivers"
	"github.com/xabridge/xabridge/internal/crashcheck"
	"github.com/xabridge/xabridge/internal/dbproc"
	"github.com/xabridge/xabridge/xa"
)

// TestChaosServerCrash SIGKILLs a database server (the PostgreSQL
// postmaster, mariadbd) while a workload runs, at three moments of one
// transaction whose branch on that server is prepared: right after it
// prepared, once the commit decision is durable (phase 2 about to run), and
// after the other branch committed (phase 2 half done). The server restarts
// on the same data directory; its prepared branches must survive, the
// workload must get going again, and after recovery every invariant holds.
// The decided transaction itself must end committed on both servers.
func TestChaosServerCrash(t *testing.T) { serverCrash(t, getEnv(t), "SIGKILL") }

// serverCrash is the server crash matrix on e's servers; kill names how
// they are killed in the results.
func serverCrash(t *testing.T, e *chaosEnv, kill string) {
	for _, srv := range []dbproc.Server{dbproc.PG, dbproc.My} {
		// The killed server's branch is branch 1, so "the other branch
		// committed" is branch 0 committing.
		order, engine := crashcheck.MyFirst, "postgres"
		if srv == dbproc.My {
			order, engine = crashcheck.PGFirst, "mariadb"
		}
		for _, when := range []struct {
			name    string
			point   string
			decided bool
		}{
			{"prepared", "after-prepare:1", false},
			{"decided", "after-decision", true},
			{"phase2", "after-commit:0", true},
		} {
			t.Run(engine+"/"+when.name, func(t *testing.T) {
				s := e.newScenario(t, 8)
				cp, err := crashcheck.ParseCrashPoint(when.point)
				if err != nil {
					t.Fatal(err)
				}
				ctx, cancel := context.WithCancel(context.Background())
				defer cancel()

				var victim drivers.GlobalID
				reached := make(chan struct{})
				resume := make(chan struct{})
				var once sync.Once
				// The hook stops the victim transaction at its step until
				// the server is dead; other workers go on meanwhile.
				hook := cp.Hook(5, func(_ xa.Step, info xa.StepInfo) {
					once.Do(func() {
						victim = info.GTRID
						close(reached)
						<-resume
					})
				})
				coord, err := xa.New(ctx, xa.Config{
					NodeID: s.node, LogDir: s.logDir, Resources: []drivers.Resource{s.bank.PG, s.bank.My},
					Timeout: 10 * time.Second, Phase2Timeout: 2 * time.Second, Hook: hook,
				})
				if err != nil {
					t.Fatal(err)
				}
				var journal bytes.Buffer
				jw := crashcheck.NewJournalWriter(&syncWriter{w: &journal})
				w := &crashcheck.Workload{Bank: s.bank, Coord: coord, Order: order, Workers: 4, Accounts: chaosAccounts, Seed: 7, Journal: jw}
				var st *crashcheck.Stats
				done := make(chan struct{})
				go func() {
					defer close(done)
					st = w.Run(ctx)
				}()

				select {
				case <-reached:
				case <-time.After(60 * time.Second):
					cancel()
					<-done
					t.Fatalf("the workload never reached %s: %s", when.point, st)
				}
				if err := e.pair.Kill9(context.Background(), srv); err != nil {
					close(resume)
					t.Fatal(err)
				}
				close(resume)
				start := time.Now()
				if err := e.pair.StartServer(context.Background(), srv); err != nil {
					t.Fatal(err)
				}
				restart := time.Since(start)
				// The check's own pools lost their connections with the
				// server (pgxpool does not retry a dead one).
				e.admin.PGPool.Reset()
				s.bank.PGPool.Reset()
				// Service resumes: more transfers commit after the restart.
				base := w.Progress().Committed.Load()
				if !poll(60*time.Second, func() bool { return w.Progress().Committed.Load() >= base+5 }) {
					t.Errorf("no transfer committed within 60s of the restart")
				}
				cancel()
				<-done
				// Phase 2 left unfinished is handed to recovery. (Known
				// adapter issue: after a MariaDB restart, the connection id
				// of a branch's preparing session may be reused by a new
				// session, and this process's mysql.Resource then answers
				// "busy" for that branch for as long as the new session
				// lives; recovery from a fresh process is not affected.)
				if err := coord.Close(); err != nil {
					t.Errorf("closing the coordinator: %v", err)
				}
				j, err := crashcheck.ReadJournal(&journal)
				if err != nil {
					t.Fatal(err)
				}
				res := s.recoverAndCheck(j)
				inPG, inMy, err := crashcheck.TransferPresent(context.Background(), s.bank, victim.String())
				if err != nil {
					t.Fatal(err)
				}
				if inPG != inMy || (when.decided && !inPG) {
					t.Errorf("transfer %s stopped at %s: in postgres %v, in mysql %v (decided: %v)", victim, when.point, inPG, inMy, when.decided)
				}
				results.add(fmt.Sprintf("%s %s, %s", engine, kill, map[string]string{
					"prepared": "branch just prepared", "decided": "decision durable, before phase 2", "phase2": "during phase 2",
				}[when.name]), engine, 1, len(j), res)
				t.Logf("restart took %s; %s; after recovery %d transfers", restart.Round(time.Millisecond), st, res.Transfers)
			})
		}
	}
}

// syncWriter serialises writes to a buffer read after the writers stop.
type syncWriter struct {
	mu sync.Mutex
	w  *bytes.Buffer
}

func (s *syncWriter) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.w.Write(p)
}

// poll calls cond every 20ms until it holds or timeout passes.
func poll(timeout time.Duration, cond func() bool) bool {
	return pollEvery(timeout, 20*time.Millisecond, cond)
}

// pollEvery calls cond every interval until it holds or timeout passes.
func pollEvery(timeout, every time.Duration, cond func() bool) bool {
	deadline := time.Now().Add(timeout)
	for {
		if cond() {
			return true
		}
		if time.Now().After(deadline) {
			return false
		}
		time.Sleep(every)
	}
}
