package sqlguard_test

import (
	"context"
	"database/sql"
	"fmt"
	"math/rand/v2"
	"net/url"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"

	mysqldriver "github.com/go-sql-driver/mysql"
	"github.com/jackc/pgx/v5"

	"github.com/xabridge/xabridge/drivers/sqlguard"
	"github.com/xabridge/xabridge/internal/dbtest"
)

// What the server did with a statement sent inside a transaction that had
// written a row.
const (
	stays = "stays" // the transaction is still open, its row uncommitted (or the block aborted: the coordinator rolls it back)
	ends  = "ends"  // the transaction was committed, rolled back or prepared: the branch escaped the coordinator
)

type serverCase struct {
	pre    string // run first, outside the guard (a session setting, a PREPARE)
	sql    string // the statement under test, sent as one text (multi-statement where it has several)
	server string // what the server does: stays or ends
	// guard: whether the guard refuses it. Every statement the server ends
	// the transaction with must be refused; a refused one the server
	// keeps is a conservative refusal (another reading, another server
	// version or a session setting would end it), with why.
	refused bool
	why     string
}

// TestServerPostgres sends each statement inside a transaction on a real
// PostgreSQL and checks the guard against what the server did: every
// statement that ends the transaction is refused, every allowed one leaves
// it open (or aborted) and uncommitted.
func TestServerPostgres(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	u := dbtest.PG(t)
	conn, err := pgx.Connect(ctx, u)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(context.Background())
	other, err := pgx.Connect(ctx, u)
	if err != nil {
		t.Fatal(err)
	}
	defer other.Close(context.Background())
	for _, q := range []string{
		"CREATE TABLE IF NOT EXISTS sqlguard_t (id int PRIMARY KEY)",
		"CREATE OR REPLACE PROCEDURE sqlguard_commits() LANGUAGE plpgsql AS $$ BEGIN COMMIT; END $$",
	} {
		if _, err := conn.PgConn().Exec(ctx, q).ReadAll(); err != nil {
			t.Fatal(err)
		}
	}
	cases := []serverCase{
		{sql: "SELECT 1", server: stays},
		{sql: "SELECT 'COMMIT'; SELECT 1 -- COMMIT", server: stays},
		{sql: "SAVEPOINT x", server: stays},
		{sql: "RELEASE SAVEPOINT s", server: stays},
		{sql: "ROLLBACK TO SAVEPOINT s", server: stays},
		{sql: "ROLLBACK TRANSACTION TO s", server: stays},
		{sql: "SET TRANSACTION ISOLATION LEVEL SERIALIZABLE", server: stays},
		{sql: "SET SESSION CHARACTERISTICS AS TRANSACTION ISOLATION LEVEL READ COMMITTED", server: stays},
		{sql: "DO $$ BEGIN COMMIT; END $$", server: stays},
		{sql: "CALL sqlguard_commits()", server: stays},
		{sql: "VACUUM sqlguard_t", server: stays},
		{sql: "PREPARE transaction AS SELECT 1", server: stays},
		{sql: "SELECT $x$ ; COMMIT; $x$", server: stays},
		{sql: "SELECT 1 /* a /* b */ ; COMMIT; */", server: stays},
		{sql: "SELECT E'\\'; COMMIT; --'", server: stays},
		{sql: "LOCK TABLE sqlguard_t IN EXCLUSIVE MODE", server: stays},

		{sql: "COMMIT", server: ends, refused: true},
		{sql: "END", server: ends, refused: true},
		{sql: "ABORT", server: ends, refused: true},
		{sql: "ROLLBACK", server: ends, refused: true},
		{sql: "COMMIT AND CHAIN", server: ends, refused: true},
		{sql: "ROLLBACK AND CHAIN", server: ends, refused: true},
		{sql: "SELECT 1; COMMIT; SELECT 2", server: ends, refused: true},
		{sql: "PREPARE TRANSACTION 'sqlguard-g'", server: ends, refused: true},
		{sql: "SELECT 1 --\r; COMMIT", server: ends, refused: true},
		{sql: "BEGIN", server: stays, refused: true, why: "alone a warning, but BEGIN after a hidden COMMIT starts a transaction the coordinator does not own"},
		{sql: "START TRANSACTION", server: stays, refused: true, why: "as BEGIN"},
		{sql: "COMMIT PREPARED 'sqlguard-none'", server: stays, refused: true, why: "PostgreSQL refuses it in a block; refused as transaction control all the same"},
		{sql: "SELECT 'a\\''; COMMIT; --'", server: stays, refused: true, why: "with standard_conforming_strings on it is one string; off, the COMMIT runs (next row)"},
		{pre: "SET standard_conforming_strings = off", sql: "SELECT 'a\\''; COMMIT; --'", server: ends, refused: true},
	}
	for _, c := range cases {
		err := sqlguard.Check(sqlguard.Postgres, c.sql)
		if (err != nil) != c.refused {
			t.Errorf("%q: guard %v, want refused=%v (%s)", c.sql, err, c.refused, c.why)
		}
		if got, detail := pgRun(ctx, t, conn, other, c); got != c.server {
			t.Errorf("%q: server %s (%s), want %s", c.sql, got, detail, c.server)
		}
	}
}

// pgRun runs one case on conn inside a transaction that wrote a row and
// says what the server did, with the evidence.
func pgRun(ctx context.Context, t *testing.T, conn, other *pgx.Conn, c serverCase) (string, string) {
	t.Helper()
	simple := func(c *pgx.Conn, q string) error {
		_, err := c.PgConn().Exec(ctx, q).ReadAll()
		return err
	}
	for _, q := range []string{"ROLLBACK", "RESET ALL", "DEALLOCATE ALL", "DELETE FROM sqlguard_t", "DISCARD PLANS"} {
		if err := simple(conn, q); err != nil {
			t.Fatalf("%q: cleanup %s: %v", c.sql, q, err)
		}
	}
	if c.pre != "" {
		if err := simple(conn, c.pre); err != nil {
			t.Fatalf("%q: %v", c.pre, err)
		}
	}
	if err := simple(conn, "BEGIN; INSERT INTO sqlguard_t VALUES (1); SAVEPOINT s"); err != nil {
		t.Fatal(err)
	}
	runErr := simple(conn, c.sql)
	status := conn.PgConn().TxStatus()
	var mine, theirs int
	count := func(c *pgx.Conn) int {
		// By the simple protocol's pgconn: pgx refuses its own simple
		// protocol under standard_conforming_strings=off.
		rr, err := c.PgConn().Exec(ctx, "SELECT count(*) FROM sqlguard_t").ReadAll()
		if err != nil {
			t.Fatal(err)
		}
		n, err := strconv.Atoi(string(rr[0].Rows[0][0]))
		if err != nil {
			t.Fatal(err)
		}
		return n
	}
	if status == 'T' {
		mine = count(conn)
	}
	theirs = count(other)
	got := stays
	if status == 'I' || status == 'T' && mine == 0 || theirs != 0 {
		got = ends
	}
	_ = simple(conn, "ROLLBACK")
	_ = simple(other, "ROLLBACK PREPARED 'sqlguard-g'")
	_ = simple(other, "DELETE FROM sqlguard_t")
	return got, fmt.Sprintf("status %c, own rows %d, committed rows %d, error %v", status, mine, theirs, runErr)
}

// TestServerMariaDB does the same on MariaDB, in a local transaction (a
// decision keeper's branch: the server refuses nothing there) and, for the
// XA statements, in an XA branch.
func TestServerMariaDB(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	conn, db := mariaConn(ctx, t)
	for _, q := range []string{
		"CREATE TABLE IF NOT EXISTS sqlguard_t (id int PRIMARY KEY) ENGINE=InnoDB",
		"CREATE TABLE IF NOT EXISTS sqlguard_u (id int PRIMARY KEY) ENGINE=InnoDB",
		"DROP PROCEDURE IF EXISTS sqlguard_commits",
		"CREATE PROCEDURE sqlguard_commits() BEGIN COMMIT; END",
	} {
		if _, err := conn.ExecContext(ctx, q); err != nil {
			t.Fatal(err)
		}
	}
	cases := []serverCase{
		{sql: "SELECT 1", server: stays},
		{sql: "SELECT 'COMMIT', \"COMMIT\", 1 AS `COMMIT`; SELECT 1 # COMMIT", server: stays},
		{sql: "SAVEPOINT x", server: stays},
		{sql: "RELEASE SAVEPOINT s", server: stays},
		{sql: "ROLLBACK TO SAVEPOINT s", server: stays},
		{sql: "ROLLBACK WORK TO s", server: stays},
		{sql: "CREATE TEMPORARY TABLE sqlguard_tt (a int)", server: stays},
		{sql: "CREATE OR REPLACE TEMPORARY TABLE sqlguard_tt (a int)", server: stays},
		{sql: "DROP TEMPORARY TABLE IF EXISTS sqlguard_tt", server: stays},
		{sql: "SET SESSION TRANSACTION ISOLATION LEVEL READ COMMITTED", server: stays},
		{sql: "SET TRANSACTION ISOLATION LEVEL READ COMMITTED", server: stays},
		{sql: "SET STATEMENT max_statement_time = 10 FOR SELECT 1", server: stays},
		{sql: "ANALYZE SELECT 1", server: stays},
		{sql: "SET @x = 1, @autocommit = 0", server: stays},
		{sql: "DO 1", server: stays},
		{sql: "SELECT 'a\\'; COMMIT; -- '", server: stays, refused: true, why: "one string by default; under NO_BACKSLASH_ESCAPES the COMMIT runs (next row)"},
		{pre: "SET sql_mode = CONCAT(@@sql_mode, ',NO_BACKSLASH_ESCAPES')", sql: "SELECT 'a\\'; COMMIT; -- '", server: ends, refused: true},
		{sql: "SELECT 1 AS \"a\\\"; COMMIT; -- \"", server: stays, refused: true, why: "one string by default; under ANSI_QUOTES the COMMIT runs (next row)"},
		{pre: "SET sql_mode = CONCAT(@@sql_mode, ',ANSI_QUOTES')", sql: "SELECT 1 AS \"a\\\"; COMMIT; -- \"", server: ends, refused: true},
		{sql: "SELECT 1 AS [a']; COMMIT; -- '", server: stays, refused: true, why: "by default [ is an error; under MSSQL the COMMIT runs (next row)"},
		{pre: "SET sql_mode = 'MSSQL'", sql: "SELECT 1 AS [a']; COMMIT; -- '", server: ends, refused: true},
		{pre: "SET sql_mode = 'MSSQL'", sql: "SELECT 1 AS [a]]'; COMMIT; -- ']", server: stays},
		{pre: "SET sql_mode = 'ANSI_QUOTES'", sql: "SET \"autocommit\" = 0", server: stays, refused: true, why: "autocommit named under ANSI_QUOTES"},
		{sql: "SELECT 1 --\x01; COMMIT", server: stays},
		{sql: "SELECT 1 --\v; COMMIT", server: stays},
		{sql: "SELECT 1 # x\r; COMMIT", server: stays},
		{sql: "SELECT 1 /* ; COMMIT; */", server: stays},

		{sql: "COMMIT", server: ends, refused: true},
		{sql: "ROLLBACK", server: ends, refused: true},
		{sql: "ROLLBACK AND CHAIN", server: ends, refused: true},
		{sql: "BEGIN", server: ends, refused: true},
		{sql: "START TRANSACTION", server: ends, refused: true},
		{sql: "SELECT 1; COMMIT", server: ends, refused: true},
		{sql: "SELECT 1 --1; COMMIT", server: ends, refused: true},
		{sql: "SELECT 1 --\n; COMMIT", server: ends, refused: true},
		{sql: "/*!COMMIT*/", server: ends, refused: true},
		{sql: "/*M!COMMIT*/", server: ends, refused: true},
		{sql: "/*!100000 COMMIT*/", server: ends, refused: true},
		{sql: "/*!50700 COMMIT*/", server: stays, refused: true, why: "MariaDB skips MySQL 5.7+ conditional comments; MySQL 8 would run it"},
		{sql: "SET autocommit = 0", server: stays, refused: true, why: "no commit here, but the session leaves the transaction's rules; SET autocommit = 1 after 0 commits"},
		{pre: "SET autocommit = 0", sql: "SET autocommit = 1", server: ends, refused: true},
		{sql: "CREATE TABLE IF NOT EXISTS sqlguard_t (id int PRIMARY KEY)", server: ends, refused: true},
		{sql: "ALTER TABLE sqlguard_u COMMENT 'x'", server: ends, refused: true},
		{sql: "DROP TABLE IF EXISTS sqlguard_none", server: ends, refused: true},
		{sql: "TRUNCATE TABLE sqlguard_u", server: ends, refused: true},
		{sql: "RENAME TABLE sqlguard_u TO sqlguard_u2; RENAME TABLE sqlguard_u2 TO sqlguard_u", server: ends, refused: true},
		{sql: "CREATE INDEX sqlguard_i ON sqlguard_u (id); DROP INDEX sqlguard_i ON sqlguard_u", server: ends, refused: true},
		{sql: "LOCK TABLES sqlguard_u READ", server: ends, refused: true},
		{sql: "UNLOCK TABLES", server: stays, refused: true, why: "commits only when tables are locked"},
		{sql: "ANALYZE TABLE sqlguard_u", server: ends, refused: true},
		{sql: "OPTIMIZE TABLE sqlguard_u", server: ends, refused: true},
		{sql: "CHECK TABLE sqlguard_u", server: ends, refused: true},
		{sql: "REPAIR TABLE sqlguard_u", server: ends, refused: true},
		{sql: "FLUSH TABLES sqlguard_u", server: ends, refused: true},
		{sql: "CALL sqlguard_commits()", server: ends, refused: true},
		{pre: "PREPARE sqlguard_s FROM 'COMMIT'", sql: "EXECUTE sqlguard_s", server: ends, refused: true},
		{sql: "EXECUTE IMMEDIATE 'COMMIT'", server: ends, refused: true},
		{sql: "IF 1 THEN COMMIT; END IF", server: ends, refused: true},
		{sql: "BEGIN NOT ATOMIC COMMIT; END", server: ends, refused: true},
		{sql: "REPEAT COMMIT; UNTIL 1 END REPEAT", server: ends, refused: true},
		{sql: "SET STATEMENT max_statement_time = 10 FOR FLUSH TABLES sqlguard_u FOR EXPORT", server: ends, refused: true},
		{sql: "SET STATEMENT max_statement_time = 10 FOR COMMIT", server: ends, refused: true},
	}
	for _, c := range cases {
		err := sqlguard.Check(sqlguard.MySQL, c.sql)
		if (err != nil) != c.refused {
			t.Errorf("%q: guard %v, want refused=%v (%s)", c.sql, err, c.refused, c.why)
		}
		if got, detail := mariaRun(ctx, t, conn, db, c, mariaLocal, false); got != c.server {
			t.Errorf("%q: server %s (%s), want %s", c.sql, got, detail, c.server)
		}
	}

	// In an XA branch the server refuses COMMIT and DDL itself, but not the
	// XA statements on the branch's own XID: the attack of issue 14.
	for _, c := range []serverCase{
		{sql: "COMMIT", server: stays, refused: true},
		{sql: "CREATE TABLE IF NOT EXISTS sqlguard_t (id int PRIMARY KEY)", server: stays, refused: true},
		{sql: "XA END 'sqlguard-x'; XA COMMIT 'sqlguard-x' ONE PHASE", server: ends, refused: true},
		{sql: "SELECT 1", server: stays},
	} {
		if err := sqlguard.Check(sqlguard.MySQL, c.sql); (err != nil) != c.refused {
			t.Errorf("XA %q: guard %v, want refused=%v", c.sql, err, c.refused)
		}
		if got, detail := mariaRun(ctx, t, conn, db, c, "XA START 'sqlguard-x'; INSERT INTO sqlguard_t VALUES (1)", true); got != c.server {
			t.Errorf("XA %q: server %s (%s), want %s", c.sql, got, detail, c.server)
		}
	}
}

// mariaLocal opens a decision keeper's kind of branch: a local transaction.
const mariaLocal = "BEGIN; INSERT INTO sqlguard_t VALUES (1); SAVEPOINT s"

// mariaRun runs one case on conn inside the transaction begin opens and
// says what the server did, with the evidence.
func mariaRun(ctx context.Context, t *testing.T, conn *sql.Conn, db *sql.DB, c serverCase, begin string, xa bool) (string, string) {
	t.Helper()
	cleanup := []string{"XA END 'sqlguard-x'", "XA ROLLBACK 'sqlguard-x'", "ROLLBACK", "UNLOCK TABLES", "SET autocommit = 1",
		"SET SESSION sql_mode = DEFAULT", "SET SESSION TRANSACTION ISOLATION LEVEL REPEATABLE READ", "DELETE FROM sqlguard_t"}
	for _, q := range cleanup {
		_, _ = conn.ExecContext(ctx, q)
	}
	if c.pre != "" {
		if _, err := conn.ExecContext(ctx, c.pre); err != nil {
			t.Fatalf("%q: %v", c.pre, err)
		}
	}
	if _, err := conn.ExecContext(ctx, begin); err != nil {
		t.Fatalf("%s: %v", begin, err)
	}
	_, runErr := conn.ExecContext(ctx, c.sql)
	var inTx, mine, theirs int
	if err := db.QueryRowContext(ctx, "SELECT count(*) FROM sqlguard_t").Scan(&theirs); err != nil {
		t.Fatal(err)
	}
	got := stays
	if xa {
		// An XA branch still open shows in information_schema; one the
		// statement committed shows its row to everyone.
		if theirs != 0 {
			got = ends
		}
	} else {
		if err := conn.QueryRowContext(ctx, "SELECT @@in_transaction").Scan(&inTx); err != nil {
			t.Fatal(err)
		}
		if inTx == 1 {
			if err := conn.QueryRowContext(ctx, "SELECT count(*) FROM sqlguard_t").Scan(&mine); err != nil {
				t.Fatal(err)
			}
		}
		if inTx == 0 || mine == 0 || theirs != 0 {
			got = ends
		}
	}
	for _, q := range cleanup {
		_, _ = conn.ExecContext(ctx, q)
	}
	return got, fmt.Sprintf("in_transaction %d, own rows %d, committed rows %d, error %v", inTx, mine, theirs, runErr)
}

// mysqlConfig reads a mysql://user:password@host:port/db URL (the form
// dbtest returns) into a driver configuration.
func mysqlConfig(t *testing.T, raw string) *mysqldriver.Config {
	t.Helper()
	u, err := url.Parse(raw)
	if err != nil {
		t.Fatal(err)
	}
	cfg := mysqldriver.NewConfig()
	cfg.User = u.User.Username()
	cfg.Passwd, _ = u.User.Password()
	cfg.Net, cfg.Addr = "tcp", u.Host
	cfg.DBName = strings.TrimPrefix(u.Path, "/")
	return cfg
}

// Fragments the differential tests build texts from: the constructs whose
// reading the lexers must agree with the servers on, and transaction
// control to hide among them.
var (
	commonFragments = []string{
		"SELECT 1", "SELECT 'a'", " ", "\n", "\r", "\t", ";", "; ", "'", "\"", "\\", "''", "\\'", "'\\'",
		"/*", "*/", "/* c */", "--", "-- ", "--\n", "-", "*", "/", " AS x", ", 2", "(", ")",
		" COMMIT", "COMMIT", " ROLLBACK", "ROLLBACK TO s", " WORK", "e", "x", "1",
	}
	pgFragments = append([]string{
		"$$", "$a$", "$1", "E'", "e'\\''", "U&'", "\"\"", "/* /* */", "x$a$", "$a",
	}, commonFragments...)
	myFragments = append([]string{
		"#", "# c\n", "`", "``", "/*!", "/*!COMMIT*/", "/*! SELECT 1 */", "--\x01", "--\v", "--1", "\"\\\"", "?",
		"_utf8mb4'", "N'", "X'", "@", "@@", "BEGIN", "XA END 'sqlguard-x'", " AS [", "[", "]", "]]",
	}, commonFragments...)
)

// Statements valid in some readings, for texts that more often run to
// their end: the fragment soup mostly makes syntax errors.
var (
	pgItems = []string{
		"SELECT 'a\\'", "SELECT 'a\\''", "SELECT E'a\\''", "SELECT $$a$$", "SELECT $q$'$q$", "SELECT 1 -- c\n",
		"SELECT 1 /* c */", "SELECT 1 /* /* */ */", "SELECT 1 AS \"a\\\"", "SELECT '--'", "SELECT 1",
		"COMMIT", "ROLLBACK", "END", "'", "\"", "--", "/*", "*/", "$$", "\n", "\r",
	}
	myItems = []string{
		"SELECT 'a\\'", "SELECT 'a\\''", "SELECT \"a\\\"", "SELECT 1 AS `a'`", "SELECT 1 AS [a']", "SELECT 1 AS [a]]']",
		"SELECT 1 # c\n", "SELECT 1 -- c\n", "SELECT 1 --\x01", "SELECT 1 /* c */", "/*! SELECT 1 */", "SELECT '#'",
		"SELECT 1", "COMMIT", "ROLLBACK", "BEGIN", "'", "\"", "`", "#", "-- ", "/*", "*/", "[", "]", "\n",
	}
)

func randomText(r *rand.Rand, frags, items []string) string {
	var b strings.Builder
	if r.IntN(2) == 0 {
		for n := 2 + r.IntN(5); n > 0; n-- {
			b.WriteString(items[r.IntN(len(items))])
			b.WriteString([]string{"; ", ";", " ", "\n"}[r.IntN(4)])
		}
		return b.String()
	}
	b.WriteString("SELECT 1")
	for n := 2 + r.IntN(7); n > 0; n-- {
		b.WriteString(frags[r.IntN(len(frags))])
	}
	if r.IntN(2) == 0 {
		b.WriteString(";COMMIT")
	}
	return b.String()
}

// differentialCount is how many random texts each differential test sends
// per session setting (XABRIDGE_SQLGUARD_DIFF overrides it).
func differentialCount(t *testing.T) int {
	if v := os.Getenv("XABRIDGE_SQLGUARD_DIFF"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil {
			t.Fatalf("XABRIDGE_SQLGUARD_DIFF=%q: %v", v, err)
		}
		return n
	}
	return 150
}

// TestServerDifferentialPostgres sends random texts of tricky fragments
// to PostgreSQL, with standard_conforming_strings on and off: whenever the
// server ended the transaction, the guard must have refused the text.
func TestServerDifferentialPostgres(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	u := dbtest.PG(t)
	conn, err := pgx.Connect(ctx, u)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(context.Background())
	other, err := pgx.Connect(ctx, u)
	if err != nil {
		t.Fatal(err)
	}
	defer other.Close(context.Background())
	if _, err := conn.PgConn().Exec(ctx, "CREATE TABLE IF NOT EXISTS sqlguard_t (id int PRIMARY KEY)").ReadAll(); err != nil {
		t.Fatal(err)
	}
	r := rand.New(rand.NewPCG(14, 7))
	n, tally := differentialCount(t), map[[2]bool]int{}
	for _, pre := range []string{"", "SET standard_conforming_strings = off"} {
		for range n {
			c := serverCase{pre: pre, sql: randomText(r, pgFragments, pgItems)}
			got, detail := pgRun(ctx, t, conn, other, c)
			err := sqlguard.Check(sqlguard.Postgres, c.sql)
			tally[[2]bool{got == ends, err != nil}]++
			if got == ends && err == nil {
				t.Errorf("%q (%s): the server ended the transaction (%s) but the guard allowed it", c.sql, pre, detail)
			}
		}
	}
	logTally(t, tally)
}

// TestServerDifferentialMariaDB does the same on MariaDB in a local
// transaction, in the default sql_mode, NO_BACKSLASH_ESCAPES, ANSI_QUOTES
// and MSSQL.
func TestServerDifferentialMariaDB(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	conn, db := mariaConn(ctx, t)
	if _, err := conn.ExecContext(ctx, "CREATE TABLE IF NOT EXISTS sqlguard_t (id int PRIMARY KEY) ENGINE=InnoDB"); err != nil {
		t.Fatal(err)
	}
	r := rand.New(rand.NewPCG(14, 8))
	n, tally := differentialCount(t), map[[2]bool]int{}
	for _, pre := range []string{"", "SET sql_mode = CONCAT(@@sql_mode, ',NO_BACKSLASH_ESCAPES')", "SET sql_mode = CONCAT(@@sql_mode, ',ANSI_QUOTES')", "SET sql_mode = 'MSSQL'"} {
		for range n {
			c := serverCase{pre: pre, sql: randomText(r, myFragments, myItems)}
			got, detail := mariaRun(ctx, t, conn, db, c, mariaLocal, false)
			err := sqlguard.Check(sqlguard.MySQL, c.sql)
			tally[[2]bool{got == ends, err != nil}]++
			if got == ends && err == nil {
				t.Errorf("%q (%s): the server ended the transaction (%s) but the guard allowed it", c.sql, pre, detail)
			}
		}
	}
	logTally(t, tally)
}

// logTally reports how the server's outcomes and the guard's verdicts met.
func logTally(t *testing.T, tally map[[2]bool]int) {
	t.Logf("server ended & guard refused %d; server kept & guard allowed %d; server kept & guard refused (conservative) %d; server ended & guard allowed (must be 0) %d",
		tally[[2]bool{true, true}], tally[[2]bool{false, false}], tally[[2]bool{false, true}], tally[[2]bool{true, false}])
}

// mariaConn returns one session of the test MariaDB that accepts several
// statements in one string, and its pool; both are closed at the end of the
// test.
func mariaConn(ctx context.Context, t *testing.T) (*sql.Conn, *sql.DB) {
	t.Helper()
	cfg := mysqlConfig(t, dbtest.MySQL(t))
	cfg.MultiStatements = true
	connector, err := mysqldriver.NewConnector(cfg)
	if err != nil {
		t.Fatal(err)
	}
	db := sql.OpenDB(connector)
	t.Cleanup(func() { _ = db.Close() })
	conn, err := db.Conn(ctx)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = conn.Close() })
	return conn, db
}
