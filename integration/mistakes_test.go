package integration

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/xabridge/xabridge/decisionlog"
	"github.com/xabridge/xabridge/drivers"
	"github.com/xabridge/xabridge/internal/bank"
	"github.com/xabridge/xabridge/internal/dbproc"
	"github.com/xabridge/xabridge/internal/dbtest"
	"github.com/xabridge/xabridge/internal/strand"
	"github.com/xabridge/xabridge/postgres"
	"github.com/xabridge/xabridge/recovery"
	"github.com/xabridge/xabridge/xa"
)

// Operator mistakes (issue 14): a resource name pointed at the wrong
// database, server or engine, and a keeper URL naming a database without
// the decision table. Each test leaves a transaction in doubt as a crashed
// coordinator leaves it, makes the mistake with recovery and resolve,
// checks the refusal and that nothing changed, then recovers with the
// right configuration and checks the transaction committed everywhere.

// mistakeDB is the second database, on the same servers, that the wrong
// URLs name.
const mistakeDB = "xabridge_mistake"

// admins opens admin connections to both servers' test databases.
func admins(t *testing.T) (*pgx.Conn, *sql.DB) {
	t.Helper()
	pc, err := pgx.Connect(context.Background(), dbtest.PG(t))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = pc.Close(context.Background()) })
	return pc, openMy(t, dbtest.MySQL(t), 2)
}

// ensureMistakeDBs creates mistakeDB on both servers (empty: no tables).
func ensureMistakeDBs(t *testing.T) {
	t.Helper()
	ctx := context.Background()
	pc, my := admins(t)
	var pe *pgconn.PgError
	if _, err := pc.Exec(ctx, "CREATE DATABASE "+mistakeDB); err != nil && !(errors.As(err, &pe) && pe.Code == "42P04") {
		t.Fatal(err)
	}
	if _, err := my.ExecContext(ctx, "CREATE DATABASE IF NOT EXISTS "+mistakeDB); err != nil {
		t.Fatal(err)
	}
}

// mistakeTable creates a table of one test on both servers, and returns
// its name and a function counting its rows on each (the transfer ids a
// transaction wrote: all-or-nothing means both counts agree).
func mistakeTable(t *testing.T) (string, func() (pg, my int)) {
	t.Helper()
	ctx := context.Background()
	pc, my := admins(t)
	tbl := "xab_mk_" + suffix()
	if _, err := pc.Exec(ctx, "CREATE TABLE "+tbl+" (id INT PRIMARY KEY)"); err != nil {
		t.Fatal(err)
	}
	if _, err := my.ExecContext(ctx, "CREATE TABLE "+tbl+" (id INT PRIMARY KEY) ENGINE=InnoDB"); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_, _ = pc.Exec(context.Background(), "DROP TABLE IF EXISTS "+tbl)
		_, _ = my.ExecContext(context.Background(), "DROP TABLE IF EXISTS "+tbl)
	})
	return tbl, func() (int, int) {
		var a, b int
		if err := pc.QueryRow(ctx, "SELECT COUNT(*) FROM "+tbl).Scan(&a); err != nil {
			t.Fatal(err)
		}
		if err := my.QueryRowContext(ctx, "SELECT COUNT(*) FROM "+tbl).Scan(&b); err != nil {
			t.Fatal(err)
		}
		return a, b
	}
}

// openRes opens the resource name on rawURL, as the CLI's --resource does.
func openRes(t *testing.T, name, rawURL string) drivers.Resource {
	t.Helper()
	r, c, err := drivers.Open(context.Background(), name, rawURL)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = c.Close() })
	return r
}

// mistakeGID is a fresh global id of node, past its fence after MinAge 0.
func mistakeGID(node string) drivers.GlobalID {
	now := time.Now()
	return strand.GlobalID(node, now, now.Add(time.Minute), 1)
}

// prepareInDoubt prepares branch xid on r, inserting one row into tbl,
// and closes its session: the branch is left in doubt, as a crash leaves
// it. Cleanup rolls it back if a test left it prepared.
func prepareInDoubt(t *testing.T, r drivers.Resource, xid drivers.XID, tbl string) {
	t.Helper()
	if err := strand.Prepare(context.Background(), r, xid, "INSERT INTO "+tbl+" VALUES (1)"); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = r.RollbackPrepared(context.Background(), xid) })
}

// identity is r's identity in its stored form.
func identity(t *testing.T, r drivers.Resource) string {
	t.Helper()
	id, err := r.(drivers.Identifier).Identity(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	return id.String()
}

// preparedOn reports which of xids r lists as prepared (ours).
func preparedOn(t *testing.T, r drivers.Resource, xids ...drivers.XID) []bool {
	t.Helper()
	ps, err := r.Recover(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	out := make([]bool, len(xids))
	for _, p := range ps {
		for i, x := range xids {
			if p.Ours && p.XID == x {
				out[i] = true
			}
		}
	}
	return out
}

// newMistakeRecoverer is recovery as the CLI runs it, with MinAge 0 (the
// operator says the coordinator is dead). The settle wait stays (1s): a
// MariaDB XA COMMIT sent while the preparing session is still closing
// answers OK and commits nothing.
func newMistakeRecoverer(t *testing.T, node string, log decisionlog.Log, fence string, rs ...drivers.Resource) *recovery.Recoverer {
	t.Helper()
	zero := time.Duration(0)
	rc, err := recovery.New(recovery.Config{NodeID: node, Log: log, Resources: rs, MinAge: &zero, DecisionResource: fence})
	if err != nil {
		t.Fatal(err)
	}
	return rc
}

// scanErr returns the first scan error of rep that wraps target.
func scanErr(rep *recovery.Report, target error) error {
	for _, e := range rep.ScanErrors {
		if errors.Is(e.Err, target) {
			return e.Err
		}
	}
	return nil
}

// wrongMySQL and friends are the mistaken resources: the names of the
// right ones on another database, or on the other engine.
type wrongCase struct {
	name  string
	wrong string // "pg" or "mysql": which resource is mistaken
	url   func(t *testing.T) string
}

var wrongCases = []wrongCase{
	{"mysql-names-another-database", "mysql", func(t *testing.T) string { return dbtest.WithDatabase(t, dbtest.MySQL(t), mistakeDB) }},
	{"mysql-names-a-postgres-url", "mysql", func(t *testing.T) string { return dbtest.PG(t) }},
	{"pg-names-another-database", "pg", func(t *testing.T) string { return dbtest.WithDatabase(t, dbtest.PG(t), mistakeDB) }},
}

// TestOperatorMistakeWrongResourceLog: with the decision in the log, a
// resource name pointed at another database or engine is refused by
// recovery passes and by resolve: the wrong resource's branch stays
// prepared and the decision stays pending (it is not ended on the wrong
// server's empty listing). Recovery with the right URLs then commits.
func TestOperatorMistakeWrongResourceLog(t *testing.T) {
	ensureMistakeDBs(t)
	for _, tc := range wrongCases {
		t.Run(tc.name, func(t *testing.T) { wrongResourceLog(t, tc.wrong, tc.url(t)) })
	}
}

// TestOperatorMistakeAnotherServer: the resource names pointed at another
// server (a private pair, its database named like ours) are refused as in
// TestOperatorMistakeWrongResourceLog: the database names agree, the
// server identities do not.
func TestOperatorMistakeAnotherServer(t *testing.T) {
	if testing.Short() {
		t.Skip("starts a private server pair")
	}
	ctx := context.Background()
	root, err := dbtest.RepoRoot()
	if err != nil {
		t.Fatal(err)
	}
	pair, err := dbproc.Start(ctx, filepath.Join(root, "scripts", "devdb"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := pair.Stop(context.Background()); err != nil {
			t.Errorf("stopping the pair: %v", err)
		}
	})
	t.Run("mysql", func(t *testing.T) { wrongResourceLog(t, "mysql", pair.MyURL()) })
	t.Run("pg", func(t *testing.T) { wrongResourceLog(t, "pg", pair.PGURL()) })
}

// wrongResourceLog leaves a transaction with a logged commit decision in
// doubt on both servers, runs recovery passes and resolve with resource
// wrong ("pg" or "mysql") on wrongURL, checks the refusal and that nothing
// changed, then recovers with the right URLs.
func wrongResourceLog(t *testing.T, wrong, wrongURL string) {
	ctx := context.Background()
	node := "mk-" + suffix()
	pg, my := openRes(t, "pg", dbtest.PG(t)), openRes(t, "mysql", dbtest.MySQL(t))
	g := mistakeGID(node)
	x0, x1 := drivers.XID{Global: g, Branch: 0}, drivers.XID{Global: g, Branch: 1}
	tbl, rows := mistakeTable(t)
	prepareInDoubt(t, pg, x0, tbl)
	prepareInDoubt(t, my, x1, tbl)
	log := decisionlog.NewMemLog(nil)
	if err := log.Commit(ctx, decisionlog.Decision{GTRID: g, At: time.Now(), Participants: []decisionlog.Participant{
		{Resource: "pg", Branch: 0, ID: identity(t, pg)}, {Resource: "mysql", Branch: 1, ID: identity(t, my)},
	}}); err != nil {
		t.Fatal(err)
	}
	rs := []drivers.Resource{pg, my}
	wrongX, wrongRight := x1, my
	if wrong == "pg" {
		rs[0] = openRes(t, "pg", wrongURL)
		wrongX, wrongRight = x0, pg
	} else {
		rs[1] = openRes(t, "mysql", wrongURL)
	}
	rc := newMistakeRecoverer(t, node, log, "", rs...)
	for i := range 2 {
		rep := rc.Pass(ctx, false)
		err := scanErr(rep, drivers.ErrWrongResource)
		if err == nil {
			t.Fatalf("pass %d: no wrong-resource error; scan errors %v", i, rep.ScanErrors)
		}
		t.Logf("pass %d: %v", i, err)
		if len(rep.Ended) != 0 {
			t.Fatalf("pass %d ended %v on the wrong resource's listing", i, rep.Ended)
		}
	}
	for _, commit := range []bool{true, false} {
		if _, err := rc.Resolve(ctx, g, commit, false, "operator"); !errors.Is(err, drivers.ErrWrongResource) {
			t.Fatalf("resolve commit=%v = %v, want ErrWrongResource", commit, err)
		}
	}
	if e, ok := log.Lookup(g); !ok || e.State != decisionlog.StateCommitted {
		t.Fatalf("decision after the mistake: %+v, want committed and pending", e)
	}
	if got := preparedOn(t, wrongRight, wrongX); !got[0] {
		t.Fatal("the branch on the mistaken resource's real database is no longer prepared")
	}
	// The correctly named resource's branch may be committed: the
	// decision is durable, so that is progress, not a change.

	recoverRight(t, newMistakeRecoverer(t, node, log, "", pg, my), func() bool {
		got := append(preparedOn(t, pg, x0), preparedOn(t, my, x1)...)
		return !got[0] && !got[1]
	})
	if e, _ := log.Lookup(g); e.State != decisionlog.StateDone {
		t.Fatalf("decision state %s after the right recovery, want done", e.State)
	}
	if a, b := rows(); a != 1 || b != 1 {
		t.Fatalf("rows after the right recovery: postgres %d, mysql %d; want the transaction committed on both", a, b)
	}
}

// recoverRight runs passes of rc, the right configuration, until done
// holds (a MariaDB branch is finished once its closed owner session has
// left the processlist, which can take a pass or two).
func recoverRight(t *testing.T, rc *recovery.Recoverer, done func() bool) {
	t.Helper()
	waitUntil(t, "the right recovery to finish the transaction", 50*time.Millisecond, func() (bool, error) {
		rep := rc.Pass(context.Background(), false)
		if len(rep.ScanErrors) != 0 {
			return false, fmt.Errorf("right configuration: scan errors %v", rep.ScanErrors)
		}
		return done() && len(rep.Ended) > 0, nil
	})
}

// keptRow writes the commit decision of g, naming the participants, into
// the keeper's table as CommitWithDecision would have.
func keptRow(t *testing.T, keeperURL string, g drivers.GlobalID, ps []decisionlog.Participant) {
	t.Helper()
	ctx := context.Background()
	parts, err := decisionlog.EncodeParticipants(ps)
	if err != nil {
		t.Fatal(err)
	}
	pc, err := pgx.Connect(ctx, keeperURL)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = pc.Close(ctx) }()
	if _, err := pc.Exec(ctx, "INSERT INTO "+postgres.DecisionTable+" (gtrid, state, participants) VALUES ($1, 'C', $2)", g.String(), string(parts)); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		c, err := pgx.Connect(context.Background(), keeperURL)
		if err == nil {
			_, _ = c.Exec(context.Background(), "DELETE FROM "+postgres.DecisionTable+" WHERE gtrid = $1", g.String())
			_ = c.Close(context.Background())
		}
	})
}

// hasTable reports whether database url holds the decision table.
func hasTable(t *testing.T, rawURL string) bool {
	t.Helper()
	ctx := context.Background()
	pc, err := pgx.Connect(ctx, rawURL)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = pc.Close(ctx) }()
	var ok bool
	if err := pc.QueryRow(ctx, "SELECT to_regclass($1) IS NOT NULL", postgres.DecisionTable).Scan(&ok); err != nil {
		t.Fatal(err)
	}
	return ok
}

// TestOperatorMistakeKeeper: the decision kept in PostgreSQL's table.
// (a) The MySQL name pointed at another database: the row is not deleted
// and the branch stays prepared. (b) The keeper's URL names a database
// without the decision table: that is an error, not "no decisions", the
// MySQL branch is not presumed aborted, resolve --rollback is refused,
// and no table is created there.
func TestOperatorMistakeKeeper(t *testing.T) {
	ensureMistakeDBs(t)
	for _, wrong := range []string{"mysql", "keeper"} {
		t.Run(wrong, func(t *testing.T) {
			ctx := context.Background()
			node := "mk-" + suffix()
			pg, my := openRes(t, "pg", dbtest.PG(t)), openRes(t, "mysql", dbtest.MySQL(t))
			if err := pg.(*postgres.Resource).EnsureDecisionTable(ctx); err != nil {
				t.Fatal(err)
			}
			g := mistakeGID(node)
			x1 := drivers.XID{Global: g, Branch: 1}
			tbl, rows := mistakeTable(t)
			prepareInDoubt(t, my, x1, tbl)
			keptRow(t, dbtest.PG(t), g, []decisionlog.Participant{{Resource: "mysql", Branch: 1, ID: identity(t, my)}})
			wrongURL := dbtest.WithDatabase(t, dbtest.PG(t), mistakeDB)
			if hasTable(t, wrongURL) {
				t.Fatalf("%s already has a decision table", mistakeDB)
			}

			rs := []drivers.Resource{pg, openRes(t, "mysql", dbtest.WithDatabase(t, dbtest.MySQL(t), mistakeDB))}
			want := drivers.ErrWrongResource
			if wrong == "keeper" {
				rs = []drivers.Resource{openRes(t, "pg", wrongURL), my}
				want = decisionlog.ErrNoDecisionTable
			}
			rc := newMistakeRecoverer(t, node, decisionlog.NewMemLog(nil), "pg", rs...)
			for i := range 2 {
				rep := rc.Pass(ctx, false)
				err := scanErr(rep, want)
				if err == nil {
					t.Fatalf("pass %d: scan errors %v, want %v", i, rep.ScanErrors, want)
				}
				t.Logf("pass %d: %v", i, err)
				for _, b := range rep.Branches {
					if b.XID == x1 && b.Result != "" {
						t.Fatalf("pass %d acted on the branch: %+v", i, b)
					}
				}
			}
			if _, err := rc.Resolve(ctx, g, false, false, "operator"); !errors.Is(err, want) {
				t.Fatalf("resolve --rollback = %v, want %v", err, want)
			}
			if d, found, err := pg.(decisionlog.Keeper).LookupDecision(ctx, g); err != nil || !found || d.Abort {
				t.Fatalf("kept decision after the mistake: %+v, %v, %v", d, found, err)
			}
			if !preparedOn(t, my, x1)[0] {
				t.Fatal("the MySQL branch is no longer prepared")
			}
			if hasTable(t, wrongURL) {
				t.Fatal("recovery created a decision table in the wrong database")
			}

			recoverRight(t, newMistakeRecoverer(t, node, decisionlog.NewMemLog(nil), "pg", pg, my), func() bool {
				return !preparedOn(t, my, x1)[0]
			})
			if _, found, err := pg.(decisionlog.Keeper).LookupDecision(ctx, g); err != nil || found {
				t.Fatalf("kept decision after the right recovery: found %v, %v", found, err)
			}
			if _, b := rows(); b != 1 {
				t.Fatalf("mysql rows after the right recovery: %d, want the kept commit applied", b)
			}
		})
	}
}

// A coordinator records each participant's identity with its commit
// decision, in the log and in a keeper's row. (The identities are read
// first here, so the first decision has them; a coordinator starts reading
// them at New and never waits for them.)
func TestCoordinatorRecordsResourceIdentities(t *testing.T) {
	for _, keeper := range []bool{false, true} {
		t.Run(fmt.Sprintf("keeper=%v", keeper), func(t *testing.T) {
			ctx := context.Background()
			b := newBank(t, 8)
			want := map[string]string{b.PG.Name(): identity(t, b.PG), b.My.Name(): identity(t, b.My)}
			log := decisionlog.NewMemLog(nil)
			var (
				mu sync.Mutex
				ps []decisionlog.Participant
			)
			c := newCoord(t, b, func(cfg *xa.Config) {
				cfg.Log, cfg.LogDir = log, ""
				if keeper {
					cfg.DecisionResource = b.PG.Name()
				}
				cfg.Hook = func(s xa.Step, info xa.StepInfo) {
					if s != xa.StepDecided {
						return
					}
					var d decisionlog.Decision
					if keeper {
						var found bool
						var err error
						if d, found, err = b.PG.LookupDecision(context.Background(), info.GTRID); err != nil || !found {
							t.Errorf("kept decision: %v, %v", found, err)
						}
					} else if e, ok := log.Lookup(info.GTRID); ok && e.Decision != nil {
						d = *e.Decision
					}
					mu.Lock()
					ps = d.Participants
					mu.Unlock()
				}
			})
			if _, err := b.Do(ctx, c, bank.Transfer{PGAccount: 1, MyAccount: 2, Amount: 1}); err != nil {
				t.Fatal(err)
			}
			mu.Lock()
			defer mu.Unlock()
			if len(ps) == 0 {
				t.Fatal("no participants recorded")
			}
			for _, p := range ps {
				if p.ID == "" || p.ID != want[p.Resource] {
					t.Errorf("participant %s recorded identity %q, want %q", p.Resource, p.ID, want[p.Resource])
				}
			}
		})
	}
}
