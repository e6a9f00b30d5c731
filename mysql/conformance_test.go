package mysql

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"testing"
	"time"

	"github.com/xabridge/xabridge/drivers"
	"github.com/xabridge/xabridge/drivers/drivertest"
)

func TestConformance(t *testing.T) {
	e := newEnv(t, 20)
	refuseTable := e.table("refuse")
	var refuseRow int64 = 1000
	drivertest.Run(t, drivertest.Harness{
		Resource: func(*testing.T) drivers.Resource { return e.r },
		Exec: func(ctx context.Context, b drivers.Branch, q string) error {
			_, err := b.(*branch).user.ExecContext(ctx, q)
			return err
		},
		SQL:      func(t *testing.T, q string) { e.sqlExec(q) },
		QueryInt: func(t *testing.T, q string) int64 { return e.queryInt(q) },
		PrepareForeign: func(t *testing.T) (string, func()) {
			gtrid := fmt.Sprintf("foreign-conf-%08x", rand.Uint32())
			f := foreignXID{sql: "'" + gtrid + "'", gtrid: gtrid, formatID: 1}
			return prepareForeign(t, e, f), func() { rollbackForeign(t, e, f) }
		},
		Refuse: func(ctx context.Context, b drivers.Branch) error {
			refuseRow += 10
			_, err := deadlock(ctx, e, b.(*branch), refuseTable, refuseRow)
			return err
		},
		SessionBound: true,
	})
}

// foreignXID is an XA xid another application might use.
type foreignXID struct {
	sql          string // as written in XA statements
	gtrid, bqual string
	formatID     int64
}

// id is how Recover reports it.
func (f foreignXID) id() string {
	return fmt.Sprintf("X'%x',X'%x',%d", f.gtrid, f.bqual, f.formatID)
}

// prepareForeign prepares an XA transaction with plain SQL on a connection
// of its own, as another application would, then closes that connection so
// the branch detaches. It returns the id Recover reports for it.
func prepareForeign(t *testing.T, e *env, f foreignXID) string {
	t.Helper()
	ctx := ctxT(t)
	conn, err := e.admin.Conn(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for _, q := range []string{"XA START " + f.sql, "XA END " + f.sql, "XA PREPARE " + f.sql} {
		if _, err := conn.ExecContext(ctx, q); err != nil {
			t.Fatalf("%s: %v", q, err)
		}
	}
	owner := connID(t, conn)
	discard(conn)
	eventually(t, 5*time.Second, "the foreign branch's session to end", func() bool { return !e.sessionListed(owner) })
	return f.id()
}

func rollbackForeign(t *testing.T, e *env, f foreignXID) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	// 1402: MariaDB rolled the empty branch back when its session ended.
	if _, err := e.admin.ExecContext(ctx, "XA ROLLBACK "+f.sql); err != nil && !isNumber(err, erXARBRollback) {
		t.Errorf("cleanup: XA ROLLBACK %s: %v", f.sql, err)
	}
}

// deadlock makes b the victim of a deadlock with a local transaction on
// another session, which leaves b's XA transaction ROLLBACK ONLY. InnoDB
// rolls back the lighter transaction, so the other side first inserts many
// rows. The two crossing updates run concurrently: whichever closes the
// cycle, the victim is chosen by weight.
// It returns the branch's error for the deadlocked statement.
func deadlock(ctx context.Context, e *env, b *branch, table string, base int64) (branchErr, err error) {
	berr, err := deadlockWith(ctx, e, b, table, base, func(q string) error {
		_, err := b.user.ExecContext(ctx, q)
		return err
	})
	if err == nil && !errors.Is(berr, drivers.ErrRetryable) {
		return berr, fmt.Errorf("branch update: want a retryable deadlock error, got %v", berr)
	}
	return berr, err
}

// deadlockWith is deadlock with the branch's crossing UPDATE run by cross.
func deadlockWith(ctx context.Context, e *env, b *branch, table string, base int64, cross func(q string) error) (branchErr, err error) {
	other, err := e.admin.Conn(ctx)
	if err != nil {
		return nil, err
	}
	defer discard(other) // holds a local transaction: never pool it
	if _, err := other.ExecContext(ctx, "BEGIN"); err != nil {
		return nil, err
	}
	for i := range int64(50) {
		if _, err := other.ExecContext(ctx, fmt.Sprintf("INSERT INTO %s VALUES (%d, 0)", table, base*100+i)); err != nil {
			return nil, err
		}
	}
	a, c := base, base+1
	if _, err := e.admin.ExecContext(ctx, fmt.Sprintf("INSERT INTO %s VALUES (%d, 0), (%d, 0)", table, a, c)); err != nil {
		return nil, err
	}
	if _, err := other.ExecContext(ctx, fmt.Sprintf("UPDATE %s SET v = 1 WHERE id = %d", table, c)); err != nil {
		return nil, err
	}
	if _, err := b.user.ExecContext(ctx, fmt.Sprintf("UPDATE %s SET v = 2 WHERE id = %d", table, a)); err != nil {
		return nil, fmt.Errorf("branch update: %w", err)
	}
	done := make(chan error, 1)
	go func() {
		_, err := other.ExecContext(ctx, fmt.Sprintf("UPDATE %s SET v = 1 WHERE id = %d", table, a))
		done <- err
	}()
	berr := cross(fmt.Sprintf("UPDATE %s SET v = 2 WHERE id = %d", table, c))
	if oerr := <-done; oerr != nil {
		return berr, fmt.Errorf("the other session's update failed (was it the victim?): %w", oerr)
	}
	return berr, nil
}
