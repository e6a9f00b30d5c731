// Package sqlguard refuses, before they reach the server, the statements an
// application must not send through a branch handle: those that end, commit,
// start or prepare the branch's transaction (COMMIT, ROLLBACK other than to
// a savepoint, END, ABORT, BEGIN, START TRANSACTION, PREPARE TRANSACTION,
// XA …, SET autocommit) and, on MariaDB/MySQL, the statements that commit
// implicitly (DDL, LOCK TABLES, FLUSH, GRANT, …). The coordinator alone ends
// a branch; a COMMIT slipped into a branch commits one side of a global
// transaction whatever the others decide.
//
// It reads the text with a lexer of each dialect (comments, quoted strings
// and identifiers, PostgreSQL dollar quotes, MySQL backticks and executable
// comments), splits it at the statement separators and classifies the
// leading keywords of each statement, so a keyword inside a string, a
// comment or an identifier never counts, and a forbidden statement inside a
// multi-statement string or a batch is found. Where the server could read
// the text in more than one way (its SQL mode, its version, an unterminated
// string), the guard reads it every way it can and refuses if any reading
// finds a forbidden statement, or refuses outright when it cannot tell:
// a refusal costs the application a rewrite, a miss costs atomicity.
//
// The guard imports nothing of the project but drivers (for the error
// class), so both adapters can call it. Its assumptions, each enforced or
// documented where it matters:
//
//   - PostgreSQL: the session's client_encoding is UTF8 (pgx's own
//     requirement for its simple protocol; SET client_encoding and SET NAMES
//     are refused, and a caller can check pgconn's ParameterStatus);
//     standard_conforming_strings may be on or off (both are read).
//   - MariaDB/MySQL: the connection character set is ASCII-safe (utf8mb4,
//     utf8mb3, latin1, ascii, binary; go-sql-driver's default is utf8mb4),
//     never one whose multibyte characters can contain a backslash or quote
//     byte (gbk, big5, sjis, cp932, gb18030): SET NAMES, SET CHARACTER SET and
//     character_set_client are refused. sql_mode may or may not contain
//     NO_BACKSLASH_ESCAPES, ANSI_QUOTES and MariaDB's MSSQL ([ … ]
//     identifiers): every combination that reads differently is read.
//
// Conservative refusals (the server would not end the transaction, but the
// guard cannot tell, or the statement has no place in a branch): on MySQL
// version-conditional comments (/*!50700 …, /*M! …: run or not by the
// server's version), UNLOCK TABLES (commits only when tables are locked),
// SET autocommit=0 (commits nothing, but the session leaves the
// transaction's rules), CALL, PREPARE and EXECUTE of harmless SQL (the
// guard cannot see it: a procedure or an EXECUTE that commits does commit);
// on PostgreSQL BEGIN and START TRANSACTION alone (a warning, but after a
// hidden COMMIT they start a transaction the coordinator does not own),
// COMMIT/ROLLBACK PREPARED (refused by the server in a block), and a SQL
// function body written BEGIN ATOMIC … END, whose inner ';' the guard
// splits at (write it AS $$ … $$); with arguments, a '?' (MySQL) or '$1'
// (PostgreSQL) inside a string or comment.
//
// The tests prove the guard against the servers: server_test.go sends each
// refused and allowed statement inside a transaction on a real PostgreSQL
// and MariaDB, and thousands of random texts of tricky fragments in every
// session setting read, and checks that the server never ended a
// transaction whose text the guard allowed.
package sqlguard

import (
	"errors"
	"strconv"
	"strings"

	"github.com/xabridge/xabridge/drivers"
)

// Dialect is the SQL dialect a text is read in.
type Dialect uint8

// The dialects the guard reads.
const (
	Postgres Dialect = iota + 1 // PostgreSQL (pgx)
	MySQL                       // MariaDB and MySQL (go-sql-driver/mysql)
)

// String returns the dialect's name.
func (d Dialect) String() string {
	switch d {
	case Postgres:
		return "postgres"
	case MySQL:
		return "mysql"
	}
	return "dialect(" + strconv.Itoa(int(d)) + ")"
}

// The kinds of refusal. Both also match drivers.ErrFailed: the statement
// was not sent, the branch is untouched and may go on, and sending the same
// text again will be refused again.
var (
	// ErrTransactionControl: a statement would (or could, unseen by the
	// guard) end, commit, start or prepare the branch's transaction.
	ErrTransactionControl = errors.New("transaction control refused in a branch")

	// ErrUnreadable: the guard cannot read the text with certainty (an
	// unterminated string or comment, a NUL byte, a comment whose meaning
	// depends on the server's version, a change of the character set), so
	// it cannot vouch that no forbidden statement is in it.
	ErrUnreadable = errors.New("statement text the guard cannot read with certainty")
)

// Error is a refusal: which statement of the text, where, and why.
type Error struct {
	Dialect   Dialect
	Kind      error  // ErrTransactionControl or ErrUnreadable
	Statement int    // 0-based index of the statement in the text; -1 when the refusal is about the whole text
	Offset    int    // byte offset in the text of the statement (or construct) refused; -1 with Statement -1
	Head      string // the statement's leading words, upper-cased ("COMMIT AND CHAIN"), or the construct
	Reason    string // why it is refused
	Reading   string // "" for the plain reading, else the server setting under which the text reads this way
}

func (e *Error) Error() string {
	var b strings.Builder
	b.WriteString("sqlguard: ")
	b.WriteString(e.Kind.Error())
	if e.Statement >= 0 {
		b.WriteString(": statement ")
		b.WriteString(strconv.Itoa(e.Statement + 1))
		b.WriteString(" at byte ")
		b.WriteString(strconv.Itoa(e.Offset))
	} else {
		b.WriteString(": the text")
	}
	if e.Head != "" {
		b.WriteString(" (")
		b.WriteString(e.Head)
		b.WriteString(")")
	}
	if e.Reason != "" {
		b.WriteString(": ")
		b.WriteString(e.Reason)
	}
	if e.Reading != "" {
		b.WriteString(" [read ")
		b.WriteString(e.Reading)
		b.WriteString("]")
	}
	return b.String()
}

// Unwrap returns the kind and drivers.ErrFailed, so errors.Is matches both
// and drivers.Classify files a refusal as a failure without effect.
func (e *Error) Unwrap() []error { return []error{e.Kind, drivers.ErrFailed} }

// Check reports whether sql may run in a branch: nil, or an *Error saying
// which statement is refused and why. It is for statements run without
// arguments; use CheckArgs when arguments go with the text.
func Check(d Dialect, sql string) error {
	return check(d, sql, 0, nil)
}

// CheckArgs is Check for a statement sent with nargs arguments. Drivers may
// interpolate arguments into the text on the client (go-sql-driver with
// interpolateParams=true, pgx's simple protocol) with a lexer of their own,
// so with arguments a placeholder-like sequence ('?' for MySQL, '$1' for
// PostgreSQL) inside a string, comment or identifier is refused too: a
// driver that took it for a placeholder would splice an argument there and
// the server would read a different text from the one checked.
func CheckArgs(d Dialect, sql string, nargs int) error {
	return check(d, sql, nargs, nil)
}

// Statement is one statement of a text as the guard reads it (PostgreSQL
// with standard_conforming_strings on; MySQL in the default sql_mode).
type Statement struct {
	Offset int    // byte offset of its first token
	End    int    // byte offset of its ';', or the text's length
	Head   string // its leading words, upper-cased, as classified
}

// Statements splits sql into the statements the guard classifies, in the
// plain reading (empty statements are left out), and returns them with
// Check's verdict on the whole text. For tests and documentation; the
// statements are returned even when the verdict is a refusal, up to the
// point where reading stopped.
func Statements(d Dialect, sql string) ([]Statement, error) {
	var out []Statement
	err := check(d, sql, 0, &out)
	return out, err
}

// The other readings of a text, by the session settings that change how
// a backslash in a quoted string (or, for MariaDB, a '[') is read: every
// combination that reads differently.
var (
	pgReadings = []mode{modePGBackslash}
	myReadings = []mode{
		modeMyDoubleRaw,                   // ANSI_QUOTES
		modeMySingleRaw | modeMyDoubleRaw, // NO_BACKSLASH_ESCAPES (with or without ANSI_QUOTES)
		modeMyBrackets,                    // MSSQL without ANSI_QUOTES
		modeMyBrackets | modeMyDoubleRaw,  // MSSQL
		modeMyBrackets | modeMySingleRaw | modeMyDoubleRaw,
	}
)

// check runs the plain reading and, when the text holds a construct whose
// reading depends on a server setting (a backslash in a quoted string), the
// other readings too. The first refusal wins.
func check(d Dialect, sql string, nargs int, out *[]Statement) error {
	if d != Postgres && d != MySQL {
		return &Error{Dialect: d, Kind: ErrUnreadable, Reason: "unknown dialect " + d.String()}
	}
	if i := strings.IndexByte(sql, 0); i >= 0 {
		// PostgreSQL's protocol ends the text at a NUL; MariaDB ends a
		// comment there. Neither is worth reasoning about.
		return &Error{Dialect: d, Kind: ErrUnreadable, Offset: i, Head: "NUL", Reason: "a NUL byte in the text"}
	}
	s := scanner{d: d, src: sql, nargs: nargs, out: out}
	if err := s.run(); err != nil {
		return err
	}
	if !s.modeDependent {
		return nil
	}
	alts := pgReadings
	if d == MySQL {
		alts = myReadings
	}
	for _, m := range alts {
		a := scanner{d: d, m: m, src: sql, nargs: nargs}
		if err := a.run(); err != nil {
			return err
		}
	}
	return nil
}
