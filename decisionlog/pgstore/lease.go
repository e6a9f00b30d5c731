package pgstore

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/xabridge/xabridge/decisionlog"
	"github.com/xabridge/xabridge/drivers"
)

// lease is one node lease this store holds: its own node's, or a claimed
// one.
type lease struct {
	node string

	mu    sync.Mutex
	epoch int64
	// validUntil is the local, monotonic estimate of the end of the lease:
	// local start of the last successful renewal + TTL - Margin. The
	// database's expiry is later (it added the TTL to its own now, which
	// came after our start), unless clocks drift by more than Margin.
	validUntil time.Time
	lost       error         // set once lost: why
	lostCh     chan struct{} // closed when lost
}

func newLease(node string, epoch int64, start time.Time, ttl, margin time.Duration) *lease {
	return &lease{node: node, epoch: epoch, validUntil: start.Add(ttl - margin), lostCh: make(chan struct{})}
}

// usable returns the epoch to write under, or why not.
func (l *lease) usable(now time.Time) (int64, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.lost != nil {
		return 0, l.lost
	}
	if !now.Before(l.validUntil) {
		l.loseLocked(&LeaseLostError{Node: l.node, Epoch: l.epoch,
			Why: "not renewed in time (the store's local estimate of its expiry passed)"})
		return 0, l.lost
	}
	return l.epoch, nil
}

func (l *lease) loseLocked(err error) {
	if l.lost == nil {
		l.lost = err
		close(l.lostCh)
	}
}

// markLost marks node's lease lost if this store still holds it at epoch.
func (s *Store) markLost(node string, epoch int64, why error) {
	s.lmu.Lock()
	l := s.leases[node]
	s.lmu.Unlock()
	if l == nil {
		return
	}
	l.mu.Lock()
	if l.epoch == epoch {
		l.loseLocked(why)
	}
	l.mu.Unlock()
}

// leaseFor returns the lease this store holds on node.
func (s *Store) leaseFor(node, what string) (*lease, error) {
	s.lmu.Lock()
	l := s.leases[node]
	s.lmu.Unlock()
	if l == nil {
		return nil, fmt.Errorf("pgstore: %s: node %s: %w", what, node, ErrNotHolder)
	}
	return l, nil
}

// Epoch returns the epoch of the store's own lease (the latest acquired,
// even if it is lost meanwhile).
func (s *Store) Epoch() int64 {
	l, _ := s.leaseFor(s.node, "")
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.epoch
}

// Lost returns a channel closed when the store's current lease on its own
// node is lost (by a refused write, a failed renewal or the local estimate
// running out). After Reacquire, call Lost again for the new lease.
func (s *Store) Lost() <-chan struct{} {
	l, _ := s.leaseFor(s.node, "")
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.lostCh
}

// LeaseErr returns why the store's own lease was lost (an error matching
// ErrLeaseLost), or nil while it holds it.
func (s *Store) LeaseErr() error {
	l, _ := s.leaseFor(s.node, "")
	_, err := l.usable(time.Now())
	return err
}

func ttlMicros(d time.Duration) int64 { return d.Microseconds() }

const (
	// acquireSQL takes node's lease: a new row at epoch 1, or the existing
	// row at epoch + 1 if it has expired by the database's clock. Two
	// claimants of one expired row serialise on it; the second re-evaluates
	// the WHERE on the winner's row, finds it live and returns nothing.
	acquireSQL = `
INSERT INTO {nodes} AS n (node, epoch, holder_node, host, pid, started_at, incarnation,
	acquired_at, renewed_at, expires_at)
VALUES ($1, 1, $2, $3, $4, $5, $6, clock_timestamp(), clock_timestamp(),
	clock_timestamp() + $7::bigint * interval '1 microsecond')
ON CONFLICT (node) DO UPDATE SET epoch = n.epoch + 1, holder_node = excluded.holder_node,
	host = excluded.host, pid = excluded.pid, started_at = excluded.started_at,
	incarnation = excluded.incarnation, acquired_at = excluded.acquired_at,
	renewed_at = excluded.renewed_at, expires_at = excluded.expires_at
WHERE n.expires_at <= clock_timestamp()
RETURNING n.epoch`

	// claimSQL takes an existing, expired lease of another node (epoch + 1).
	claimSQL = `
UPDATE {nodes} n SET epoch = n.epoch + 1, holder_node = $2, host = $3, pid = $4, started_at = $5,
	incarnation = $6, acquired_at = clock_timestamp(), renewed_at = clock_timestamp(),
	expires_at = clock_timestamp() + $7::bigint * interval '1 microsecond'
WHERE n.node = $1 AND n.expires_at <= clock_timestamp()
RETURNING n.epoch`

	// renewSQL extends a lease this store holds, only while it is live: an
	// expired lease is never revived (a peer may be about to claim it).
	renewSQL = `
UPDATE {nodes} SET renewed_at = clock_timestamp(),
	expires_at = clock_timestamp() + $4::bigint * interval '1 microsecond'
WHERE node = $1 AND epoch = $2 AND incarnation = $3 AND expires_at > clock_timestamp()
RETURNING epoch`

	// releaseSQL ends a lease this store holds now, so that a restart or a
	// peer need not wait for its expiry. A live lease released sets
	// renewed_at and expires_at to the same instant: a renewal always puts
	// expires_at a TTL after renewed_at, so the equality tells a release
	// (NodeInfo.Released) from a lease that lapsed because its holder
	// stopped renewing (it died or was cut off). Released too late (once
	// expired) it is left as it lapsed.
	releaseSQL = `
WITH now AS (SELECT clock_timestamp() AS t)
UPDATE {nodes} SET renewed_at = CASE WHEN expires_at > now.t THEN now.t ELSE renewed_at END,
	expires_at = least(expires_at, now.t)
FROM now
WHERE node = $1 AND epoch = $2 AND incarnation = $3`

	nodeSQL = `
SELECT node, epoch, holder_node, host, pid, started_at, incarnation, acquired_at, renewed_at,
	expires_at, clock_timestamp() FROM {nodes} WHERE node = $1`

	nodesSQL = `
SELECT node, epoch, holder_node, host, pid, started_at, incarnation, acquired_at, renewed_at,
	expires_at, clock_timestamp() FROM {nodes} ORDER BY node`
)

func (s *Store) prepareSQL() {
	n := s.names
	s.sqlBatch, s.sqlLookup, s.sqlPending = n.sql(batchSQL), n.sql(lookupSQL), n.sql(pendingSQL)
	s.sqlSweep, s.sqlSweepActions = n.sql(sweepSQL), n.sql(sweepActionsSQL)
	s.sqlAcquire, s.sqlClaim, s.sqlRenew, s.sqlRelease = n.sql(acquireSQL), n.sql(claimSQL), n.sql(renewSQL), n.sql(releaseSQL)
	s.sqlNode, s.sqlNodes = n.sql(nodeSQL), n.sql(nodesSQL)
}

// acquire takes the store's own lease (Open, Reacquire).
func (s *Store) acquire(ctx context.Context) (*lease, error) {
	start := time.Now()
	var epoch int64
	err := s.pool.QueryRow(ctx, s.sqlAcquire, s.node, s.me.Node, s.me.Host, s.me.PID, s.me.Started,
		s.me.Incarnation, ttlMicros(s.opts.LeaseTTL)).Scan(&epoch)
	if isNoRows(err) {
		return nil, s.leasedError(ctx, s.node)
	}
	if err != nil {
		return nil, fmt.Errorf("pgstore: acquire lease on node %s: %w", s.node, err)
	}
	return newLease(s.node, epoch, start, s.opts.LeaseTTL, s.opts.Margin), nil
}

// acquireOwn is acquire for Open: while a claimant (another node's
// process taking this node over: a replica or an operator command) holds
// the node's lease, it waits, up to Options.ClaimWait and while ctx lasts,
// for the claimant to release it or for its claim to lapse, and tries
// again; the node's own lease held by a live process of this node is
// refused at once. Without the wait, a replica restarted while a peer
// settles what it left would fail to start.
func (s *Store) acquireOwn(ctx context.Context) (*lease, error) {
	deadline := time.Now().Add(s.opts.ClaimWait)
	poll := min(max(s.opts.LeaseTTL/20, 10*time.Millisecond), 200*time.Millisecond)
	for {
		l, err := s.acquire(ctx)
		var le *LeasedError
		if err == nil || !errors.As(err, &le) || le.Holder.Node == s.node || s.opts.ClaimWait < 0 {
			return l, err
		}
		left := time.Until(deadline)
		if left <= 0 {
			return nil, fmt.Errorf("%w (waited %s for the claimant to finish)", err, s.opts.ClaimWait)
		}
		wait := min(poll, left)
		if le.ExpiresIn > 0 && le.ExpiresIn+time.Millisecond < wait {
			wait = le.ExpiresIn + time.Millisecond
		}
		if h := s.opts.hooks; h != nil && h.claimWait != nil {
			h.claimWait(le)
		}
		t := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			t.Stop()
			return nil, fmt.Errorf("%w (gave up waiting for the claimant: %w)", err, ctx.Err())
		case <-t.C:
		}
	}
}

// leasedError reads who holds node's lease, for a refusal.
func (s *Store) leasedError(ctx context.Context, node string) error {
	info, err := s.NodeInfo(ctx, node)
	if isNoRows(err) {
		return fmt.Errorf("pgstore: node %s: %w", node, ErrUnknownNode)
	}
	if err != nil {
		return fmt.Errorf("pgstore: node %s is leased (reading its holder failed: %w): %w", node, err, ErrNodeLeased)
	}
	return &LeasedError{Node: node, Epoch: info.Epoch, Holder: info.Holder, ExpiresAt: info.ExpiresAt, ExpiresIn: info.ExpiresIn}
}

// Reacquire takes the store's own lease again after it was lost, under a
// new epoch. It succeeds only once the old lease has expired by the
// database's clock (so a peer's takeover can come first); until then it
// returns a *LeasedError (ErrNodeLeased) saying until when. While the lease
// is held it returns the current epoch and does nothing.
//
// A store fail-stopped by a write of unknown outcome (decisionlog.ErrLogFailed)
// has given its lease up; Reacquire is how it resumes: the new epoch fences
// any late write of the failed one, so the failure is cleared.
func (s *Store) Reacquire(ctx context.Context) (int64, error) {
	s.qmu.Lock()
	closed := s.closed
	s.qmu.Unlock()
	if closed {
		return 0, decisionlog.ErrLogClosed
	}
	old, _ := s.leaseFor(s.node, "")
	old.mu.Lock()
	lost, epoch := old.lost, old.epoch
	old.mu.Unlock()
	if lost == nil {
		if _, err := old.usable(time.Now()); err == nil {
			if err := s.failure(); err != nil {
				return 0, err // cannot happen: a failure gives the lease up
			}
			return epoch, nil
		}
	}
	l, err := s.acquire(ctx)
	if err != nil {
		return 0, err
	}
	s.lmu.Lock()
	s.leases[s.node] = l
	s.lmu.Unlock()
	s.qmu.Lock()
	if s.failed != nil && s.failedEpoch < l.epoch {
		s.failed, s.failedEpoch = nil, 0
	}
	s.qmu.Unlock()
	return l.epoch, nil
}

func (s *Store) writable() error {
	s.qmu.Lock()
	defer s.qmu.Unlock()
	if s.closed {
		return decisionlog.ErrLogClosed
	}
	return s.failed
}

// Claim takes the expired lease of another node under epoch + 1 (a
// compare-and-set in the database: of several claimants exactly one wins).
// From then on the store renews it with its own, and NodeLog (ForNode)
// writes aborts, actions and ends for that node's transactions under the
// new epoch, which the old holder's late writes can no longer match. A
// live lease is refused with a *LeasedError (ErrNodeLeased); a node never
// seen with ErrUnknownNode. Release gives the lease back.
func (s *Store) Claim(ctx context.Context, node string) (int64, error) {
	if err := drivers.ValidateNodeID(node); err != nil {
		return 0, fmt.Errorf("pgstore: claim: %w", err)
	}
	if node == s.node {
		return 0, fmt.Errorf("pgstore: claim of the store's own node %s: use Reacquire", node)
	}
	if err := s.writable(); err != nil {
		return 0, err
	}
	s.lmu.Lock()
	_, have := s.leases[node]
	s.lmu.Unlock()
	if have {
		return 0, fmt.Errorf("pgstore: claim of node %s: this store already holds it", node)
	}
	start := time.Now()
	var epoch int64
	err := s.pool.QueryRow(ctx, s.sqlClaim, node, s.me.Node, s.me.Host, s.me.PID, s.me.Started,
		s.me.Incarnation, ttlMicros(s.opts.LeaseTTL)).Scan(&epoch)
	if isNoRows(err) {
		return 0, s.leasedError(ctx, node)
	}
	if err != nil {
		return 0, fmt.Errorf("pgstore: claim node %s: %w", node, err)
	}
	s.lmu.Lock()
	s.leases[node] = newLease(node, epoch, start, s.opts.LeaseTTL, s.opts.Margin)
	s.lmu.Unlock()
	return epoch, nil
}

// Holds returns nil while this store holds node's lease (its own, or one
// it claimed) by its local estimate, which ends Margin before the
// database's expiry; otherwise why not (ErrNotHolder, or an error matching
// ErrLeaseLost). It is for actions the database cannot check against the
// epoch (ending a dead holder's sessions in a participant): take them only
// right after Holds said yes.
func (s *Store) Holds(node string) error {
	l, err := s.leaseFor(node, "holds")
	if err != nil {
		return err
	}
	_, err = l.usable(time.Now())
	return err
}

// Release gives back a lease this store claimed: it expires now (by the
// database's clock), so the node's own process can take it back at once.
// End records queued for the node are written first (while ctx lasts):
// released with them still queued, they would be refused by the lease
// check, and the node's finished decisions would look pending again.
func (s *Store) Release(ctx context.Context, node string) error {
	if node == s.node {
		return fmt.Errorf("pgstore: release of the store's own node %s: use Close", node)
	}
	l, err := s.leaseFor(node, "release")
	if err != nil {
		return err
	}
	flushed := s.flushEnds() // not held by EndDelay meanwhile
	s.waitEnds(ctx, node)
	flushed()
	if err := s.release(ctx, l); err != nil {
		return err
	}
	s.lmu.Lock()
	if s.leases[node] == l {
		delete(s.leases, node)
	}
	s.lmu.Unlock()
	return nil
}

func (s *Store) release(ctx context.Context, l *lease) error {
	l.mu.Lock()
	epoch := l.epoch
	l.loseLocked(&LeaseLostError{Node: l.node, Epoch: epoch, Why: "released"})
	l.mu.Unlock()
	if _, err := s.pool.Exec(ctx, s.sqlRelease, l.node, epoch, s.me.Incarnation); err != nil {
		return fmt.Errorf("pgstore: release lease on node %s epoch %d: %w", l.node, epoch, err)
	}
	return nil
}

// renewLoop renews every lease the store holds every RenewEvery, and marks
// a lease lost when its local estimate runs out first.
func (s *Store) renewLoop() {
	defer s.bgDone.Done()
	t := time.NewTimer(s.opts.RenewEvery)
	defer t.Stop()
	for {
		select {
		case <-s.ctx.Done():
			return
		case <-t.C:
		}
		next := s.opts.RenewEvery
		if !s.renewAll() {
			// Retry soon, well within what is left of the lease.
			next = min(next, max(s.opts.Margin/2, 10*time.Millisecond))
		}
		t.Reset(next)
	}
}

// renewAll renews every held, not lost lease; false if any renewal failed
// for a reason worth retrying.
func (s *Store) renewAll() bool {
	s.lmu.Lock()
	held := make([]*lease, 0, len(s.leases))
	for _, l := range s.leases {
		held = append(held, l)
	}
	s.lmu.Unlock()
	ok := true
	for _, l := range held {
		if !s.renew(l) {
			ok = false
		}
	}
	return ok
}

func (s *Store) renew(l *lease) bool {
	start := time.Now()
	epoch, err := l.usable(start)
	if err != nil {
		return true // lost: nothing to renew (Reacquire or Claim start again)
	}
	// Never wait past the local estimate: a renewal answered after it
	// would extend a lease the store has already stopped trusting.
	l.mu.Lock()
	deadline := l.validUntil
	l.mu.Unlock()
	ctx, cancel := context.WithDeadline(s.ctx, deadline)
	defer cancel()
	if h := s.opts.hooks; h != nil && h.renew != nil {
		err = h.renew()
	}
	var got int64
	if err == nil {
		err = s.pool.QueryRow(ctx, s.sqlRenew, l.node, epoch, s.me.Incarnation, ttlMicros(s.opts.LeaseTTL)).Scan(&got)
	}
	switch {
	case err == nil:
		s.stats.renewals.Add(1)
		l.mu.Lock()
		if l.epoch == epoch && l.lost == nil {
			l.validUntil = start.Add(s.opts.LeaseTTL - s.opts.Margin)
		}
		l.mu.Unlock()
		return true
	case isNoRows(err):
		// The database says we no longer hold it: another epoch, or expired.
		s.stats.renewFailures.Add(1)
		s.markLost(l.node, epoch, &LeaseLostError{Node: l.node, Epoch: epoch,
			Why: "renewal refused: another epoch holds the lease, or it expired by the database's clock"})
		return true
	default:
		s.stats.renewFailures.Add(1)
		if s.ctx.Err() != nil {
			return true
		}
		// Unreachable store: keep trying while the estimate lasts; usable
		// marks the lease lost when it runs out.
		_, _ = l.usable(time.Now())
		return false
	}
}

// NodeState is what the store says about a node's lease.
type NodeState string

// Lease states.
const (
	NodeLive      NodeState = "live"       // held by the node's own process, not expired
	NodeTakenOver NodeState = "taken-over" // held by a claimant, not expired
	NodeExpired   NodeState = "expired"    // expired or released: anyone may claim it
)

// NodeInfo is one node's lease, as the database sees it.
type NodeInfo struct {
	Node       string
	Epoch      int64
	Holder     Holder
	AcquiredAt time.Time
	RenewedAt  time.Time
	ExpiresAt  time.Time
	// ExpiresIn is ExpiresAt minus the database's now (negative once
	// expired).
	ExpiresIn time.Duration
	State     NodeState
	// Released: the holder gave the lease back while it was live (a clean
	// Close or Release) rather than letting it lapse; the lease is expired
	// all the same, and anyone may take it.
	Released bool
}

// GivenBack reports whether the node's lease was handed back rather than
// lapsing with its own holder: released by the node's process stopping
// cleanly, or held last by a claimant (which releases when it is done).
// Such a node needs a takeover only if something of it is left.
func (ni NodeInfo) GivenBack() bool {
	return ni.Holder.Node != ni.Node || ni.Released
}

func scanNode(row interface{ Scan(...any) error }) (NodeInfo, error) {
	var (
		ni  NodeInfo
		now time.Time
		pid int32
	)
	err := row.Scan(&ni.Node, &ni.Epoch, &ni.Holder.Node, &ni.Holder.Host, &pid, &ni.Holder.Started,
		&ni.Holder.Incarnation, &ni.AcquiredAt, &ni.RenewedAt, &ni.ExpiresAt, &now)
	if err != nil {
		return NodeInfo{}, err
	}
	ni.Holder.PID = int(pid)
	ni.ExpiresIn = ni.ExpiresAt.Sub(now)
	ni.Released = ni.ExpiresAt.Equal(ni.RenewedAt)
	switch {
	case ni.ExpiresIn <= 0:
		ni.State = NodeExpired
	case ni.Holder.Node != ni.Node:
		ni.State = NodeTakenOver
	default:
		ni.State = NodeLive
	}
	return ni, nil
}

// NodeInfo returns one node's lease (pgx.ErrNoRows if it never had one).
func (s *Store) NodeInfo(ctx context.Context, node string) (NodeInfo, error) {
	return scanNode(s.pool.QueryRow(ctx, s.sqlNode, node))
}

// Nodes returns every node lease in the store, by node id.
func (s *Store) Nodes(ctx context.Context) ([]NodeInfo, error) {
	rows, err := s.pool.Query(ctx, s.sqlNodes)
	if err != nil {
		return nil, fmt.Errorf("pgstore: nodes: %w", err)
	}
	defer rows.Close()
	var out []NodeInfo
	for rows.Next() {
		ni, err := scanNode(rows)
		if err != nil {
			return nil, fmt.Errorf("pgstore: nodes: %w", err)
		}
		out = append(out, ni)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("pgstore: nodes: %w", err)
	}
	return out, nil
}

func isFenced(err error) bool { return errors.Is(err, decisionlog.ErrFenced) }

// waitEnds waits until no End record of node is queued or being written,
// or ctx ends. The writer clears them within a batch (written or dropped).
func (s *Store) waitEnds(ctx context.Context, node string) {
	t := time.NewTicker(2 * time.Millisecond)
	defer t.Stop()
	for s.endsQueued(node) {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// endsQueued reports whether an End record of node is queued or in flight.
func (s *Store) endsQueued(node string) bool {
	s.cmu.Lock()
	defer s.cmu.Unlock()
	for key := range s.ending {
		if g, err := drivers.ParseGlobalID(key); err == nil && g.Node() == node {
			return true
		}
	}
	return false
}
