package mysql

import (
	"errors"
	"fmt"
	"strings"
	"testing"

	"github.com/xabridge/xabridge/drivers"
	"github.com/xabridge/xabridge/drivers/sqlguard"
)

// Statements that would end the branch, or commit it implicitly, are
// refused by the handle before they reach the server, through every method
// that takes SQL text, on an XA branch and on a decision keeper's local
// branch (where MariaDB would obey them all), with multiStatements on: the
// statements of a refused text never run, the branch goes on, and it
// commits (its decision row too).
func TestGuardKeepsBranchUsable(t *testing.T) {
	for _, kind := range []string{"XA", "keeper/CommitWithDecision", "keeper/CommitOnePhase"} {
		t.Run(kind, func(t *testing.T) {
			e, _ := keeperEnv(t, true, 2)
			tbl := e.table("guard")
			ctx := ctxT(t)
			var b *branch
			if kind == "XA" {
				b = e.begin(ctx)
			} else {
				b = e.beginKept(ctx)
			}
			h := b.user
			e.insert(ctx, b, tbl, 60)
			x := b.xid.MySQL()
			for _, stmt := range []string{
				"COMMIT",
				"ROLLBACK",
				"XA END " + x,
				"XA COMMIT " + x + " ONE PHASE",
				"XA END " + x + "; XA COMMIT " + x + " ONE PHASE",
				fmt.Sprintf("INSERT INTO %s VALUES (100, 0); COMMIT", tbl),
				"CREATE TABLE " + tbl + " (id INT)", // fails on the server, after its implicit commit
				fmt.Sprintf("ALTER TABLE %s ADD COLUMN w INT", tbl),
				"START TRANSACTION",
				"BEGIN",
				"SET autocommit = 1",
				"LOCK TABLES " + tbl + " WRITE",
				"/* a comment */ commit /* another */",
			} {
				refused := func(what string, err error) {
					t.Helper()
					wantKind(t, what+" "+stmt, err, drivers.ErrFailed)
					var ge *sqlguard.Error
					if !errors.Is(err, sqlguard.ErrTransactionControl) || !errors.As(err, &ge) || ge.Head == "" {
						t.Errorf("%s(%q) = %v, want a *sqlguard.Error naming the statement", what, stmt, err)
					}
				}
				_, err := h.ExecContext(ctx, stmt)
				refused("ExecContext", err)
				_, err = h.QueryContext(ctx, stmt)
				refused("QueryContext", err)
				refused("QueryRowContext", h.QueryRowContext(ctx, stmt).Scan(new(int)))
				_, err = h.PrepareContext(ctx, stmt)
				refused("PrepareContext", err)
				_, err = h.DB().ExecContext(ctx, stmt)
				refused("DB().ExecContext", err)
			}
			// With arguments too (go-sql-driver prepares or interpolates).
			_, err := h.ExecContext(ctx, fmt.Sprintf("INSERT INTO %s VALUES (?, 0); COMMIT", tbl), 101)
			wantKind(t, "ExecContext with an argument", err, drivers.ErrFailed)

			// Savepoints and ordinary statements still run.
			for _, stmt := range []string{
				"SAVEPOINT s",
				fmt.Sprintf("INSERT INTO %s VALUES (61, 0)", tbl),
				"ROLLBACK TO SAVEPOINT s",
				fmt.Sprintf("INSERT INTO %s VALUES (62, 0)", tbl),
				"RELEASE SAVEPOINT s",
				"SET @x = 1",
				"CREATE TEMPORARY TABLE xab_guard_tmp (id INT)",
				"DROP TEMPORARY TABLE xab_guard_tmp",
			} {
				if _, err := h.ExecContext(ctx, stmt); err != nil {
					t.Fatalf("%s after the refusals: %v", stmt, err)
				}
			}
			if n := e.queryInt("SELECT COUNT(*) FROM " + tbl + " WHERE id >= 60"); n != 0 {
				t.Fatalf("%d rows visible before the commit: something committed the branch", n)
			}
			switch kind {
			case "XA":
				if _, err := b.Prepare(ctx); err != nil {
					t.Fatalf("Prepare after the refusals: %v", err)
				}
				err = b.Commit(ctx)
			case "keeper/CommitWithDecision":
				err = e.r.CommitWithDecision(ctx, b, b.xid.Global, keptParts)
			default:
				err = b.CommitOnePhase(ctx)
			}
			if err != nil {
				t.Fatalf("commit after the refusals: %v", err)
			}
			for id, want := range map[int64]int64{60: 1, 61: 0, 62: 1, 100: 0, 101: 0} {
				if got := e.rows(tbl, id); got != want {
					t.Errorf("row %d: %d, want %d", id, got, want)
				}
			}
			if n := e.queryInt("SELECT COUNT(*) FROM information_schema.COLUMNS WHERE TABLE_NAME = '" + tbl + "' AND COLUMN_NAME = 'w'"); n != 0 {
				t.Error("the refused ALTER TABLE ran")
			}
			if kind == "keeper/CommitWithDecision" {
				if _, ok := e.row(b.xid.Global); !ok {
					t.Error("no decision row after the commit")
				}
			}
			wantCleanPool(t, e.db, 2)
		})
	}
}

// The guard on the handle's hot path allocates nothing for a statement it
// lets through, and a refusal names the statement.
func TestGuardHotPathAllocs(t *testing.T) {
	b := &branch{r: &Resource{name: "my"}}
	for _, nargs := range []int{0, 2} {
		n := testing.AllocsPerRun(100, func() {
			if err := b.check("exec", "UPDATE accounts SET balance = balance + ? WHERE id = ?", nargs); err != nil {
				t.Fatal(err)
			}
		})
		if n != 0 {
			t.Errorf("check with %d arguments: %v allocations, want 0", nargs, n)
		}
	}
	err := b.check("exec", "XA END 'g','b',1; XA COMMIT 'g','b',1 ONE PHASE", 0)
	if !errors.Is(err, sqlguard.ErrTransactionControl) || !errors.Is(err, drivers.ErrFailed) || !strings.Contains(err.Error(), "(XA END)") {
		t.Errorf("check(XA END …) = %v, want a refusal naming XA END", err)
	}
}
