package pgstore

import (
	"context"
	"fmt"
	"time"
)

// sweepBatch is the most rows one sweep statement deletes: short
// transactions, so that the sweep never holds many row locks or a long
// snapshot beside the decisions being written.
const sweepBatch = 1000

const (
	// sweepSQL deletes up to sweepBatch finished decision rows of node (and
	// their actions): commit decisions ended more than $2 µs ago, abort rows
	// more than $3 µs past their deadline, both by the database's clock.
	// Rows with a heuristic action are kept (they are reported). SKIP
	// LOCKED: a row being written is left for the next sweep.
	sweepSQL = `
WITH victims AS (
	SELECT d.gtrid FROM {decisions} d
	WHERE d.node = $1
	  AND (d.ended_at < clock_timestamp() - $2::bigint * interval '1 microsecond'
	       OR d.state = 'A' AND d.deadline < clock_timestamp() - $3::bigint * interval '1 microsecond')
	  AND NOT EXISTS (SELECT 1 FROM {actions} a WHERE a.gtrid = d.gtrid AND a.heuristic)
	LIMIT 1000
	FOR UPDATE SKIP LOCKED
), gone_actions AS (
	DELETE FROM {actions} a USING victims v WHERE a.gtrid = v.gtrid
)
DELETE FROM {decisions} d USING victims v WHERE d.gtrid = v.gtrid`

	// sweepActionsSQL deletes up to sweepBatch non-heuristic actions of node
	// older than $2 µs whose transaction has no decision row.
	sweepActionsSQL = `
DELETE FROM {actions} WHERE id IN (
	SELECT a.id FROM {actions} a
	WHERE a.node = $1 AND NOT a.heuristic
	  AND a.written_at < clock_timestamp() - $2::bigint * interval '1 microsecond'
	  AND NOT EXISTS (SELECT 1 FROM {decisions} d WHERE d.gtrid = a.gtrid)
	LIMIT 1000)`
)

// Sweep deletes finished rows of every node this store holds a lease on,
// in statements of at most 1000 rows: ended commit decisions older than
// EndedRetention, abort rows past their deadline by AbortRetention, and
// actions without a decision row older than ActionRetention. Rows with a
// heuristic action are kept. It returns how many rows it deleted. The
// sweeper calls it every SweepEvery.
func (s *Store) Sweep(ctx context.Context) (int64, error) {
	s.lmu.Lock()
	nodes := make([]string, 0, len(s.leases))
	for n, l := range s.leases {
		if _, err := l.usable(time.Now()); err == nil {
			nodes = append(nodes, n)
		}
	}
	s.lmu.Unlock()
	var total int64
	for _, node := range nodes {
		for _, q := range []struct {
			sql  string
			args []any
		}{
			{s.sqlSweep, []any{node, ttlMicros(s.opts.EndedRetention), ttlMicros(s.opts.AbortRetention)}},
			{s.sqlSweepActions, []any{node, ttlMicros(s.opts.ActionRetention)}},
		} {
			for {
				tag, err := s.pool.Exec(ctx, q.sql, q.args...)
				if err != nil {
					return total, fmt.Errorf("pgstore: sweep node %s: %w", node, err)
				}
				n := tag.RowsAffected()
				total += n
				s.stats.swept.Add(n)
				if n < sweepBatch {
					break
				}
			}
		}
	}
	return total, nil
}

func (s *Store) sweepLoop() {
	defer s.bgDone.Done()
	t := time.NewTicker(s.opts.SweepEvery)
	defer t.Stop()
	for {
		select {
		case <-s.ctx.Done():
			return
		case <-t.C:
			// An error is retried at the next tick; nothing depends on it.
			_, _ = s.Sweep(s.ctx)
		}
	}
}
