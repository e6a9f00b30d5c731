package sqlguard

import (
	"strings"
	"testing"
)

// The cost per statement on the hot path: run with
// go test -run '^$' -bench . -benchmem ./drivers/sqlguard
var benchTexts = []struct {
	name string
	d    Dialect
	sql  string
}{
	{"pg/update", Postgres, "UPDATE accounts SET balance = balance + $1 WHERE id = $2"},
	{"pg/select", Postgres, "SELECT balance FROM accounts WHERE id = $1 FOR UPDATE"},
	{"pg/insert-strings", Postgres, "INSERT INTO transfers (id, note, at) VALUES ($1, 'transfer: rent, March', now())"},
	{"my/update", MySQL, "UPDATE accounts SET balance = balance + ? WHERE id = ?"},
	{"my/select", MySQL, "SELECT balance FROM accounts WHERE id = ? FOR UPDATE"},
	{"my/insert-strings", MySQL, "INSERT INTO transfers (id, note, at) VALUES (?, 'transfer: rent, March', NOW())"},
	{"pg/batch-10KB", Postgres, batch10K(Postgres)},
	{"my/batch-10KB", MySQL, batch10K(MySQL)},
	{"my/batch-10KB-backslashes", MySQL, strings.ReplaceAll(batch10K(MySQL), "rent", `rent\'s`)},
}

// batch10K builds a multi-statement text of about 10 KB: DML with string
// literals, comments and a savepoint.
func batch10K(d Dialect) string {
	p := "?"
	if d == Postgres {
		p = "$1"
	}
	var b strings.Builder
	for i := 0; b.Len() < 10*1024; i++ {
		b.WriteString("/* step */ UPDATE accounts SET balance = balance - 10, note = 'rent; march' WHERE id = " + p + ";\n")
		b.WriteString("-- the credit side\nINSERT INTO ledger (account, amount, memo) VALUES (" + p + ", 10, 'it''s paid');\n")
		if i%10 == 0 {
			b.WriteString("SAVEPOINT s; RELEASE SAVEPOINT s;\n")
		}
	}
	return b.String()
}

func BenchmarkCheck(b *testing.B) {
	for _, c := range benchTexts {
		if err := Check(c.d, c.sql); err != nil {
			b.Fatalf("%s: %v", c.name, err)
		}
		b.Run(c.name, func(b *testing.B) {
			b.ReportAllocs()
			b.SetBytes(int64(len(c.sql)))
			for b.Loop() {
				if Check(c.d, c.sql) != nil {
					b.Fatal("refused")
				}
			}
		})
	}
}

func TestCheckAllocs(t *testing.T) {
	for _, c := range benchTexts {
		if n := testing.AllocsPerRun(100, func() { _ = Check(c.d, c.sql) }); n != 0 {
			t.Errorf("%s: %v allocations per Check, want 0", c.name, n)
		}
		if strings.Contains(c.sql, `\`) {
			// Refused with arguments: under NO_BACKSLASH_ESCAPES a '?'
			// falls inside a string.
			continue
		}
		if n := testing.AllocsPerRun(100, func() { _ = CheckArgs(c.d, c.sql, 2) }); n != 0 {
			t.Errorf("%s: %v allocations per CheckArgs, want 0", c.name, n)
		}
	}
}
