package postgres

import (
	"context"
	"fmt"
	"strings"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/xabridge/xabridge/drivers"
	"github.com/xabridge/xabridge/drivers/sqlguard"
)

// endsTransaction is the second line of defence behind the guard (check):
// should a statement get past the lexer, it decides, from a statement the
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

// check refuses, before anything is sent, an application text that is (or
// may be) transaction control: see package sqlguard. nargs is the number
// of arguments sent with it. The refusal is an ErrFailed *drivers.Error
// that also matches sqlguard.ErrTransactionControl or
// sqlguard.ErrUnreadable. Nothing changes on the branch: it stays usable.
func (b *branch) check(op, sql string, nargs int) error {
	if b.unguarded {
		return nil
	}
	if err := sqlguard.CheckArgs(sqlguard.Postgres, sql, nargs); err != nil {
		return b.wrap(op, drivers.ErrFailed, err)
	}
	return nil
}

// guard checks the text of Exec (query false) or Query/QueryRow (query
// true) as the server will receive it. pgx reads options at the head of
// the arguments (QueryExecMode; for queries QueryResultFormats and
// QueryResultFormatsByOID; QueryRewriter); a QueryRewriter (pgx.NamedArgs)
// changes the text, so guard applies it here, as pgx would (the last one
// given wins), and returns the rewritten text and arguments with the other
// options kept in front: pgx then runs exactly the text that was checked.
// b.mu is held and the branch is usable (its connection is pinned).
func (b *branch) guard(ctx context.Context, op, sql string, args []any, query bool) (string, []any, error) {
	n := 0
	var rw pgx.QueryRewriter
options:
	for n < len(args) {
		switch a := args[n].(type) {
		case pgx.QueryExecMode:
		case pgx.QueryResultFormats, pgx.QueryResultFormatsByOID:
			if !query {
				break options
			}
		case pgx.QueryRewriter:
			rw = a
		default:
			break options
		}
		n++
	}
	if rw != nil {
		rsql, rargs, err := rw.RewriteQuery(ctx, b.conn.Conn(), sql, args[n:])
		if err != nil {
			return "", nil, b.wrap(op, drivers.ErrFailed, fmt.Errorf("rewrite query failed: %w", err))
		}
		out := make([]any, 0, n+len(rargs))
		for _, a := range args[:n] {
			if _, ok := a.(pgx.QueryRewriter); !ok {
				out = append(out, a)
			}
		}
		n = len(out)
		sql, args = rsql, append(out, rargs...)
	}
	return sql, args, b.check(op, sql, len(args)-n)
}

// guardBatch checks every statement queued in a batch, each rewritten by
// its QueryRewriter as pgx would (the only option a batch reads); only if
// all pass are the rewritten texts stored in the batch (pgx stores them
// there itself when it sends it). b.mu is held and the branch is usable.
func (b *branch) guardBatch(ctx context.Context, batch *pgx.Batch) error {
	type rewrite struct {
		i    int
		sql  string
		args []any
	}
	var rewritten []rewrite
	for i, q := range batch.QueuedQueries {
		sql, args := q.SQL, q.Arguments
		n := 0
		var rw pgx.QueryRewriter
		for n < len(args) {
			a, ok := args[n].(pgx.QueryRewriter)
			if !ok {
				break
			}
			rw = a
			n++
		}
		if rw != nil {
			var err error
			sql, args, err = rw.RewriteQuery(ctx, b.conn.Conn(), sql, args[n:])
			if err != nil {
				return b.wrap("batch", drivers.ErrFailed, fmt.Errorf("statement %d of the batch: rewrite query failed: %w", i+1, err))
			}
			rewritten = append(rewritten, rewrite{i, sql, args})
		}
		if b.unguarded {
			continue
		}
		if err := sqlguard.CheckArgs(sqlguard.Postgres, sql, len(args)); err != nil {
			return b.wrap("batch", drivers.ErrFailed, fmt.Errorf("statement %d of the batch: %w", i+1, err))
		}
	}
	for _, r := range rewritten {
		batch.QueuedQueries[r.i].SQL, batch.QueuedQueries[r.i].Arguments = r.sql, r.args
	}
	return nil
}
