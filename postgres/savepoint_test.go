package postgres_test

import (
	"errors"
	"fmt"
	"strings"
	"testing"

	"github.com/xabridge/xabridge/drivers"
	"github.com/xabridge/xabridge/drivers/sqlguard"
	"github.com/xabridge/xabridge/postgres"
)

// Savepoints are the application's own business inside a branch: SAVEPOINT,
// ROLLBACK TO [SAVEPOINT] and RELEASE [SAVEPOINT] run like any statement,
// including a rollback to a savepoint after an error, and the branch still
// prepares and commits what is left. (Transaction control that ends the
// branch's transaction is still refused: TestHandleSealed.)
func TestSavepoints(t *testing.T) {
	e := newEnv(t)
	ctx := ctxT(t)
	tbl := e.table("xab_pg_sp", "id BIGINT PRIMARY KEY")
	ins := func(id int) string { return fmt.Sprintf("INSERT INTO %s VALUES (%d)", tbl, id) }

	for i, tc := range []struct {
		name  string
		stmts func(base int) []string
		fail  int   // index of a statement expected to fail (-1: none)
		want  []int // offsets from base committed in the end
	}{
		{"rollback to savepoint", func(n int) []string {
			return []string{ins(n), "SAVEPOINT a", ins(n + 1), "ROLLBACK TO SAVEPOINT a", ins(n + 2)}
		}, -1, []int{0, 2}},
		{"rollback to, short form, lower case", func(n int) []string {
			return []string{ins(n), "savepoint a", ins(n + 1), "rollback to a"}
		}, -1, []int{0}},
		{"rollback work to", func(n int) []string {
			return []string{ins(n), "SAVEPOINT \"Sp 1\"", ins(n + 1), "  ROLLBACK WORK TO SAVEPOINT \"Sp 1\" ;", ins(n + 3)}
		}, -1, []int{0, 3}},
		{"release", func(n int) []string {
			return []string{"SAVEPOINT a", ins(n), "RELEASE SAVEPOINT a", "SAVEPOINT b", ins(n + 1), "RELEASE b"}
		}, -1, []int{0, 1}},
		{"rollback to after an error", func(n int) []string {
			return []string{ins(n), "SAVEPOINT a", ins(n), "ROLLBACK TO SAVEPOINT a", ins(n + 1)}
		}, 2, []int{0, 1}},
		{"nested", func(n int) []string {
			return []string{"SAVEPOINT a", ins(n), "SAVEPOINT b", ins(n + 1), "ROLLBACK TO SAVEPOINT b", "RELEASE SAVEPOINT a", ins(n + 2)}
		}, -1, []int{0, 2}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			base := 100 * (i + 1)
			b, h := e.begin(ctx)
			for j, stmt := range tc.stmts(base) {
				_, err := h.Exec(ctx, stmt)
				if j == tc.fail {
					if err == nil {
						t.Fatalf("%s: no error", stmt)
					}
					continue
				}
				if err != nil {
					t.Fatalf("%s: %v", stmt, err)
				}
			}
			if _, err := b.Prepare(ctx); err != nil {
				t.Fatalf("Prepare: %v", err)
			}
			if err := b.Commit(ctx); err != nil {
				t.Fatalf("Commit: %v", err)
			}
			_ = b.Close()
			for _, off := range tc.want {
				if n := e.queryInt(fmt.Sprintf("SELECT COUNT(*) FROM %s WHERE id = %d", tbl, base+off)); n != 1 {
					t.Errorf("row %d: %d, want 1", base+off, n)
				}
			}
			if n := e.queryInt(fmt.Sprintf("SELECT COUNT(*) FROM %s WHERE id BETWEEN %d AND %d", tbl, base, base+99)); n != int64(len(tc.want)) {
				t.Errorf("%d rows committed, want %d", n, len(tc.want))
			}
			e.assertPoolClean()
		})
	}
}

// The statements that do end the branch's transaction stay refused, also
// when they look like a savepoint rollback at first sight: by the guard,
// before they are sent (the branch goes on and commits), and, should one
// get past it (the guard turned off), by the command-tag check after it
// ran, which ends the branch.
func TestSavepointGuardStillExact(t *testing.T) {
	e := newEnv(t)
	ctx := ctxT(t)
	tbl := e.table("xab_pg_spguard", "id BIGINT PRIMARY KEY")
	for i, stmt := range []string{
		"ROLLBACK",
		"ROLLBACK WORK",
		"ROLLBACK AND CHAIN",
		"ABORT",
		"SAVEPOINT a; ROLLBACK",
		"ROLLBACK TO SAVEPOINT a; ROLLBACK AND CHAIN",
		"ROLLBACK TO a; COMMIT AND CHAIN",
		"COMMIT",
		"END",
	} {
		for _, guarded := range []bool{true, false} {
			name := stmt + "/guard"
			if !guarded {
				name = stmt + "/past the guard"
			}
			t.Run(name, func(t *testing.T) {
				id := 2 * i
				if !guarded {
					id++
				}
				b, h := e.begin(ctx)
				if !guarded {
					postgres.SkipGuardForTest(h)
				}
				if _, err := h.Exec(ctx, fmt.Sprintf("INSERT INTO %s VALUES (%d)", tbl, id)); err != nil {
					t.Fatal(err)
				}
				if _, err := h.Exec(ctx, "SAVEPOINT a"); err != nil {
					t.Fatal(err)
				}
				_, err := h.Exec(ctx, stmt)
				wantClass(t, "Exec("+stmt+")", err, drivers.ErrFailed)
				if got := errors.Is(err, sqlguard.ErrTransactionControl); got != guarded {
					t.Errorf("Exec(%q) = %v: refused by the guard %v, want %v", stmt, err, got, guarded)
				}
				if guarded {
					// Nothing was sent: the savepoint and the row are there.
					if _, err := h.Exec(ctx, "ROLLBACK TO SAVEPOINT a"); err != nil {
						t.Fatalf("ROLLBACK TO SAVEPOINT after the refusal: %v", err)
					}
					if _, err := b.Prepare(ctx); err != nil {
						t.Fatalf("Prepare after the refused %q: %v", stmt, err)
					}
					if err := b.Commit(ctx); err != nil {
						t.Fatal(err)
					}
				} else {
					_, err = b.Prepare(ctx)
					wantClass(t, "Prepare after "+stmt, err, drivers.ErrFailed)
					_ = b.Rollback(ctx)
				}
				_ = b.Close()
				want := int64(0)
				if guarded {
					want = 1
				}
				if n := e.queryInt(fmt.Sprintf("SELECT COUNT(*) FROM %s WHERE id = %d", tbl, id)); n != want && (guarded || !strings.Contains(stmt, "COMMIT") && stmt != "END") {
					t.Errorf("row %d: %d, want %d", id, n, want)
				}
				e.assertPoolClean()
			})
		}
	}
}
