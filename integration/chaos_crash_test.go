package integration

import (
	"fmt"
	"testing"

	"github.com/xabridge/xabridge/internal/crashcheck"
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
	for oi, order := range []crashcheck.Order{crashcheck.PGFirst, crashcheck.MyFirst} {
		for pi, point := range crashcheck.MatrixPoints() {
			for li, load := range crashLoads {
				t.Run(string(order)+"/"+point+"/"+load.name, func(t *testing.T) {
					t.Parallel()
					// Half the runs restart a coordinator (it finishes logged
					// decisions itself), half run recovery alone: each crash
					// point gets both, in each order.
					e.crashAndCheck(t, crashRun{order: order, point: point, nth: load.nth + pi%4, workers: load.workers,
						seed: uint64(oi*100 + pi*10 + li), recoveryOnly: (oi+pi+li)%2 == 1})
				})
			}
		}
	}
}

// crashLoads are the crash matrix's loads: light (2 workers, the 3rd-6th
// time the step is reached) and heavier (4 workers, later): earlier
// transfers have finished, others are in flight at random steps when the
// process dies.
var crashLoads = []struct {
	name         string
	workers, nth int
}{{"light", 2, 3}, {"busy", 4, 12}}

// crashRun is one run of the crash matrix.
type crashRun struct {
	keeper       crashcheck.Keeper
	order        crashcheck.Order
	point        string
	nth, workers int
	seed         uint64
	recoveryOnly bool
}

// crashAndCheck runs the crash app until it kills itself at the run's
// crash point, recovers (a restarted coordinator, or recovery alone),
// checks every invariant, and checks the transaction killed at the point:
// committed everywhere once its decision was durable, aborted everywhere
// before.
func (e *chaosEnv) crashAndCheck(t *testing.T, c crashRun) {
	s := e.newScenario(t, 4)
	s.keeper = c.keeper
	r := s.runChild(c.order, c.point, c.nth, c.workers, 60, 0, c.seed)
	if !r.killed || !r.crashed {
		t.Fatalf("crash app was not killed at %s (killed %v, crash point reached %v, exit %d); stderr:\n%s",
			c.point, r.killed, r.crashed, r.exitCode, r.stderr)
	}
	res := s.recoverAndCheckWith(r.journal, c.recoveryOnly)
	cp, err := crashcheck.ParseCrashPoint(c.point)
	if err != nil {
		t.Fatal(err)
	}
	s.wantPresent(r.victim, cp.Decided())
	scenario, how := "coordinator SIGKILL at "+c.point, "coordinator restarted"
	if c.keeper != crashcheck.KeeperNone {
		scenario += ", decision kept in " + keeperName(c.keeper)
	}
	if c.recoveryOnly {
		how = "recovery alone"
	}
	results.add(scenario, enginesFor(c.order)+"; "+how, 1, len(r.journal), res)
	t.Logf("transfers begun %d, outcomes %v; after recovery %d committed", len(r.journal), r.journal.Count(), res.Transfers)
}

// enginesFor names the branch order for the report.
func enginesFor(o crashcheck.Order) string {
	switch o {
	case crashcheck.PGFirst:
		return "postgres=branch 0, mariadb=branch 1"
	case crashcheck.MyFirst:
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
	for ki, keeper := range []crashcheck.Keeper{crashcheck.KeeperPG, crashcheck.KeeperMy} {
		for oi, order := range []crashcheck.Order{crashcheck.PGFirst, crashcheck.MyFirst} {
			kb := 0 // the keeper's branch number
			if (keeper == crashcheck.KeeperPG) != (order == crashcheck.PGFirst) {
				kb = 1
			}
			for pi, point := range crashcheck.MatrixPoints() {
				if point == fmt.Sprintf("after-prepare:%d", kb) {
					continue
				}
				load := crashLoads[(pi+oi+ki)%2]
				t.Run(string(keeper)+"/"+string(order)+"/"+point, func(t *testing.T) {
					t.Parallel()
					e.crashAndCheck(t, crashRun{keeper: keeper, order: order, point: point, nth: load.nth + pi%4, workers: load.workers,
						seed: uint64(1000 + ki*100 + oi*10 + pi), recoveryOnly: (ki+oi+pi)%2 == 1})
				})
			}
		}
	}
}

// keeperName names a decision keeper for the report.
func keeperName(k crashcheck.Keeper) string {
	switch k {
	case crashcheck.KeeperPG:
		return "postgres"
	case crashcheck.KeeperMy:
		return "mariadb"
	}
	return "the log"
}
