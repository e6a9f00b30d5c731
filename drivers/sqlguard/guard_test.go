package sqlguard

import (
	"errors"
	"strings"
	"testing"

	"github.com/xabridge/xabridge/drivers"
)

// verdicts for the tables.
const (
	ok  = "ok"  // allowed
	tc  = "tc"  // ErrTransactionControl
	unr = "unr" // ErrUnreadable
)

type row struct {
	sql  string
	want string
	why  string
}

func verdict(err error) string {
	switch {
	case err == nil:
		return ok
	case errors.Is(err, ErrTransactionControl):
		return tc
	case errors.Is(err, ErrUnreadable):
		return unr
	}
	return "other: " + err.Error()
}

func runTable(t *testing.T, d Dialect, rows []row) {
	t.Helper()
	for _, r := range rows {
		err := Check(d, r.sql)
		if got := verdict(err); got != r.want {
			t.Errorf("%v: Check(%q) = %s (%v), want %s: %s", d, r.sql, got, err, r.want, r.why)
		}
		if err != nil && !errors.Is(err, drivers.ErrFailed) {
			t.Errorf("%v: Check(%q) = %v: not drivers.ErrFailed", d, r.sql, err)
		}
	}
}

// Rows both dialects read the same way.
var commonRows = []row{
	{"", ok, "empty text"},
	{";;", ok, "empty statements"},
	{"  ;\n; -- nothing\n", ok, "only separators and a comment"},
	{"SELECT 1", ok, "a query"},
	{"select * from t where id = 1 for update", ok, "a locking read"},
	{"INSERT INTO t VALUES (1, 'x')", ok, "DML"},
	{"UPDATE t SET v = v + 1 WHERE id = 2", ok, "DML"},
	{"DELETE FROM t WHERE id = 3", ok, "DML"},
	{"WITH x AS (SELECT 1) SELECT * FROM x", ok, "a CTE"},
	{"SAVEPOINT s1", ok, "savepoints stay inside the transaction"},
	{"RELEASE SAVEPOINT s1", ok, "savepoints stay inside the transaction"},
	{"RELEASE s1", ok, "RELEASE without SAVEPOINT"},
	{"ROLLBACK TO SAVEPOINT s1", ok, "rollback to a savepoint keeps the transaction"},
	{"rollback to s1", ok, "ROLLBACK TO without SAVEPOINT"},
	{"ROLLBACK WORK TO SAVEPOINT s1", ok, "ROLLBACK WORK TO"},
	{"SELECT 'COMMIT'", ok, "a keyword in a string"},
	{"SELECT 1 -- COMMIT", ok, "a keyword in a line comment"},
	{"SELECT 1 /* ; COMMIT; */", ok, "a keyword and separator in a block comment"},
	{"/* COMMIT */ SELECT 1", ok, "a leading comment"},
	{"SELECT commit_ts FROM t", ok, "a keyword prefix of an identifier"},
	{"SELECT 1 AS commit", ok, "a keyword as an alias"},
	{"SELECT 'a;b'; SELECT 2", ok, "a separator in a string"},
	{"SELECT 'it''s; COMMIT'", ok, "a doubled quote keeps the string open"},
	{"SELECT 'héllo wörld ✓'; SELECT '日本'", ok, "Unicode"},
	{"SET TRANSACTION ISOLATION LEVEL SERIALIZABLE", ok, "inside a started transaction PostgreSQL applies it, MySQL applies it to the next (or refuses)"},

	{"COMMIT", tc, "commits the branch"},
	{"commit", tc, "case does not matter"},
	{"CoMmIt WORK", tc, "mixed case, COMMIT WORK"},
	{"COMMIT AND CHAIN", tc, "commits, then starts another transaction"},
	{"SELECT 1; COMMIT", tc, "a commit in a multi-statement text"},
	{"SELECT 1;COMMIT;SELECT 2", tc, "no spaces"},
	{"SELECT 1; COMMIT;", tc, "a trailing separator"},
	{"SELECT 1;;COMMIT", tc, "after an empty statement"},
	{"  \n\t COMMIT", tc, "leading whitespace"},
	{"/* hello */ COMMIT", tc, "a leading block comment"},
	{"-- hello\nCOMMIT", tc, "a leading line comment"},
	{"(COMMIT)", tc, "leading parentheses"},
	{"ROLLBACK", tc, "rolls the branch back outside the coordinator"},
	{"ROLLBACK WORK", tc, "ROLLBACK WORK"},
	{"ROLLBACK AND CHAIN", tc, "ROLLBACK AND CHAIN"},
	{"ROLLBACK; SAVEPOINT x", tc, "ROLLBACK before a savepoint"},
	{"BEGIN", tc, "starts a transaction"},
	{"begin work", tc, "BEGIN WORK"},
	{"START TRANSACTION", tc, "starts a transaction"},
	{"START TRANSACTION READ ONLY", tc, "starts a transaction"},
	{"SELECT 'unterminated", unr, "an unterminated string: the server fails it, the guard cannot know how it reads"},
	{"SELECT 1 /* unterminated", unr, "an unterminated comment"},
	{"SELECT 1\x00; COMMIT", unr, "a NUL byte"},
}

func TestCheckCommon(t *testing.T) {
	runTable(t, Postgres, commonRows)
	runTable(t, MySQL, commonRows)
}

func TestCheckPostgres(t *testing.T) {
	runTable(t, Postgres, []row{
		{"SELECT \"commit\" FROM t", ok, "a keyword as a quoted identifier"},
		{"SELECT \"a\"\"; COMMIT\" FROM t", ok, "a doubled quote in an identifier"},
		{"SELECT $$; COMMIT; $$", ok, "a dollar-quoted string"},
		{"SELECT $tag$ $$; COMMIT; $$ $tag$", ok, "a tagged dollar quote holding another delimiter"},
		{"DO $$ BEGIN COMMIT; END $$", ok, "DO: PostgreSQL refuses COMMIT in a DO block inside a transaction block (2D000)"},
		{"CALL p()", ok, "CALL: a procedure's COMMIT fails inside a transaction block (2D000)"},
		{"CREATE FUNCTION f() RETURNS int LANGUAGE plpgsql AS $f$ BEGIN COMMIT; RETURN 1; END $f$", ok, "a function body is a string"},
		{"SELECT E'\\'; COMMIT; --'", ok, "E'…': \\' escapes the quote"},
		{"SELECT e'a\\\\'; SELECT 1", ok, "E'…': \\\\ is a backslash"},
		{"SELECT 1 /* outer /* inner */ ; COMMIT; */", ok, "block comments nest"},
		{"SELECT $1, $2", ok, "positional parameters"},
		{"PREPARE p AS SELECT 1", ok, "a prepared statement"},
		{"PREPARE p(int) AS SELECT $1", ok, "a prepared statement with types"},
		{"PREPARE transaction AS SELECT 1", ok, "a prepared statement named transaction"},
		{"EXECUTE p", ok, "a prepared statement (only SELECT/INSERT/UPDATE/DELETE/MERGE/VALUES can be prepared)"},
		{"ROLLBACK TRANSACTION TO SAVEPOINT s", ok, "ROLLBACK TRANSACTION TO"},
		{"SET SESSION CHARACTERISTICS AS TRANSACTION ISOLATION LEVEL SERIALIZABLE", ok, "characteristics of later transactions"},
		{"SET LOCAL lock_timeout = '1s'", ok, "a setting"},
		{"SET standard_conforming_strings = off", ok, "the guard reads both ways"},
		{"SELECT x$a$; SELECT 1", ok, "'$' inside an identifier opens no dollar quote"},
		{"LOCK TABLE t IN SHARE MODE", ok, "PostgreSQL locks last to the end of the transaction"},
		{"VACUUM t", ok, "PostgreSQL refuses it in a transaction block (25001)"},
		{"SELECT 'a\\'", ok, "a backslash in a standard string is a character (scs on) and the off reading is unterminated: the server would fail it"},
		{"select 1 as \"END\"; select 2", ok, "END quoted"},
		{"COPY t FROM STDIN", ok, "COPY"},
		{"MERGE INTO t USING s ON t.id = s.id WHEN MATCHED THEN DO NOTHING", ok, "MERGE"},
		{"SELECT 1 --\r; COMMIT", tc, "a line comment ends at a carriage return"},
		{"CREATE FUNCTION f() RETURNS int LANGUAGE sql BEGIN ATOMIC SELECT 1; END", tc, "a conservative refusal: the guard splits a BEGIN ATOMIC body at its ';' and meets END (use AS $$ … $$)"},
		{"SELECT 1 --\rCOMMIT", ok, "COMMIT after the comment is an alias"},

		{"END", tc, "END commits"},
		{"end transaction", tc, "END TRANSACTION"},
		{"ABORT", tc, "ABORT rolls back"},
		{"COMMIT PREPARED 'g1'", tc, "finishes a prepared transaction"},
		{"ROLLBACK PREPARED 'g1'", tc, "finishes a prepared transaction"},
		{"PREPARE TRANSACTION 'g1'", tc, "prepares the branch's transaction outside the coordinator"},
		{"prepare transaction $$g1$$", tc, "with a dollar-quoted gid"},
		{"BEGIN ISOLATION LEVEL SERIALIZABLE", tc, "BEGIN with options"},
		{"SELECT 1; END", tc, "END after a statement"},
		{"SELECT $$ a $$; COMMIT", tc, "after a dollar quote"},
		{"SELECT E'\\''; COMMIT", tc, "after an E-string with an escaped quote"},
		{"SELECT 1 /* a /* b */ c */ COMMIT", ok, "COMMIT after a nested comment is an alias, not a statement"},
		{"SELECT 'a\\''; COMMIT; --'", tc, "with standard_conforming_strings off the string ends at \\' and COMMIT runs"},
		{"SELECT \"x\"; COMMIT", tc, "after a quoted identifier"},
		{"SELECT 1 /* a /* b */ c */; COMMIT", tc, "after a nested comment"},
		{"SET NAMES 'SJIS'", unr, "changes the client encoding: a backslash may become part of a character"},
		{"SET client_encoding TO 'GBK'", unr, "changes the client encoding"},
		{"SELECT $tag$ unterminated", unr, "an unterminated dollar quote"},
		{"SELECT \"unterminated", unr, "an unterminated quoted identifier"},
		{"SELECT 1 /* /* */", unr, "a nested comment not closed"},
	})
}

func TestCheckMySQL(t *testing.T) {
	runTable(t, MySQL, []row{
		{"SELECT `commit` FROM t", ok, "a keyword as a backtick identifier"},
		{"SELECT `a``; COMMIT` FROM t", ok, "a doubled backtick"},
		{"SELECT \"COMMIT\"", ok, "a double-quoted string (or identifier under ANSI_QUOTES)"},
		{"SELECT 'a\\'; COMMIT; -- '", tc, "\\' escapes the quote, but under NO_BACKSLASH_ESCAPES the string ends there and COMMIT runs"},
		{"SELECT 'a\\\\', 1", ok, "an escaped backslash, and a backslash followed by a quote under NO_BACKSLASH_ESCAPES: both readings are clean"},
		{"SELECT 1 # COMMIT", ok, "a hash comment"},
		{"SELECT 1 -- COMMIT", ok, "a dash-dash-space comment"},
		{"SELECT 1 --\tCOMMIT", ok, "dash-dash-tab is a comment"},
		{"SELECT ?, ?", ok, "placeholders"},
		{"ROLLBACK WORK TO s", ok, "ROLLBACK WORK TO"},
		{"CREATE TEMPORARY TABLE tt (a int)", ok, "CREATE TEMPORARY TABLE does not commit"},
		{"CREATE OR REPLACE TEMPORARY TABLE tt (a int)", ok, "MariaDB's CREATE OR REPLACE TEMPORARY TABLE"},
		{"DROP TEMPORARY TABLE IF EXISTS tt", ok, "DROP TEMPORARY TABLE does not commit"},
		{"LOAD DATA LOCAL INFILE 'f' INTO TABLE t", ok, "LOAD DATA does not commit"},
		{"ANALYZE SELECT * FROM t", ok, "MariaDB's ANALYZE of a statement"},
		{"SET @x = 1", ok, "a user variable"},
		{"SET @autocommit = 0", ok, "a user variable named like the setting"},
		{"SET SESSION TRANSACTION ISOLATION LEVEL READ COMMITTED", ok, "characteristics of the next transactions"},
		{"SET STATEMENT max_statement_time = 5 FOR SELECT 1", ok, "MariaDB SET STATEMENT … FOR a query"},
		{"SET sql_mode = 'NO_BACKSLASH_ESCAPES'", ok, "the guard reads every sql_mode"},
		{"DO SLEEP(0)", ok, "DO evaluates expressions"},
		{"/*! SELECT 1 */", ok, "an executable comment with a query"},
		{"SELECT 1 /*+ MAX_EXECUTION_TIME(1000) */", ok, "an optimizer hint without quotes"},
		{"SELECT 1 --x; SELECT 2", ok, "--x is not a comment: minus minus x"},
		{"SELECT 1 ---1", ok, "a double negation"},
		{"HANDLER t OPEN", ok, "HANDLER"},
		{"SHOW ENGINE INNODB STATUS", ok, "SHOW"},
		{"SELECT 1 -- ; COMMIT", ok, "the comment hides the rest of the line"},
		{"SELECT 'a', \"b\", `c`; SELECT 'x'", ok, "three kinds of quotes"},

		{"/*!COMMIT*/", tc, "the content of an executable comment runs"},
		{"SELECT 1; /*! COMMIT */", tc, "an executable comment after a statement"},
		{"SELECT 1 /*!; COMMIT */", unr, "a separator inside an executable comment"},
		{"/*M! COMMIT */", unr, "MariaDB-only executable comment: runs on MariaDB only"},
		{"/*!50700 SELECT 1 */", unr, "a version-conditional comment"},
		{"/*M!100500 SELECT 1 */", unr, "a MariaDB version-conditional comment"},
		{"SELECT /*+ QB_NAME(`a*/`) */ 1", unr, "an optimizer hint holding a quote"},
		{"XA END 'g','b'", tc, "ends the XA branch"},
		{"XA END X'01',X'02',7; XA COMMIT X'01',X'02',7 ONE PHASE", tc, "the reproduced attack of issue 14"},
		{"xa commit 'g' one phase", tc, "lower case"},
		{"XA RECOVER", tc, "XA of any kind"},
		{"SELECT 1 --\n;COMMIT", tc, "dash-dash-newline comment ends at the newline"},
		{"SELECT 1 #x\n;COMMIT", tc, "hash comment ends at the newline"},
		{"SELECT 1 # x\r; COMMIT", ok, "a carriage return does not end a MySQL comment"},
		{"SET autocommit = 1", tc, "commits"},
		{"SET autocommit=0", tc, "leaves the transaction's rules"},
		{"SET @@autocommit := 1", tc, "@@autocommit"},
		{"SET @@session.autocommit = 1", tc, "@@session.autocommit"},
		{"SET SESSION autocommit = 1", tc, "SESSION autocommit"},
		{"set local AUTOCOMMIT = 1", tc, "LOCAL autocommit"},
		{"SET @a = 1, autocommit = 1", tc, "autocommit later in the list"},
		{"SET `autocommit` = 1", tc, "a quoted setting name"},
		{"SET \"autocommit\" = 1", tc, "a setting name under ANSI_QUOTES"},
		{"SET @a = 1, \"autocommit\" = 1", tc, "a setting name under ANSI_QUOTES, later in the list"},
		{"SELECT '\\'; SET \"autocommit\" = 1; -- '", tc, "under NO_BACKSLASH_ESCAPES and ANSI_QUOTES the SET runs"},
		{"SET @note = \"names\"", ok, "a string value, not a name"},
		{"SELECT 1 AS [a']; COMMIT; -- '", tc, "under MariaDB's sql_mode MSSQL [a'] is an identifier and COMMIT runs"},
		{"SELECT 1 AS [a]]'; COMMIT; -- ']", ok, "under MSSQL ]] escapes ]: one identifier; else a string"},
		{"SELECT 1 AS [a]; COMMIT", tc, "brackets"},
		{"SELECT j->'$[0]' FROM t", ok, "a bracket inside a string"},
		{"SELECT 1 AS [unterminated", ok, "only MSSQL reads an identifier, which is then unterminated: the server fails it"},
		{"SET STATEMENT max_statement_time = 5 FOR COMMIT", tc, "COMMIT after SET STATEMENT … FOR"},
		{"SET PASSWORD = PASSWORD('x')", tc, "SET PASSWORD commits implicitly"},
		{"SET NAMES gbk", unr, "a character set where a backslash can end a character"},
		{"SET CHARACTER SET big5", unr, "a character set change"},
		{"SET character_set_client = sjis", unr, "a character set change"},
		{"BEGIN NOT ATOMIC COMMIT; END", tc, "an anonymous block"},
		{"IF 1 THEN COMMIT; END IF", tc, "a compound statement outside a program (MariaDB)"},
		{"lbl: LOOP COMMIT; END LOOP lbl", tc, "a labelled compound statement"},
		{"WHILE 1 DO SELECT 1; END WHILE", tc, "a compound statement"},
		{"CALL p()", tc, "a procedure may commit"},
		{"PREPARE s FROM 'COMMIT'", tc, "dynamic SQL"},
		{"EXECUTE s", tc, "dynamic SQL"},
		{"EXECUTE IMMEDIATE 'COMMIT'", tc, "MariaDB dynamic SQL"},
		{"CREATE TABLE t2 (a int)", tc, "DDL commits implicitly"},
		{"CREATE TEMPORARY SEQUENCE s", tc, "only TEMPORARY TABLE is exempt"},
		{"create index i on t (a)", tc, "CREATE INDEX"},
		{"CREATE USER u", tc, "CREATE USER"},
		{"CREATE PROCEDURE p() BEGIN COMMIT; END", tc, "CREATE PROCEDURE"},
		{"ALTER TABLE t ADD COLUMN b int", tc, "ALTER TABLE"},
		{"DROP TABLE t", tc, "DROP TABLE"},
		{"DROP TABLE IF EXISTS temporary", tc, "a table named temporary"},
		{"RENAME TABLE a TO b", tc, "RENAME TABLE"},
		{"TRUNCATE TABLE t", tc, "TRUNCATE"},
		{"TRUNCATE t", tc, "TRUNCATE without TABLE"},
		{"LOCK TABLES t WRITE", tc, "LOCK TABLES"},
		{"UNLOCK TABLES", tc, "UNLOCK TABLES"},
		{"ANALYZE TABLE t", tc, "ANALYZE TABLE"},
		{"ANALYZE NO_WRITE_TO_BINLOG TABLE t", tc, "ANALYZE … TABLE"},
		{"OPTIMIZE TABLE t", tc, "OPTIMIZE TABLE"},
		{"REPAIR TABLE t", tc, "REPAIR TABLE"},
		{"CHECK TABLE t", tc, "CHECK TABLE"},
		{"CACHE INDEX t IN c", tc, "CACHE INDEX"},
		{"LOAD INDEX INTO CACHE t", tc, "LOAD INDEX INTO CACHE"},
		{"FLUSH TABLES", tc, "FLUSH"},
		{"RESET QUERY CACHE", tc, "RESET"},
		{"GRANT SELECT ON t TO u", tc, "GRANT"},
		{"REVOKE SELECT ON t FROM u", tc, "REVOKE"},
		{"INSTALL PLUGIN p SONAME 'p.so'", tc, "INSTALL PLUGIN"},
		{"CHANGE MASTER TO MASTER_HOST = 'h'", tc, "CHANGE MASTER"},
		{"START SLAVE", tc, "START SLAVE"},
		{"STOP SLAVE", tc, "STOP SLAVE"},
		{"SHUTDOWN", tc, "SHUTDOWN"},
		{"SELECT \"a\\\"; COMMIT; -- \"", tc, "under ANSI_QUOTES or NO_BACKSLASH_ESCAPES the quote ends at \\\" and COMMIT runs"},
		{"SELECT 'a\\''; COMMIT; -- '", tc, "the default reading ends the string after \\''; COMMIT runs"},
		{"SELECT `x`; COMMIT", tc, "after a backtick identifier"},
		{"`l`: REPEAT COMMIT; UNTIL 1 END REPEAT", tc, "a compound statement with a quoted label: its tail starts with UNTIL"},
		{"<<l>> LOOP COMMIT; END LOOP", tc, "sql_mode=ORACLE label: the tail starts with END"},
		{"DECLARE x int; BEGIN COMMIT; END", tc, "sql_mode=ORACLE anonymous block"},
		{"SET STATEMENT autocommit = 0 FOR SELECT 1", tc, "autocommit under SET STATEMENT"},
		{"SET STATEMENT max_statement_time = 1 FOR FLUSH TABLES t FOR EXPORT", tc, "the statement after FOR holds a FOR"},
		{"SET STATEMENT a = (SELECT 1 FOR UPDATE) FOR COMMIT", tc, "the value holds a FOR"},
		{"SET STATEMENT a = 1 FOR SET STATEMENT b = 2 FOR COMMIT", tc, "nested SET STATEMENT"},
		{"SET STATEMENT a = 1 FOR SELECT * FROM t FOR UPDATE", ok, "a locking read under SET STATEMENT"},
		{"SELECT 1 --\x01; COMMIT", ok, "a control character after -- makes a comment"},
		{"SELECT 1 --\u00a0x\n; COMMIT", unr, "a non-ASCII byte after --"},
		{"SELECT `unterminated", unr, "an unterminated backtick"},
		{"/*! SELECT 1", unr, "an unterminated executable comment"},
		{"/*! SELECT 1 /*! SELECT 2 */ */", unr, "nested executable comments"},
	})
}

// TestCheckArgs: with arguments, a placeholder-like sequence outside a
// placeholder is refused, since a client-side interpolation might splice
// an argument there.
func TestCheckArgs(t *testing.T) {
	for _, c := range []struct {
		d     Dialect
		sql   string
		nargs int
		want  string
	}{
		{MySQL, "SELECT ?", 1, ok},
		{MySQL, "SELECT '?'", 0, ok},
		{MySQL, "SELECT '?', ?", 1, unr},
		{MySQL, "SELECT `?` FROM t WHERE a = ?", 1, unr},
		{MySQL, "SELECT 1 -- ?\n, ?", 1, unr},
		{Postgres, "SELECT $1", 1, ok},
		{Postgres, "SELECT '$1'", 0, ok},
		{Postgres, "SELECT $a$ $1 $a$, $1", 1, unr},
		{Postgres, "SELECT a$1 FROM t WHERE b = $1", 1, unr},
		{Postgres, "SELECT '$ 5', $1", 1, ok},
		{Postgres, "SELECT $1; COMMIT", 1, tc},
	} {
		err := CheckArgs(c.d, c.sql, c.nargs)
		if got := verdict(err); got != c.want {
			t.Errorf("%v: CheckArgs(%q, %d) = %s (%v), want %s", c.d, c.sql, c.nargs, got, err, c.want)
		}
	}
}

func TestStatements(t *testing.T) {
	st, err := Statements(Postgres, "/* c */ SELECT 1; ;  rollback to savepoint a ;COMMIT")
	want := []Statement{{8, 16, "SELECT 1"}, {21, 45, "ROLLBACK TO SAVEPOINT A"}, {46, 52, "COMMIT"}}
	if len(st) != len(want) {
		t.Fatalf("Statements = %+v, want %+v", st, want)
	}
	for i := range st {
		if st[i] != want[i] {
			t.Errorf("statement %d = %+v, want %+v", i, st[i], want[i])
		}
	}
	var e *Error
	if !errors.As(err, &e) || e.Statement != 2 || e.Offset != 46 || e.Head != "COMMIT" || e.Kind != ErrTransactionControl {
		t.Fatalf("err = %#v", err)
	}
	if msg := err.Error(); !strings.Contains(msg, "statement 3 at byte 46 (COMMIT)") {
		t.Errorf("message %q", msg)
	}
	if got := drivers.Classify(err); got != drivers.ErrFailed {
		t.Errorf("Classify = %v, want ErrFailed", got)
	}
}

func TestErrorReading(t *testing.T) {
	err := Check(MySQL, "SELECT \"a\\\"; COMMIT; -- \"")
	var e *Error
	if !errors.As(err, &e) || e.Reading == "" || !strings.Contains(err.Error(), "sql_mode") {
		t.Fatalf("err = %v: want the reading named", err)
	}
	if err := Check(Dialect(9), "SELECT 1"); verdict(err) != unr {
		t.Fatalf("unknown dialect: %v", err)
	}
}
