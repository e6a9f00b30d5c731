package integration

import (
	"fmt"
	"testing"

	"github.com/xabridge/xabridge/internal/chaos"
)

// TestChaosCoordinatorCrash kills the coordinator process with SIGKILL at
// every protocol step, for both enlist orders (so each step hits each
// engine as branch 0 and as branch 1), then restarts a coordinator on the
// same log with recovery beside it (or runs recovery alone, as an operator
// would), and checks every invariant: money conserved,
// each transfer in both databases or neither, what callers were told
// honoured, the log agreeing with the databases, nothing of ours left
// prepared, foreign prepared transactions untouched.
func TestChaosCoordinatorCrash(t *testing.T) {
	e := getEnv(t)
	// Light load (2 workers, the 3rd-6th time the step is reached) and
	// heavier load (4 workers, later): earlier transfers have finished,
	// others are in flight at random steps when the process dies.
	loads := []struct {
		name         string
		workers, nth int
	}{{"light", 2, 3}, {"busy", 4, 12}}
	for oi, order := range []chaos.Order{chaos.PGFirst, chaos.MyFirst} {
		for pi, point := range chaos.MatrixPoints() {
			for li, load := range loads {
				t.Run(string(order)+"/"+point+"/"+load.name, func(t *testing.T) {
					t.Parallel()
					s := e.newScenario(t, 4)
					nth := load.nth + pi%4
					r := s.runChild(order, point, nth, load.workers, 60, 0, uint64(oi*100+pi*10+li))
					if !r.killed || !r.crashed {
						t.Fatalf("crash app was not killed at %s (killed %v, crash point reached %v, exit %d); stderr:\n%s",
							point, r.killed, r.crashed, r.exitCode, r.stderr)
					}
					// Half the runs restart a coordinator (it finishes logged
					// decisions itself), half run recovery alone: each crash
					// point gets both, in each order.
					recoveryOnly := (oi+pi+li)%2 == 1
					res := s.recoverAndCheckWith(r.journal, recoveryOnly)
					// The transfer killed at the crash point: committed
					// everywhere once its decision was durable, aborted
					// everywhere before.
					cp, err := chaos.ParseCrashPoint(point)
					if err != nil {
						t.Fatal(err)
					}
					s.wantPresent(r.victim, cp.Decided())
					how := "coordinator restarted"
					if recoveryOnly {
						how = "recovery alone"
					}
					results.add("coordinator SIGKILL at "+point, enginesFor(order)+"; "+how, 1, len(r.journal), res)
					t.Logf("transfers begun %d, outcomes %v; after recovery %d committed", len(r.journal), r.journal.Count(), res.Transfers)
				})
			}
		}
	}
}

// enginesFor names the branch order for the report.
func enginesFor(o chaos.Order) string {
	switch o {
	case chaos.PGFirst:
		return "postgres=branch 0, mariadb=branch 1"
	case chaos.MyFirst:
		return "mariadb=branch 0, postgres=branch 1"
	}
	return fmt.Sprint(o)
}

// TestChaosCoordinatorCrashKeeper is the crash matrix with the commit
// decision kept in a participant (xa.Config.DecisionResource) instead of
// the log: in PostgreSQL, then in MariaDB, each in both enlist orders. The
// keeper's branch never prepares, so "after-prepare" of its branch number
// is not a step of the protocol and is left out; "after-decision" is the
// moment its local commit returned. After recovery (configured with the
// same keeper) no commit decision of the node may be left in a decision
// table.
func TestChaosCoordinatorCrashKeeper(t *testing.T) {
	e := getEnv(t)
	loads := []struct {
		name         string
		workers, nth int
	}{{"light", 2, 3}, {"busy", 4, 12}}
	for ki, keeper := range []chaos.Keeper{chaos.KeeperPG, chaos.KeeperMy} {
		for oi, order := range []chaos.Order{chaos.PGFirst, chaos.MyFirst} {
			kb := 0 // the keeper's branch number
			if (keeper == chaos.KeeperPG) != (order == chaos.PGFirst) {
				kb = 1
			}
			for pi, point := range chaos.MatrixPoints() {
				if point == fmt.Sprintf("after-prepare:%d", kb) {
					continue
				}
				load := loads[(pi+oi+ki)%2]
				t.Run(string(keeper)+"/"+string(order)+"/"+point, func(t *testing.T) {
					t.Parallel()
					s := e.newScenario(t, 4)
					s.keeper = keeper
					r := s.runChild(order, point, load.nth+pi%4, load.workers, 60, 0, uint64(1000+ki*100+oi*10+pi))
					if !r.killed || !r.crashed {
						t.Fatalf("crash app was not killed at %s (killed %v, crash point reached %v, exit %d); stderr:\n%s",
							point, r.killed, r.crashed, r.exitCode, r.stderr)
					}
					recoveryOnly := (ki+oi+pi)%2 == 1
					res := s.recoverAndCheckWith(r.journal, recoveryOnly)
					cp, err := chaos.ParseCrashPoint(point)
					if err != nil {
						t.Fatal(err)
					}
					s.wantPresent(r.victim, cp.Decided())
					how := "coordinator restarted"
					if recoveryOnly {
						how = "recovery alone"
					}
					results.add("coordinator SIGKILL at "+point+", decision kept in "+keeperName(keeper), enginesFor(order)+"; "+how, 1, len(r.journal), res)
					t.Logf("transfers begun %d, outcomes %v; after recovery %d committed", len(r.journal), r.journal.Count(), res.Transfers)
				})
			}
		}
	}
}

// keeperName names a decision keeper for the report.
func keeperName(k chaos.Keeper) string {
	switch k {
	case chaos.KeeperPG:
		return "postgres"
	case chaos.KeeperMy:
		return "mariadb"
	}
	return "the log"
}
