// Package strand leaves prepared branches behind on real databases, the way
// a coordinator that crashed after phase 1 would: tests of recovery and of
// the CLI use it to set up in-doubt state.
package strand

import (
	"context"
	"fmt"
	"time"

	"github.com/xabridge/xabridge/drivers"
	"github.com/xabridge/xabridge/mysql"
	"github.com/xabridge/xabridge/postgres"
)

// enlister hands an adapter the branch begun for one XID.
type enlister struct {
	xid    drivers.XID
	branch drivers.Branch
}

func (e *enlister) Enlist(ctx context.Context, r drivers.Resource) (drivers.Branch, error) {
	if e.branch == nil {
		b, err := r.Begin(ctx, e.xid)
		if err != nil {
			return nil, err
		}
		e.branch = b
	}
	return e.branch, nil
}

// Prepare begins a branch with xid on r, runs stmts in it, prepares it and
// closes its connection, leaving the branch prepared.
func Prepare(ctx context.Context, r drivers.Resource, xid drivers.XID, stmts ...string) error {
	e := &enlister{xid: xid}
	var exec func(string) error
	switch res := r.(type) {
	case *postgres.Resource:
		h, err := res.Enlist(ctx, e)
		if err != nil {
			return err
		}
		exec = func(q string) error { _, err := h.Exec(ctx, q); return err }
	case *mysql.Resource:
		h, err := res.Enlist(ctx, e)
		if err != nil {
			return err
		}
		exec = func(q string) error { _, err := h.ExecContext(ctx, q); return err }
	default:
		return fmt.Errorf("strand: unsupported resource type %T", r)
	}
	for _, q := range stmts {
		if err := exec(q); err != nil {
			_ = e.branch.Rollback(ctx)
			_ = e.branch.Close()
			return err
		}
	}
	v, err := e.branch.Prepare(ctx)
	if err != nil {
		_ = e.branch.Close()
		return err
	}
	if v != drivers.VoteCommit {
		_ = e.branch.Close()
		return fmt.Errorf("strand: branch voted %v; give it a statement that writes", v)
	}
	return e.branch.Close()
}

// GlobalID makes a global id for node that began at begin with the given
// deadline, millisecond-exact so it compares equal after a round trip.
func GlobalID(node string, begin, deadline time.Time, seq uint32) drivers.GlobalID {
	return drivers.MustGlobalID(node, begin.Truncate(time.Millisecond).UTC(), seq, deadline.Truncate(time.Millisecond).UTC())
}
