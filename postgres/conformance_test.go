package postgres_test

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"testing"

	"github.com/xabridge/xabridge/drivers"
	"github.com/xabridge/xabridge/drivers/drivertest"
)

func TestConformance(t *testing.T) {
	e := newEnv(t)
	drivertest.Run(t, drivertest.Harness{
		Resource: func(t *testing.T) drivers.Resource { return e.r },
		Exec: func(ctx context.Context, b drivers.Branch, sql string) error {
			h, err := handleOf(ctx, e.r, b)
			if err != nil {
				return err
			}
			_, err = h.Exec(ctx, sql)
			return err
		},
		SQL: func(t *testing.T, sql string) {
			t.Helper()
			if _, err := e.admin.Exec(context.Background(), sql); err != nil {
				t.Fatalf("%s: %v", sql, err)
			}
		},
		QueryInt: func(t *testing.T, sql string) int64 {
			t.Helper()
			var n int64
			if err := e.admin.QueryRow(context.Background(), sql).Scan(&n); err != nil {
				t.Fatalf("%s: %v", sql, err)
			}
			return n
		},
		PrepareForeign: func(t *testing.T) (string, func()) {
			gid := fmt.Sprintf("foreign-app-%016x", rand.Uint64())
			return gid, prepareRaw(t, e.url, gid)
		},
		Refuse: func(ctx context.Context, b drivers.Branch) error {
			h, err := handleOf(ctx, e.r, b)
			if err != nil {
				return err
			}
			if _, err := h.Exec(ctx, "SELECT 1/0"); err == nil {
				return errors.New("SELECT 1/0 succeeded")
			}
			return nil // the block is aborted now
		},
	})
	e.assertPoolClean()
}
