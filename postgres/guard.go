package postgres

import (
	"strings"

	"github.com/jackc/pgx/v5/pgconn"
)

// endsTransaction is the one place that decides, from a statement the
// application ran through the handle and the command tag it answered,
// whether it was transaction control that ended or restarted the branch's
// transaction: COMMIT, ROLLBACK (and their AND CHAIN forms, END, ABORT),
// BEGIN, START TRANSACTION, PREPARE TRANSACTION. A savepoint rollback
// answers the tag ROLLBACK too, but stays inside the transaction: a sql
// that is exactly one ROLLBACK [WORK | TRANSACTION] TO [SAVEPOINT] name
// statement is not an escape. (A multi-statement string ending in one is:
// its tag cannot tell which statement answered it. SAVEPOINT and RELEASE
// answer tags of their own.)
func endsTransaction(sql string, tag pgconn.CommandTag) bool {
	switch tag.String() {
	case "COMMIT", "BEGIN", "START TRANSACTION", "PREPARE TRANSACTION":
		return true
	case "ROLLBACK":
		return !isSavepointRollback(sql)
	}
	return false
}

// isSavepointRollback reports whether sql is a single
// ROLLBACK [WORK | TRANSACTION] TO [SAVEPOINT] name statement, with
// nothing else in it but white space and one trailing semicolon. It errs
// towards false: comments, a second statement or anything it does not
// recognise make it false, and the guard then refuses the statement.
func isSavepointRollback(sql string) bool {
	s := strings.TrimRight(sql, " \t\n\r\f")
	s = strings.TrimSuffix(s, ";")
	words, ok := splitWords(s)
	if !ok || len(words) < 3 || !strings.EqualFold(words[0], "ROLLBACK") {
		return false
	}
	words = words[1:]
	if strings.EqualFold(words[0], "WORK") || strings.EqualFold(words[0], "TRANSACTION") {
		words = words[1:]
	}
	if len(words) < 2 || !strings.EqualFold(words[0], "TO") {
		return false
	}
	words = words[1:]
	if len(words) == 2 && strings.EqualFold(words[0], "SAVEPOINT") {
		words = words[1:]
	}
	return len(words) == 1 && isIdentifier(words[0])
}

// splitWords splits s at white space, keeping a double-quoted identifier
// (with "" inside) as one word. It fails on an unterminated quote.
func splitWords(s string) ([]string, bool) {
	var words []string
	i := 0
	for i < len(s) {
		if isSpace(s[i]) {
			i++
			continue
		}
		start := i
		if s[i] == '"' {
			i++
			for {
				j := strings.IndexByte(s[i:], '"')
				if j < 0 {
					return nil, false
				}
				i += j + 1
				if i < len(s) && s[i] == '"' {
					i++
					continue
				}
				break
			}
			if i < len(s) && !isSpace(s[i]) {
				return nil, false
			}
		} else {
			for i < len(s) && !isSpace(s[i]) {
				i++
			}
		}
		words = append(words, s[start:i])
	}
	return words, true
}

func isSpace(c byte) bool { return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\f' }

// isIdentifier reports whether w is a plain identifier (letters, digits,
// _ and $, not starting with a digit or $) or a complete double-quoted one.
func isIdentifier(w string) bool {
	if len(w) >= 2 && w[0] == '"' && w[len(w)-1] == '"' {
		return true // splitWords checked the quoting
	}
	for i := 0; i < len(w); i++ {
		c := w[i]
		switch {
		case c == '_' || c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= 0x80:
		case i > 0 && (c >= '0' && c <= '9' || c == '$'):
		default:
			return false
		}
	}
	return w != ""
}
