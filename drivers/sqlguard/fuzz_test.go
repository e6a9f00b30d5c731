package sqlguard

import (
	"errors"
	"strings"
	"testing"
)

// FuzzCheck: the guard never panics, every refusal is a well-formed *Error,
// and three properties hold for every text s (no NUL):
//
//  1. if s is allowed, s followed by "\n;COMMIT" is refused as transaction
//     control (a newline ends any line comment s ends in);
//  2. s inside a string literal, whatever it holds, is allowed;
//  3. s inside a comment (when it cannot close the comment) is allowed, and
//     inside a quoted identifier too.
func FuzzCheck(f *testing.F) {
	for _, rows := range [][]row{commonRows} {
		for _, r := range rows {
			f.Add(uint8(0), r.sql)
			f.Add(uint8(1), r.sql)
		}
	}
	for _, s := range []string{
		"SELECT $a$ $$ $a$; COMMIT", "DO $$ BEGIN COMMIT; END $$", "SELECT E'\\''; END",
		"PREPARE TRANSACTION 'x'", "PREPARE transaction AS SELECT 1", "ABORT",
		"/*!COMMIT*/", "XA END 'a'; XA COMMIT 'a' ONE PHASE", "SET @@autocommit=1",
		"SET STATEMENT a=1 FOR COMMIT", "CREATE TEMPORARY TABLE t(a int)", "lbl: BEGIN END",
		"SELECT \"a\\\"; COMMIT; -- \"", "SELECT 'a\\''; COMMIT; --'", "SELECT 1 /* a /* b */ c */; END",
		"SELECT `a``b`; ROLLBACK TO x", "SELECT 1 --\x01; COMMIT", "/*+ x */ SELECT 1",
	} {
		f.Add(uint8(0), s)
		f.Add(uint8(1), s)
	}
	f.Fuzz(func(t *testing.T, db uint8, s string) {
		d := Postgres
		if db&1 == 1 {
			d = MySQL
		}
		err := Check(d, s)
		wellFormed(t, d, s, err)
		for _, n := range []int{1, 3} {
			wellFormed(t, d, s, CheckArgs(d, s, n))
		}
		if strings.IndexByte(s, 0) >= 0 {
			if verdict(err) != unr {
				t.Fatalf("%v %q: a NUL byte must be refused: %v", d, s, err)
			}
			return
		}

		if err == nil {
			if e := Check(d, s+"\n;COMMIT"); !errors.Is(e, ErrTransactionControl) {
				t.Fatalf("%v %q is allowed, but with a COMMIT after it: %v", d, s, e)
			}
		}

		for _, w := range wrapped(d, s) {
			if e := Check(d, w); e != nil {
				t.Fatalf("%v: %q wraps its content, yet: %v", d, w, e)
			}
		}
	})
}

// wrapped returns texts that hold s where nothing of it can run.
func wrapped(d Dialect, s string) []string {
	var out []string
	if d == Postgres {
		if !strings.Contains(s, "$zq$") && !strings.HasSuffix(s, "$zq") {
			out = append(out, "SELECT $zq$"+s+"$zq$")
		}
		out = append(out,
			"SELECT E'"+strings.NewReplacer(`\`, `\\`, `'`, `\'`).Replace(s)+"'",
			`SELECT 1 AS "`+strings.ReplaceAll(s, `"`, `""`)+`"`)
		if !strings.Contains(s, "/*") && !strings.Contains(s, "*/") && !strings.HasSuffix(s, "*") && !strings.HasSuffix(s, "/") {
			out = append(out, "SELECT 1 /* "+s+" */")
		}
		if !strings.ContainsAny(s, "\n\r") {
			out = append(out, "SELECT 1 -- "+s)
		}
		return out
	}
	out = append(out,
		"SELECT '"+strings.NewReplacer(`\`, `\\`, `'`, `''`).Replace(s)+"'",
		"SELECT 1 AS `"+strings.ReplaceAll(s, "`", "``")+"`")
	if !strings.Contains(s, "*/") && !strings.HasSuffix(s, "*") {
		out = append(out, "SELECT 1 /* "+s+" */")
	}
	if !strings.Contains(s, "\n") {
		out = append(out, "SELECT 1 # "+s, "SELECT 1 -- "+s)
	}
	return out
}

func wellFormed(t *testing.T, d Dialect, s string, err error) {
	t.Helper()
	if err == nil {
		return
	}
	var e *Error
	if !errors.As(err, &e) {
		t.Fatalf("%v %q: %T %v is not an *Error", d, s, err, err)
	}
	if e.Kind != ErrTransactionControl && e.Kind != ErrUnreadable {
		t.Fatalf("%v %q: kind %v", d, s, e.Kind)
	}
	if e.Statement >= 0 && (e.Offset < 0 || e.Offset > len(s)) {
		t.Fatalf("%v %q: offset %d out of the text", d, s, e.Offset)
	}
	if e.Error() == "" {
		t.Fatalf("empty message")
	}
}
