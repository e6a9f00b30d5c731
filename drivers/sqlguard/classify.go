package sqlguard

import "strings"

// endStatement classifies the statement that ends at end (its ';' or the
// end of the text) and starts the next one.
func (s *scanner) endStatement(end int) error {
	if s.stStart < 0 {
		// An empty statement (";;", a text of comments): nothing to run.
		return nil
	}
	err := s.pending
	if err == nil {
		err = s.classify()
	}
	if s.out != nil {
		*s.out = append(*s.out, Statement{Offset: s.stStart, End: end, Head: s.head()})
	}
	s.index++
	s.stStart, s.ntok, s.flags, s.sawFor, s.pending = -1, 0, 0, false, nil
	if err != nil {
		return err
	}
	return nil
}

// classify classifies the tokens kept of the current statement.
func (s *scanner) classify() *Error {
	if s.d == Postgres {
		return s.classifyPG()
	}
	return s.classifyMy()
}

// word returns the k-th token of the statement if it is a bare word, else "".
func (s *scanner) word(k int) string {
	if k >= s.ntok || k >= maxToks || s.toks[k].kind != tkWord {
		return ""
	}
	t := s.toks[k]
	return s.src[t.start:t.end]
}

// punct reports whether the k-th token is the single byte c.
func (s *scanner) punct(k int, c byte) bool {
	if k >= s.ntok || k >= maxToks || s.toks[k].kind != tkPunct {
		return false
	}
	return s.src[s.toks[k].start] == c
}

// head returns the statement's leading words, upper-cased: up to four,
// stopping at the first token that is not a bare word.
func (s *scanner) head() string {
	var b strings.Builder
	for k := 0; k < 4; k++ {
		w := s.word(k)
		if w == "" {
			break
		}
		if k > 0 {
			b.WriteByte(' ')
		}
		if len(w) > 32 {
			w = w[:32] + "…"
		}
		b.WriteString(strings.ToUpper(w))
	}
	return b.String()
}

func (s *scanner) tc(reason string) *Error {
	return s.refuse(ErrTransactionControl, s.stStart, s.head(), reason)
}

// rollbackTo reports whether a ROLLBACK statement rolls back to a savepoint:
// ROLLBACK [WORK | TRANSACTION] TO [SAVEPOINT] name.
func (s *scanner) rollbackTo() bool {
	k := 1
	if w := s.word(k); eqKw(w, "WORK") || eqKw(w, "TRANSACTION") {
		k++
	}
	return eqKw(s.word(k), "TO")
}

// Reasons shared by both dialects.
const (
	whyCommit   = "it would commit the branch's transaction outside the coordinator"
	whyRollback = "it would roll back the branch's transaction outside the coordinator (ROLLBACK TO SAVEPOINT is allowed)"
	whyBegin    = "it would start (or commit and start) a transaction outside the coordinator's"
	whyCharset  = "it changes the character set the server reads later statements in"
)

// classifyPG classifies a PostgreSQL statement. Only the statements that
// end or start a transaction block are refused: PostgreSQL itself refuses,
// inside a transaction block, everything else that would commit
// (CALL or DO of a procedure that commits: "invalid transaction
// termination", SQLSTATE 2D000; VACUUM, CREATE DATABASE, CREATE INDEX
// CONCURRENTLY: "cannot run inside a transaction block", 25001), and such an
// error only aborts the block, which the coordinator then rolls back.
// Savepoints (SAVEPOINT, RELEASE, ROLLBACK TO) stay inside the block.
func (s *scanner) classifyPG() *Error {
	w := s.word(0)
	switch {
	case w == "":
		return nil
	case eqKw(w, "COMMIT"), eqKw(w, "END"):
		// COMMIT [AND [NO] CHAIN], END, and COMMIT PREPARED (which
		// PostgreSQL refuses in a block anyway).
		return s.tc(whyCommit)
	case eqKw(w, "ABORT"):
		return s.tc(whyRollback)
	case eqKw(w, "ROLLBACK"):
		if s.rollbackTo() {
			return nil
		}
		return s.tc(whyRollback)
	case eqKw(w, "BEGIN"), eqKw(w, "START"):
		return s.tc(whyBegin)
	case eqKw(w, "PREPARE"):
		// PREPARE TRANSACTION 'gid' ends the block; PREPARE name AS …
		// is a prepared statement, and "transaction" can be its name
		// (PREPARE transaction AS …, PREPARE transaction(int) AS …).
		if eqKw(s.word(1), "TRANSACTION") && !eqKw(s.word(2), "AS") && !s.punct(2, '(') {
			return s.tc("PREPARE TRANSACTION would end the branch's transaction outside the coordinator (PREPARE name AS … is allowed)")
		}
	case eqKw(w, "SET"):
		if s.flags&flagCharset != 0 {
			return s.refuse(ErrUnreadable, s.stStart, s.head(), whyCharset)
		}
	}
	return nil
}

// classifyMy classifies a MariaDB/MySQL statement. Besides explicit
// transaction control it refuses the statements that commit implicitly,
// listed in "SQL statements Causing an Implicit Commit"
// (https://mariadb.com/kb/en/sql-statements-that-cause-an-implicit-commit/;
// MySQL: "Statements That Cause an Implicit Commit", refman 8.0 §15.3.3):
// ALTER …, ANALYZE TABLE, BEGIN, CACHE INDEX, CHANGE MASTER, CHECK TABLE,
// CREATE … (but CREATE TEMPORARY TABLE), DROP … (but DROP TEMPORARY
// TABLE), FLUSH, GRANT, INSTALL/UNINSTALL PLUGIN, LOAD INDEX INTO CACHE,
// LOCK TABLES, OPTIMIZE TABLE, RENAME, REPAIR TABLE, RESET, REVOKE, SET
// PASSWORD, SHUTDOWN, START SLAVE/REPLICA, START TRANSACTION, STOP SLAVE,
// TRUNCATE TABLE, UNLOCK TABLES, SET autocommit, IMPORT TABLE. A statement
// refused here is refused by its first words, whatever follows (LOCK
// INSTANCE and BACKUP STAGE too: not application SQL).
//
// An XA branch's server refuses most of them itself (XAER_RMFAIL), but not
// XA END / XA COMMIT … ONE PHASE on the branch's own XID, and a decision
// keeper's branch is a plain local transaction that any of them commits.
// Statements whose effect the guard cannot see are refused too: CALL (a
// procedure may commit, run DDL or dynamic SQL), PREPARE / EXECUTE (dynamic
// SQL, which may be a COMMIT), and MariaDB's compound statements outside a
// program (IF, CASE, LOOP, REPEAT, WHILE, FOR, label: …), whose inner ';'
// does not end them.
func (s *scanner) classifyMy() *Error {
	// Words met anywhere in a SET statement, also SET STATEMENT
	// autocommit=0 FOR ….
	switch {
	case s.flags&flagAutocommit != 0:
		return s.tc("SET autocommit commits the transaction (or takes the session out of it)")
	case s.flags&flagCharset != 0:
		return s.refuse(ErrUnreadable, s.stStart, s.head(), whyCharset)
	}
	if s.punct(1, ':') {
		// label: BEGIN|LOOP|REPEAT|WHILE|FOR …, the label bare or quoted.
		return s.tc("a labelled compound statement may hold transaction control the guard does not parse")
	}
	w := s.word(0)
	if w == "" {
		return nil
	}
	switch {
	case eqKw(w, "COMMIT"):
		return s.tc(whyCommit)
	case eqKw(w, "ROLLBACK"):
		if s.rollbackTo() {
			return nil
		}
		return s.tc(whyRollback)
	case eqKw(w, "BEGIN"), eqKw(w, "START"):
		// BEGIN [WORK], BEGIN NOT ATOMIC … END (MariaDB), START
		// TRANSACTION, START SLAVE/REPLICA (implicit commit).
		return s.tc(whyBegin)
	case eqKw(w, "XA"):
		return s.tc("XA statements would end, prepare or commit the branch outside the coordinator")
	case eqKw(w, "END"):
		// Only inside compound statements (refused) or a syntax error.
		return s.tc(whyCommit)
	case eqKw(w, "SET"):
		if eqKw(s.word(1), "PASSWORD") {
			return s.tc("SET PASSWORD commits implicitly")
		}
		return nil
	case eqKw(w, "CREATE"):
		// CREATE [OR REPLACE] TEMPORARY TABLE does not commit.
		k := 1
		if eqKw(s.word(1), "OR") && eqKw(s.word(2), "REPLACE") {
			k = 3
		}
		if eqKw(s.word(k), "TEMPORARY") && eqKw(s.word(k+1), "TABLE") {
			return nil
		}
		return s.tc(whyImplicit)
	case eqKw(w, "DROP"):
		if eqKw(s.word(1), "TEMPORARY") && eqKw(s.word(2), "TABLE") {
			return nil
		}
		return s.tc(whyImplicit)
	case eqKw(w, "ANALYZE"):
		// MariaDB's ANALYZE SELECT|UPDATE|… runs the statement and reports
		// on it; ANALYZE TABLE commits.
		switch x := s.word(1); {
		case eqKw(x, "SELECT"), eqKw(x, "INSERT"), eqKw(x, "UPDATE"), eqKw(x, "DELETE"), eqKw(x, "REPLACE"), eqKw(x, "FORMAT"):
			return nil
		}
		return s.tc(whyImplicit)
	case eqKw(w, "LOAD"):
		// LOAD DATA and LOAD XML do not commit; LOAD INDEX INTO CACHE does.
		if x := s.word(1); eqKw(x, "DATA") || eqKw(x, "XML") {
			return nil
		}
		return s.tc(whyImplicit)
	case eqKw(w, "ALTER"), eqKw(w, "RENAME"), eqKw(w, "TRUNCATE"), eqKw(w, "OPTIMIZE"),
		eqKw(w, "REPAIR"), eqKw(w, "CHECK"), eqKw(w, "CACHE"), eqKw(w, "FLUSH"),
		eqKw(w, "RESET"), eqKw(w, "GRANT"), eqKw(w, "REVOKE"), eqKw(w, "INSTALL"),
		eqKw(w, "UNINSTALL"), eqKw(w, "LOCK"), eqKw(w, "UNLOCK"), eqKw(w, "CHANGE"),
		eqKw(w, "STOP"), eqKw(w, "SHUTDOWN"), eqKw(w, "RESTART"), eqKw(w, "IMPORT"),
		eqKw(w, "BACKUP"):
		return s.tc(whyImplicit)
	case eqKw(w, "CALL"):
		return s.tc("a stored procedure may commit, run DDL or dynamic SQL, unseen by the guard")
	case eqKw(w, "PREPARE"), eqKw(w, "EXECUTE"):
		return s.tc("dynamic SQL (PREPARE / EXECUTE [IMMEDIATE]) may be transaction control the guard cannot see")
	case eqKw(w, "IF"), eqKw(w, "CASE"), eqKw(w, "LOOP"), eqKw(w, "REPEAT"), eqKw(w, "WHILE"), eqKw(w, "FOR"),
		eqKw(w, "UNTIL"), eqKw(w, "DECLARE"):
		// The pieces a compound statement splits into at its inner
		// ';': its head, and its tail, which starts with END (refused
		// above) or, for REPEAT, UNTIL. DECLARE starts a MariaDB
		// sql_mode=ORACLE anonymous block.
		return s.tc("a compound statement may hold transaction control the guard does not parse")
	}
	return nil
}

const whyImplicit = "it commits the transaction implicitly (MariaDB/MySQL: statements causing an implicit commit)"
