package integration

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"syscall"
	"testing"
	"time"

	mysqldriver "github.com/go-sql-driver/mysql"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/xabridge/xabridge/decisionlog"
	"github.com/xabridge/xabridge/drivers"
	"github.com/xabridge/xabridge/internal/crashcheck"
)

// restartTimeout is the transaction timeout (the fence) of the coordinator
// processes in TestRestartFastCleanup: long, so that a cleanup that waited
// for the fence could not be mistaken for the fast path.
const restartTimeout = 60 * time.Second

// TestRestartFastCleanup is the restart fast path (issue 11, item 4): a
// coordinator process is SIGKILLed once every branch of a transfer is
// prepared and before its decision, leaving undecided prepared branches
// (and their row locks) on PostgreSQL and MariaDB; a coordinator process
// restarted with the same node id and log rolls them back in its start-up
// pass (recovery with DeadBefore = its start), long before their fence
// (restartTimeout), then runs its own transfers. It measures restart → zero
// stranded branches of the dead process, checks that the row locks are
// gone, and checks every invariant over both processes' transfers. Both
// processes take the node's lock in the databases before their start-up
// pass: the restart shows that the servers release the killed one's.
//
// With the decision kept in a participant (keeper mode) that participant's
// branch never prepares, so the dead process's branches are on the other
// engine only; the start-up pass fences each orphan in the keeper's table
// (an abort row) before it rolls it back.
func TestRestartFastCleanup(t *testing.T) {
	e := getEnv(t)
	for i, c := range []struct {
		order   crashcheck.Order
		keeper  crashcheck.Keeper
		engines []string // where the dead process leaves prepared branches
	}{
		{crashcheck.PGFirst, crashcheck.KeeperNone, []string{"postgres", "mariadb"}},
		{crashcheck.MyFirst, crashcheck.KeeperNone, []string{"postgres", "mariadb"}},
		{crashcheck.MyFirst, crashcheck.KeeperPG, []string{"mariadb"}},
		{crashcheck.PGFirst, crashcheck.KeeperMy, []string{"postgres"}},
	} {
		name := string(c.order)
		if c.keeper != crashcheck.KeeperNone {
			name += "/keeper-" + string(c.keeper)
		}
		t.Run(name, func(t *testing.T) {
			e.restartFast(t, c.order, c.keeper, c.engines, uint64(7000+i))
		})
	}
}

func (e *chaosEnv) restartFast(t *testing.T, order crashcheck.Order, keeper crashcheck.Keeper, engines []string, seed uint64) {
	s := e.newScenario(t, 4)
	s.keeper = keeper
	ctx := context.Background()
	timeout := "-timeout=" + restartTimeout.String()
	// -recover-at-start: the first process holds the node's lock in both
	// databases when it dies, so the restart shows the servers release a
	// SIGKILLed process's lock (its "lock-wait").
	r := s.runChild(order, "after-all-prepared", 3, 4, 60, 0, seed, timeout, "-recover-at-start")
	if !r.killed || !r.crashed {
		t.Fatalf("crash app was not killed at after-all-prepared (killed %v, crash point reached %v, exit %d); stderr:\n%s",
			r.killed, r.crashed, r.exitCode, r.stderr)
	}
	killed := time.Now()

	// The dead process's undecided branches are prepared on both engines
	// (a killed process's MariaDB sessions may take a moment to let go of
	// theirs: polled) and hold row locks.
	var before map[string]int
	deadline := time.Now().Add(10 * time.Second)
	for {
		var err error
		if before, err = s.deadBranches(ctx, killed); err != nil {
			t.Fatal(err)
		}
		all := true
		for _, engine := range engines {
			all = all && before[engine] > 0
		}
		if all {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("after the kill, prepared branches of the dead process: %v; want some on %v", before, engines)
		}
		time.Sleep(20 * time.Millisecond)
	}
	for _, engine := range engines {
		if err := s.lockProbe(ctx, engine); !isLockTimeout(err) {
			t.Fatalf("%s: updating every account while the dead process's branches are prepared: %v; want a lock timeout", engine, err)
		}
	}

	// The restart: the same node id and log, a new process.
	cctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
	defer cancel()
	cmd, out, errb := s.childCommand(cctx, order, "", 1, 2, 20, seed+1, timeout, "-recover-at-start")
	restarted := time.Now()
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	var cleared time.Duration
	for {
		left, err := s.deadBranches(ctx, killed)
		if err != nil {
			_ = cmd.Process.Signal(syscall.SIGKILL)
			t.Fatal(err)
		}
		if left["postgres"]+left["mariadb"] == 0 {
			cleared = time.Since(restarted)
			break
		}
		if time.Since(restarted) > restartTimeout {
			_ = cmd.Process.Signal(syscall.SIGKILL)
			t.Fatalf("%v of the dead process's branches still prepared %v after the restart", left, time.Since(restarted))
		}
		time.Sleep(20 * time.Millisecond)
	}
	// Long before the fence: the transactions began before the kill, so
	// their deadlines are at most restartTimeout after it.
	if fence := killed.Add(restartTimeout); !time.Now().Before(fence) {
		t.Fatalf("the branches were only cleared %v after the restart, past their fence", cleared)
	}
	if cleared > 20*time.Second {
		t.Errorf("the dead process's branches took %v after the restart to clear; want a start-up pass (seconds), not the fence (%v)", cleared, restartTimeout)
	}
	for _, engine := range []string{"postgres", "mariadb"} {
		if err := s.lockProbe(ctx, engine); err != nil {
			t.Errorf("%s: updating every account after the restart's cleanup: %v; want the row locks released", engine, err)
		}
	}
	r2 := s.waitChild(cctx, cmd, out, errb)
	if r2.killed || r2.exitCode != 0 {
		t.Fatalf("restarted crash app: killed %v, exit %d; stderr:\n%s", r2.killed, r2.exitCode, r2.stderr)
	}
	note := ""
	for _, line := range strings.Split(r2.stdout, "\n") {
		if strings.HasPrefix(line, "note restart-recovery ") {
			note = strings.TrimPrefix(line, "note ")
		}
	}
	if note == "" {
		t.Fatalf("the restarted crash app wrote no restart-recovery note; stdout:\n%s", r2.stdout)
	}
	t.Logf("dead process's branches at the kill: %v; restart -> zero stranded: %v (fence %v); start-up pass: %s",
		before, cleared.Round(time.Millisecond), restartTimeout, note)
	if f := strings.Fields(note); len(f) != 10 || f[8] != "lock-wait" {
		t.Errorf("restart-recovery note %q: want the node lock's wait at its end", note)
	}

	// Every invariant, over what both processes' callers were told.
	j := r.journal
	for id, o := range r2.journal {
		j[id] = o
	}
	if keeper != crashcheck.KeeperNone {
		// The victim was fenced in the keeper before its rollback (abort
		// markers are kept for 10 minutes past the deadline).
		row, found, err := s.keptRow(ctx, keeper, r.victim)
		if err != nil {
			t.Fatal(err)
		}
		if !found || !row.Abort {
			t.Errorf("the keeper's row for the killed undecided transfer %s: found %v, abort %v; want the abort marker the start-up pass fenced it with", r.victim, found, row.Abort)
		}
	}
	res := s.recoverAndCheck(j)
	s.wantPresent(r.victim, false)
	scenario := "coordinator SIGKILL after-all-prepared, restarted: start-up pass (DeadBefore)"
	if keeper != crashcheck.KeeperNone {
		scenario += ", decision kept in " + keeperName(keeper)
	}
	results.add(scenario, enginesFor(order), 1, len(j), res)
}

// deadBranches counts, per engine, the prepared branches of the scenario's
// node whose transactions began before t (a killed process's).
func (s *scenario) deadBranches(ctx context.Context, t time.Time) (map[string]int, error) {
	n := map[string]int{"postgres": 0, "mariadb": 0}
	for engine, res := range map[string]drivers.Resource{"postgres": s.bank.PG, "mariadb": s.bank.My} {
		ps, err := res.Recover(ctx)
		if err != nil {
			return nil, fmt.Errorf("listing %s: %w", engine, err)
		}
		for _, p := range ps {
			if p.Ours && p.XID.Global.Node() == s.node && p.XID.Global.Begin().Before(t) {
				n[engine]++
			}
		}
	}
	return n, nil
}

// lockProbe updates every account of the engine in a transaction it rolls
// back, waiting at most a second for a row lock: a lock timeout error
// means some prepared branch (or a running transfer) holds one.
func (s *scenario) lockProbe(ctx context.Context, engine string) error {
	accounts := s.bank.Table("accounts")
	if engine == "postgres" {
		tx, err := s.bank.PGPool.Begin(ctx)
		if err != nil {
			return err
		}
		defer func() { _ = tx.Rollback(ctx) }()
		if _, err := tx.Exec(ctx, "SET LOCAL lock_timeout = '1s'"); err != nil {
			return err
		}
		_, err = tx.Exec(ctx, "UPDATE "+accounts+" SET balance = balance")
		return err
	}
	conn, err := s.bank.MyDB.Conn(ctx)
	if err != nil {
		return err
	}
	defer conn.Close()
	if _, err := conn.ExecContext(ctx, "SET SESSION innodb_lock_wait_timeout = 1"); err != nil {
		return err
	}
	defer func() { _, _ = conn.ExecContext(ctx, "SET SESSION innodb_lock_wait_timeout = DEFAULT") }()
	tx, err := conn.BeginTx(ctx, nil)
	if err != nil {
		return err
	}
	defer func() { _ = tx.Rollback() }()
	_, err = tx.ExecContext(ctx, "UPDATE "+accounts+" SET balance = balance")
	return err
}

// isLockTimeout reports whether err is PostgreSQL's lock_timeout (55P03)
// or MariaDB's lock wait timeout (1205).
func isLockTimeout(err error) bool {
	var pe *pgconn.PgError
	var me *mysqldriver.MySQLError
	switch {
	case errors.As(err, &pe):
		return pe.Code == "55P03"
	case errors.As(err, &me):
		return me.Number == 1205
	}
	return false
}

// keptRow looks the transfer's decision up in the keeper's table.
func (s *scenario) keptRow(ctx context.Context, keeper crashcheck.Keeper, id string) (decisionlog.Decision, bool, error) {
	g, err := drivers.ParseGlobalID(id)
	if err != nil {
		return decisionlog.Decision{}, false, err
	}
	var k decisionlog.Keeper = s.bank.PG
	if keeper == crashcheck.KeeperMy {
		k = s.bank.My
	}
	return k.LookupDecision(ctx, g)
}
