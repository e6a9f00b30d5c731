package postgres

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"
)

// errBadTag: the server answered a transaction-control statement without an
// error but with a command tag other than the one expected. The adapter
// never guesses what that means.
var errBadTag = errors.New("unexpected command tag")

// execSimple sends one statement with the simple query protocol, straight on
// the pgconn: no statement cache, no query rewriting, no DEALLOCATE of
// invalidated statements slipped in before it, so exactly this text reaches
// the server.
func execSimple(ctx context.Context, c *pgxpool.Conn, sql string) (pgconn.CommandTag, error) {
	results, err := c.Conn().PgConn().Exec(ctx, sql).ReadAll()
	if err != nil {
		return pgconn.CommandTag{}, err
	}
	if len(results) != 1 {
		return pgconn.CommandTag{}, fmt.Errorf("%w: %d results for %q", errBadTag, len(results), sql)
	}
	return results[0].CommandTag, results[0].Err
}

// checkTag returns errBadTag unless tag is want.
func checkTag(tag pgconn.CommandTag, want string) error {
	if tag.String() != want {
		return fmt.Errorf("%w: server answered %q, want %q", errBadTag, tag.String(), want)
	}
	return nil
}

// discardTimeout bounds the Terminate message sent when a connection is
// dropped.
const discardTimeout = time.Second

// discard closes c and removes it from its pool. Used whenever the state of
// the session is not known to be clean: the server then ends the session,
// rolling back any transaction still open on it (a prepared transaction
// survives; that is the point of preparing).
func discard(c *pgxpool.Conn) {
	ctx, cancel := context.WithTimeout(context.Background(), discardTimeout)
	defer cancel()
	_ = c.Conn().Close(ctx)
	c.Release() // the pool destroys a closed connection instead of keeping it
}

// release returns c to its pool if it is idle outside any transaction, and
// discards it otherwise. pgxpool makes the same check, but the guarantee
// that no session in a transaction (open, aborted or busy) is ever reused is
// ours to keep, so it is made here explicitly.
func release(c *pgxpool.Conn) {
	pc := c.Conn().PgConn()
	if pc.IsClosed() || pc.IsBusy() || pc.TxStatus() != 'I' {
		discard(c)
		return
	}
	c.Release()
}

// finishConn releases c after a statement that ended with err: a session
// that answered (with success or an ERROR) is kept if it is idle; one whose
// statement may still be running, or broke, is dropped.
func finishConn(c *pgxpool.Conn, err error) {
	if err != nil {
		if f, _ := fateOf(err); f != answered {
			discard(c)
			return
		}
	}
	release(c)
}
