// Package chaos is fault injection only the crash tests need: prepared
// transactions of another application (made with plain SQL, ids not in
// xabridge's format) that recovery must never touch. The machinery the
// tests share with `xabridge selfcheck` (crash points, the workload child,
// recovery after a kill, the invariant check) is internal/crashcheck.
package chaos

import (
	"context"
	"database/sql/driver"
	"errors"
	"fmt"
	"time"

	"github.com/xabridge/xabridge/internal/bank"
	"github.com/xabridge/xabridge/internal/crashcheck"
)

// Foreign is a pair of prepared transactions that another application left
// on the two servers (made with plain SQL, ids not in xabridge's format).
// Recovery must never touch them; Intact checks it did not.
type Foreign struct {
	b     *bank.Bank
	table string
	gid   string // the PostgreSQL gid and the MySQL gtrid (formatID 1, no bqual)
}

// CreateForeign prepares one foreign transaction on each server, each
// inserting a row into its own table named table ([a-z][a-z0-9_]*, created
// if missing). Whoever creates them finishes them with Finish.
func CreateForeign(ctx context.Context, b *bank.Bank, table string) (*Foreign, error) {
	if !safeName(table) {
		return nil, fmt.Errorf("chaos: bad table name %q", table)
	}
	f := &Foreign{b: b, table: table, gid: "foreign-app-" + table}
	create := "CREATE TABLE IF NOT EXISTS " + table + " (k INT NOT NULL)"
	if _, err := b.PGPool.Exec(ctx, create); err != nil {
		return nil, fmt.Errorf("postgres: %w", err)
	}
	if _, err := b.MyDB.ExecContext(ctx, create); err != nil {
		return nil, fmt.Errorf("mysql: %w", err)
	}
	// PostgreSQL: the session is free again after PREPARE TRANSACTION.
	pc, err := b.PGPool.Acquire(ctx)
	if err != nil {
		return nil, fmt.Errorf("postgres: %w", err)
	}
	for _, q := range []string{"BEGIN", "INSERT INTO " + table + " VALUES (1)", "PREPARE TRANSACTION '" + f.gid + "'"} {
		if _, err := pc.Exec(ctx, q); err != nil {
			pc.Release()
			return nil, fmt.Errorf("postgres: %s: %w", q, err)
		}
	}
	pc.Release()
	// MariaDB keeps a prepared branch on its session: prepare, then
	// disconnect so it detaches (and never goes back to the pool dirty).
	mc, err := b.MyDB.Conn(ctx)
	if err != nil {
		return nil, fmt.Errorf("mysql: %w", err)
	}
	defer func() {
		_ = mc.Raw(func(any) error { return driver.ErrBadConn })
		_ = mc.Close()
	}()
	x := "'" + f.gid + "'"
	for _, q := range []string{"XA START " + x, "INSERT INTO " + table + " VALUES (1)", "XA END " + x, "XA PREPARE " + x} {
		if _, err := mc.ExecContext(ctx, q); err != nil {
			return nil, fmt.Errorf("mysql: %s: %w", q, err)
		}
	}
	return f, nil
}

func safeName(s string) bool {
	if s == "" || len(s) > 48 || s[0] < 'a' || s[0] > 'z' {
		return false
	}
	for _, c := range s {
		if !(c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '_') {
			return false
		}
	}
	return true
}

// Intact returns an error matching crashcheck.ErrForeignTouched unless
// both foreign transactions are still prepared (any other error: it could
// not tell). A nil Foreign has none: it is intact.
func (f *Foreign) Intact(ctx context.Context) error {
	if f == nil {
		return nil
	}
	var n int
	if err := f.b.PGPool.QueryRow(ctx, "SELECT count(*) FROM pg_prepared_xacts WHERE gid = $1", f.gid).Scan(&n); err != nil {
		return fmt.Errorf("postgres: %w", err)
	}
	if n != 1 {
		return fmt.Errorf("%w: %q is gone from PostgreSQL", crashcheck.ErrForeignTouched, f.gid)
	}
	ok, err := f.myPrepared(ctx)
	if err != nil {
		return err
	}
	if !ok {
		return fmt.Errorf("%w: %q is gone from MySQL", crashcheck.ErrForeignTouched, f.gid)
	}
	return nil
}

func (f *Foreign) myPrepared(ctx context.Context) (bool, error) {
	rows, err := f.b.MyDB.QueryContext(ctx, "XA RECOVER")
	if err != nil {
		return false, fmt.Errorf("mysql: %w", err)
	}
	defer rows.Close()
	found := false
	for rows.Next() {
		var format, gl, bl int64
		var data []byte
		if err := rows.Scan(&format, &gl, &bl, &data); err != nil {
			return false, fmt.Errorf("mysql: %w", err)
		}
		if format == 1 && bl == 0 && string(data) == f.gid {
			found = true
		}
	}
	return found, rows.Err()
}

// Finish rolls both foreign transactions back and drops their table.
func (f *Foreign) Finish(ctx context.Context) error {
	var errs []error
	if _, err := f.b.PGPool.Exec(ctx, "ROLLBACK PREPARED '"+f.gid+"'"); err != nil {
		errs = append(errs, fmt.Errorf("postgres: %w", err))
	}
	// The preparing session may still be detaching (XAER_NOTA meanwhile):
	// poll, bounded.
	deadline := time.Now().Add(10 * time.Second)
	for {
		_, err := f.b.MyDB.ExecContext(ctx, "XA ROLLBACK '"+f.gid+"'")
		if err == nil {
			break
		}
		if time.Now().After(deadline) {
			errs = append(errs, fmt.Errorf("mysql: %w", err))
			break
		}
		select {
		case <-ctx.Done():
			return errors.Join(append(errs, ctx.Err())...)
		case <-time.After(100 * time.Millisecond):
		}
	}
	for _, q := range []string{"DROP TABLE IF EXISTS " + f.table} {
		if _, err := f.b.PGPool.Exec(ctx, q); err != nil {
			errs = append(errs, fmt.Errorf("postgres: %w", err))
		}
		if _, err := f.b.MyDB.ExecContext(ctx, q); err != nil {
			errs = append(errs, fmt.Errorf("mysql: %w", err))
		}
	}
	return errors.Join(errs...)
}

// ID returns the foreign transactions' id (PostgreSQL gid, MySQL gtrid).
func (f *Foreign) ID() string { return f.gid }
