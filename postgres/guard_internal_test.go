package postgres

import (
	"context"
	"errors"
	"strings"
	"testing"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/xabridge/xabridge/drivers"
	"github.com/xabridge/xabridge/drivers/sqlguard"
)

func TestEndsTransaction(t *testing.T) {
	for _, tc := range []struct {
		sql, tag string
		want     bool
	}{
		{"ROLLBACK TO SAVEPOINT a", "ROLLBACK", false},
		{"rollback to a", "ROLLBACK", false},
		{"ROLLBACK WORK TO SAVEPOINT a;", "ROLLBACK", false},
		{" ROLLBACK TRANSACTION TO xab_sp_12 ; ", "ROLLBACK", false},
		{"ROLLBACK TO SAVEPOINT \"My \"\"sp\"\"\"", "ROLLBACK", false},
		{"ROLLBACK TO SAVEPOINT", "ROLLBACK", false}, // a savepoint named savepoint
		{"ROLLBACK\n\tTO\n\tSAVEPOINT sp1", "ROLLBACK", false},
		{"SAVEPOINT a", "SAVEPOINT", false},
		{"RELEASE SAVEPOINT a", "RELEASE", false},
		{"RELEASE a", "RELEASE", false},
		{"UPDATE t SET v = 1", "UPDATE 1", false},
		{"ROLLBACK", "ROLLBACK", true},
		{"ROLLBACK;", "ROLLBACK", true},
		{"ROLLBACK WORK", "ROLLBACK", true},
		{"ROLLBACK AND CHAIN", "ROLLBACK", true},
		{"ROLLBACK AND NO CHAIN", "ROLLBACK", true},
		{"ABORT", "ROLLBACK", true},
		{"ROLLBACK TO a; ROLLBACK", "ROLLBACK", true},
		{"ROLLBACK TO a; ROLLBACK AND CHAIN", "ROLLBACK", true},
		{"SAVEPOINT a; ROLLBACK", "ROLLBACK", true},
		{"ROLLBACK TO a b", "ROLLBACK", true},
		{"ROLLBACK TO 1a", "ROLLBACK", true},
		{"ROLLBACK TO a -- comment", "ROLLBACK", true},
		{"ROLLBACK TO /* c */ a", "ROLLBACK", true},
		{"ROLLBACK TO \"a", "ROLLBACK", true},
		{"ROLLBACK TO \"a\"x", "ROLLBACK", true},
		{"ROLLBACK TO", "ROLLBACK", true},
		{"ROLLBACK TO SAVEPOINT a;;", "ROLLBACK", true},
		{"ROLLBACK PREPARED 'x'", "ROLLBACK PREPARED", false},
		{"COMMIT", "COMMIT", true},
		{"COMMIT AND CHAIN", "COMMIT", true},
		{"END", "COMMIT", true},
		{"BEGIN", "BEGIN", true},
		{"START TRANSACTION", "START TRANSACTION", true},
		{"PREPARE TRANSACTION 'x'", "PREPARE TRANSACTION", true},
	} {
		if got := endsTransaction(tc.sql, pgconn.NewCommandTag(tc.tag)); got != tc.want {
			t.Errorf("endsTransaction(%q, %q) = %v, want %v", tc.sql, tc.tag, got, tc.want)
		}
	}
}

func FuzzIsSavepointRollback(f *testing.F) {
	for _, s := range []string{"ROLLBACK TO a", "ROLLBACK TO \"x\"\"y\"", "ROLLBACK WORK TO SAVEPOINT b;"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		if isSavepointRollback(s) {
			// Nothing that could end the statement early may be in it
			// outside a quoted name.
			words, ok := splitWords(s)
			if !ok || len(words) < 3 {
				t.Fatalf("%q accepted with words %q", s, words)
			}
		}
	})
}

// The guard on the handle's hot path allocates nothing for a statement it
// lets through (pgx options and all), and a refusal names the statement.
func TestGuardHotPathAllocs(t *testing.T) {
	b := &branch{r: &Resource{name: "pg"}}
	ctx := context.Background()
	for _, args := range [][]any{nil, {1, 2}, {pgx.QueryExecModeSimpleProtocol, 1, 2}} {
		n := testing.AllocsPerRun(100, func() {
			if _, _, err := b.guard(ctx, "exec", "UPDATE accounts SET balance = balance + $1 WHERE id = $2", args, false); err != nil {
				t.Fatal(err)
			}
		})
		if n != 0 {
			t.Errorf("guard with %d arguments: %v allocations, want 0", len(args), n)
		}
	}
	_, _, err := b.guard(ctx, "exec", "SELECT 1; COMMIT", nil, false)
	if !errors.Is(err, sqlguard.ErrTransactionControl) || !errors.Is(err, drivers.ErrFailed) || !strings.Contains(err.Error(), "(COMMIT)") {
		t.Errorf("guard(SELECT 1; COMMIT) = %v, want a refusal naming COMMIT", err)
	}
}
