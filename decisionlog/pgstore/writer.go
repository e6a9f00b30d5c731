package pgstore

import (
	"context"
	"fmt"
	"math/bits"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/xabridge/xabridge/decisionlog"
	"github.com/xabridge/xabridge/drivers"
)

type kind byte

const (
	kindCommit kind = 'C'
	kindAbort  kind = 'A'
	kindRecord kind = 'R'
	kindEnd    kind = 'E'
)

func (k kind) String() string {
	switch k {
	case kindCommit:
		return "commit"
	case kindAbort:
		return "abort"
	case kindRecord:
		return "record"
	case kindEnd:
		return "end"
	}
	return "invalid"
}

// request is one write handed to the writer goroutine.
type request struct {
	kind  kind
	g     drivers.GlobalID
	key   string
	epoch int64 // of the lease on g's node when the request was made
	parts string
	at    time.Time
	// Action fields (abort, record).
	resource, op, reason, actor string
	branch                      uint8
	heuristic                   bool
	done                        chan error // nil for End, which nobody waits for
}

// batchSQL is the whole of one batch: one statement, so one round trip and
// one commit (group commit: its WAL flush covers every decision in it).
//
// Each request row carries its lease (node, epoch), checked against the
// nodes table in the statement: this epoch, not expired by the database's
// clock (now, clock_timestamp(), read once per lease row). The check reads
// the statement's snapshot and does not lock the lease row: a Claim that
// commits while this statement runs is not seen, so a commit decision can
// land just after its lease was claimed. That is safe, and it is why rule 11
// has the claimant record an abort before it rolls anything back: the abort
// and the late commit collide on the gtrid's primary key, the abort waits
// for the commit and reports it (ErrAlreadyCommitted: the claimant drives
// it to commit), or the commit finds the abort (ErrFenced). Locking the
// lease row FOR SHARE in every batch would close that window too, at the
// price of a tuple lock (and its WAL) per batch on the one row every batch
// of the node touches: in our runs it cost up to half the throughput at 32
// committers (noisy, on a shared machine), for no safety gained.
//
// Commit and abort rows exclude each other by the primary key on gtrid.
// ON CONFLICT DO UPDATE (a no-op update) rather than DO NOTHING: it waits
// for a concurrent writer of the same gtrid (a claimant's abort against a
// late commit) and RETURNs the row that won, even one committed after this
// statement's snapshot. A batch never holds one gtrid twice (the writer
// splits batches there), which DO UPDATE requires.
//
// The rows of the decisions table are only ever reached through its primary
// key (= ANY of the batch's gtrids, $14 those of the End requests): a join
// on the CTE would let the planner scan every pending row per batch.
//
// The result has one row per request: whether its lease held, the
// database's clock for the fence, the row's state after the statement
// (commit, abort) and before it (prior, from the snapshot: a repeated
// decision). $15, the fence's clock, is always NULL (the database's
// clock_timestamp()) but in the conformance suite, whose fence tests set
// the clock (testHooks.fenceNow); the lease is always checked on the
// database's clock.
const batchSQL = `
WITH req AS (
	SELECT * FROM unnest($1::text[], $2::bigint[], $3::text[], $4::text[], $5::text[], $6::timestamptz[],
		$7::timestamptz[], $8::text[], $9::int[], $10::text[], $11::text[], $12::text[], $13::bool[])
		WITH ORDINALITY AS r(node, epoch, kind, gtrid, participants, at, deadline,
			resource, branch, op, reason, actor, heuristic, i)
), lease AS (
	SELECT n.node, n.epoch, n.expires_at, clock_timestamp() AS now FROM {nodes} n
	WHERE n.node = ANY($1::text[])
), chk AS (
	SELECT r.*, h.now, coalesce($15::timestamptz, h.now) AS fnow,
		coalesce(h.epoch = r.epoch AND h.expires_at > h.now, false) AS leased
	FROM req r LEFT JOIN lease h ON h.node = r.node
), dec AS (
	INSERT INTO {decisions} AS d (gtrid, node, state, epoch, participants, decided_at, deadline)
	SELECT c.gtrid, c.node, c.kind, c.epoch, nullif(c.participants, '')::jsonb, c.at, c.deadline
	FROM chk c
	WHERE c.leased AND (c.kind = 'A' OR c.kind = 'C' AND c.deadline > c.fnow)
	ORDER BY c.i
	ON CONFLICT (gtrid) DO UPDATE SET state = d.state
	RETURNING d.gtrid, d.state
), act AS (
	INSERT INTO {actions} (gtrid, node, epoch, resource, branch, op, reason, actor, heuristic, at)
	SELECT c.gtrid, c.node, c.epoch, c.resource, c.branch, c.op, c.reason, c.actor, c.heuristic, c.at
	FROM chk c LEFT JOIN dec ON dec.gtrid = c.gtrid
	WHERE c.leased AND (c.kind = 'R' OR c.kind = 'A' AND dec.state = 'A')
	ORDER BY c.i
	RETURNING 1
), ended AS (
	UPDATE {decisions} d SET ended_at = c.now
	FROM chk c
	WHERE d.gtrid = ANY($14::text[]) AND d.gtrid = c.gtrid AND c.kind = 'E' AND c.leased
	  AND d.state = 'C' AND d.ended_at IS NULL
	RETURNING 1
)
SELECT c.i, c.leased, c.fnow, dec.state, prior.state
FROM chk c
LEFT JOIN dec ON dec.gtrid = c.gtrid
LEFT JOIN (SELECT p.gtrid, p.state FROM {decisions} p WHERE p.gtrid = ANY($4::text[])) prior
	ON prior.gtrid = c.gtrid
ORDER BY c.i`

// submit stamps r with its lease's epoch, hands it to the writer and waits
// for the batch.
func (s *Store) submit(ctx context.Context, r *request) error {
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("pgstore: %s %s: %w", r.kind, r.key, err)
	}
	// Closed and fail-stopped first: they say more than a lease refusal.
	if err := s.writable(); err != nil {
		return fmt.Errorf("pgstore: %s %s: %w", r.kind, r.key, err)
	}
	l, err := s.leaseFor(nodeOf(r.g), r.kind.String()+" "+r.key)
	if err != nil {
		return err
	}
	epoch, lerr := l.usable(time.Now())
	if lerr != nil && r.kind != kindCommit {
		s.stats.localLeaseRefused.Add(1)
		return s.leaseRefusal(r, lerr)
	}
	// A commit under a lost lease still goes to the writer: it must tell a
	// repeat of a durable decision (nil) from a new one (fenced), and only
	// the writer, after every earlier batch has settled, can read that.
	r.epoch = epoch
	r.done = make(chan error, 1)
	if err := s.enqueue(r); err != nil {
		return fmt.Errorf("pgstore: %s %s: %w", r.kind, r.key, err)
	}
	// ctx is not watched from here on, as in FileLog: the request now
	// belongs to the writer and may be committed at any moment; returning
	// early would turn a decision that happens into an unknown outcome.
	// WriteTimeout bounds the wait.
	return <-r.done
}

// refuseCommitLocally answers a commit decision the writer will not send
// because its lease is lost. Answering ErrFenced (abort) for a decision that
// is already durable would be a lie that breaks atomicity, so it reads the
// row first: a durable decision is nil; none (or an abort) is ErrLeaseLost
// and ErrFenced, since nothing will ever be written under this epoch. If the
// read fails the answer is ErrLeaseLost alone, which a coordinator must
// treat as unknown (it matches neither ErrFenced nor a success).
func (s *Store) refuseCommitLocally(r *request, lost error) error {
	s.cmu.Lock()
	_, known := s.known[r.key]
	_, ending := s.ending[r.key]
	s.cmu.Unlock()
	if known || ending {
		return nil
	}
	ctx, cancel := context.WithTimeout(context.Background(), s.opts.ReadTimeout)
	defer cancel()
	e, found, err := s.LookupContext(ctx, r.g)
	switch {
	case err != nil:
		return fmt.Errorf("pgstore: commit %s: %w; whether an earlier decision for it is durable could not be read: %w", r.key, lost, err)
	case found && e.Decision != nil:
		return nil
	}
	s.stats.fenced.Add(1)
	return s.leaseRefusal(r, lost)
}

// leaseRefusal is the answer to r when its lease is lost: nothing written.
func (s *Store) leaseRefusal(r *request, lost error) error {
	if r.kind == kindCommit {
		// The decision can never be written under this epoch: abort.
		return fmt.Errorf("pgstore: commit %s: %w: %w", r.key, lost, decisionlog.ErrFenced)
	}
	return fmt.Errorf("pgstore: %s %s: %w", r.kind, r.key, lost)
}

func (s *Store) enqueue(r *request) error {
	s.qmu.Lock()
	defer s.qmu.Unlock()
	if s.closed {
		return decisionlog.ErrLogClosed
	}
	if s.failed != nil {
		return s.failed
	}
	s.queue = append(s.queue, r)
	s.qcond.Signal()
	if s.delayNeed > 0 && (len(s.queue) >= s.delayNeed || s.delayOnWaiter && r.done != nil) {
		s.wakeDelay()
	}
	return nil
}

// wakeDelay ends the writer's CommitDelay or EndDelay early. qmu must be
// held.
func (s *Store) wakeDelay() {
	select {
	case s.delayWake <- struct{}{}:
	default:
	}
}

// run is the writer goroutine: it takes whatever was queued while the last
// batch was in flight and writes it as the next batch (group commit without
// a timer, as FileLog). Two waits widen a batch: EndDelay holds a batch of
// only End records until a request a caller waits for comes to share it,
// and CommitDelay holds a batch of concurrent decisions for more of them.
func (s *Store) run() {
	defer close(s.writerDone)
	seen := map[string]struct{}{}
	for {
		batch, cut := s.take(seen)
		if batch == nil {
			return
		}
		if s.opts.EndDelay > 0 && !cut && len(batch) < s.opts.MaxBatch && waiters(batch) == 0 {
			// Nobody waits for these ends: rather than a round trip and a
			// commit of their own (which, on a busy database, the next
			// decision would queue behind), they wait for the next batch
			// somebody waits for. Not when take stopped at a repeated
			// gtrid: the request queued behind goes next anyway.
			s.delayFor(s.opts.EndDelay, s.opts.MaxBatch-len(batch), true)
			batch, cut = s.takeMore(batch, seen)
		}
		if s.opts.CommitDelay > 0 && s.lastWaiters > 1 && !cut && len(batch) < s.opts.MaxBatch && waiters(batch) > 0 {
			// Decisions arrive concurrently: hold the batch open so that
			// those arriving meanwhile share its round trip and commit.
			// Not when take stopped at a repeated gtrid: that one waits
			// for the next batch anyway.
			s.delayFor(s.opts.CommitDelay, s.opts.MaxBatch-len(batch), false)
			batch, _ = s.takeMore(batch, seen)
		}
		s.lastWaiters = waiters(batch)
		s.writeBatch(batch)
	}
}

// waiters counts the requests of batch a caller waits for (not End).
func waiters(batch []*request) int {
	n := 0
	for _, r := range batch {
		if r.done != nil {
			n++
		}
	}
	return n
}

// delayFor waits d, or until need more requests are queued, or (onWaiter)
// until a request a caller waits for is, or until Close; an EndDelay
// (onWaiter) also ends at once while a Release wants ends flushed.
func (s *Store) delayFor(d time.Duration, need int, onWaiter bool) {
	s.qmu.Lock()
	if len(s.queue) >= need || s.closed || onWaiter && (s.endFlush > 0 || waiters(s.queue) > 0) {
		s.qmu.Unlock()
		return
	}
	s.delayNeed, s.delayOnWaiter = need, onWaiter
	s.qmu.Unlock()
	t := time.NewTimer(d)
	select {
	case <-t.C:
	case <-s.delayWake:
		t.Stop()
	}
	s.qmu.Lock()
	s.delayNeed, s.delayOnWaiter = 0, false
	s.qmu.Unlock()
	select {
	case <-s.delayWake: // drop a wake-up that raced with the timer
	default:
	}
}

// flushEnds makes the writer send queued End records without holding them
// (EndDelay) until done is called.
func (s *Store) flushEnds() (done func()) {
	s.qmu.Lock()
	s.endFlush++
	if s.delayOnWaiter {
		s.wakeDelay()
	}
	s.qmu.Unlock()
	return func() {
		s.qmu.Lock()
		s.endFlush--
		s.qmu.Unlock()
	}
}

// takeMore appends to batch the requests queued since it was taken, up to
// MaxBatch and stopping before the first gtrid already in it (seen holds
// the batch's gtrids; cut says it stopped there).
func (s *Store) takeMore(batch []*request, seen map[string]struct{}) (_ []*request, cut bool) {
	s.qmu.Lock()
	defer s.qmu.Unlock()
	n := 0
	for n < len(s.queue) && len(batch)+n < s.opts.MaxBatch {
		if _, dup := seen[s.queue[n].key]; dup {
			cut = true
			break
		}
		seen[s.queue[n].key] = struct{}{}
		n++
	}
	batch = append(batch, s.queue[:n]...)
	rest := copy(s.queue, s.queue[n:])
	clear(s.queue[rest:])
	s.queue = s.queue[:rest]
	return batch, cut
}

// take waits for requests and returns the next batch: up to MaxBatch
// requests, stopping before the first gtrid already in it (a statement
// cannot touch a row twice, and order within a gtrid matters; cut says it
// stopped there). It returns nil once the store is closed and the queue
// drained.
func (s *Store) take(seen map[string]struct{}) (batch []*request, cut bool) {
	s.qmu.Lock()
	defer s.qmu.Unlock()
	for len(s.queue) == 0 {
		if s.closed {
			return nil, false
		}
		s.qcond.Wait()
	}
	clear(seen)
	n := 0
	for n < len(s.queue) && n < s.opts.MaxBatch {
		if _, dup := seen[s.queue[n].key]; dup {
			cut = true
			break
		}
		seen[s.queue[n].key] = struct{}{}
		n++
	}
	batch = make([]*request, n)
	copy(batch, s.queue)
	rest := copy(s.queue, s.queue[n:])
	clear(s.queue[rest:])
	s.queue = s.queue[:rest]
	return batch, cut
}

func reply(r *request, err error) {
	if r.done != nil {
		r.done <- err
	}
}

// writeBatch writes one batch with one statement and answers its requests.
func (s *Store) writeBatch(batch []*request) {
	if err := s.failure(); err != nil {
		s.dropBatch(batch, err)
		return
	}
	// Requests whose lease the local estimate says may have expired are
	// answered without sending anything.
	now := time.Now()
	send := batch[:0:0]
	for _, r := range batch {
		l, err := s.leaseFor(nodeOf(r.g), "")
		var lerr error
		if err != nil {
			lerr = err
		} else if epoch, err := l.usable(now); err != nil {
			lerr = err
		} else if epoch != r.epoch {
			lerr = &LeaseLostError{Node: nodeOf(r.g), Epoch: r.epoch, Why: fmt.Sprintf("the store now holds epoch %d", epoch)}
		}
		if lerr != nil {
			s.stats.localLeaseRefused.Add(1)
			if r.kind == kindCommit {
				reply(r, s.refuseCommitLocally(r, lerr))
			} else {
				s.dropOne(r, s.leaseRefusal(r, lerr))
			}
			continue
		}
		send = append(send, r)
	}
	if len(send) == 0 {
		return
	}
	var fenceNow *time.Time
	if h := s.opts.hooks; h != nil {
		if h.beforeBatch != nil {
			h.beforeBatch(len(send), waiters(send))
		}
		if h.fenceNow != nil {
			t := h.fenceNow()
			fenceNow = &t
		}
		if h.failBatch != nil {
			if err := h.failBatch(); err != nil {
				s.dropBatch(send, s.failStop(fmt.Errorf("decision batch of %d: %w", len(send), err), s.ownEpochOf(send)))
				return
			}
		}
	}

	n := len(send)
	var (
		nodes    = make([]string, n)
		epochs   = make([]int64, n)
		kinds    = make([]string, n)
		gtrids   = make([]string, n)
		parts    = make([]string, n)
		ats      = make([]time.Time, n)
		dls      = make([]time.Time, n)
		res      = make([]string, n)
		branches = make([]int32, n)
		ops      = make([]string, n)
		reasons  = make([]string, n)
		actors   = make([]string, n)
		heur     = make([]bool, n)
		ends     []string
	)
	for i, r := range send {
		nodes[i], epochs[i], kinds[i], gtrids[i] = nodeOf(r.g), r.epoch, string(r.kind), r.key
		parts[i], ats[i], dls[i] = r.parts, r.at, deadlineOf(r.g)
		if ats[i].IsZero() {
			ats[i] = dls[i] // End rows: unused
		}
		res[i], branches[i], ops[i], reasons[i], actors[i], heur[i] = r.resource, int32(r.branch), r.op, r.reason, r.actor, r.heuristic
		if r.kind == kindEnd {
			ends = append(ends, r.key)
		}
	}
	if ends == nil {
		ends = []string{} // an empty array, not NULL
	}

	type result struct {
		leased       bool
		now          time.Time
		state, prior *string
	}
	results := make([]result, n)
	ctx, cancel := context.WithTimeout(context.Background(), s.opts.WriteTimeout)
	defer cancel()
	s.stats.batches.Add(1)
	s.stats.batchSizes[min(bits.Len64(uint64(n-1)), decisionlog.BatchSizeBuckets-1)].Add(1)
	sent := time.Now()
	defer func() { s.stats.batchNanos.Add(int64(time.Since(sent))) }()
	// One round trip: BEGIN, SET LOCAL, the statement and COMMIT are
	// pipelined with one Sync. SET LOCAL plan_cache_mode: left to itself
	// PostgreSQL re-plans this statement at every execution (its custom
	// plans look cheaper than the generic one), and planning was most of
	// the batch's cost: 5.8 ms against 1.2 ms per batch of 32 here, 2,700
	// against 13,000 decisions/s. LOCAL, so the pool's session is left as
	// it was (it may be a participant's pool).
	b := &pgx.Batch{}
	b.Queue("BEGIN")
	b.Queue("SET LOCAL plan_cache_mode = force_generic_plan")
	b.Queue(s.sqlBatch, nodes, epochs, kinds, gtrids, parts, ats, dls,
		res, branches, ops, reasons, actors, heur, ends, fenceNow)
	b.Queue("COMMIT")
	br := s.pool.SendBatch(ctx, b)
	_, err := br.Exec()
	if err == nil {
		_, err = br.Exec()
	}
	if err == nil {
		var rows pgx.Rows
		rows, err = br.Query()
		if err == nil {
			var (
				i   int64
				res result
				now *time.Time
			)
			_, err = pgx.ForEachRow(rows, []any{&i, &res.leased, &now, &res.state, &res.prior}, func() error {
				if i < 1 || i > int64(n) {
					return fmt.Errorf("result row %d of %d", i, n)
				}
				if now != nil {
					res.now = *now
				}
				results[i-1] = res
				res = result{}
				return nil
			})
		}
	}
	if err == nil {
		var tag pgconn.CommandTag
		tag, err = br.Exec()
		if err == nil && tag.String() != "COMMIT" {
			// The server rolled back: nothing is written (an error before
			// would have been reported; this is belt and braces).
			err = &pgconn.PgError{Severity: "ERROR", Code: "40000", Message: "batch transaction ended with " + tag.String()}
		}
	}
	// Close reads what is left, up to ReadyForQuery; pgxpool then discards
	// a connection left inside a failed transaction.
	if cerr := br.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		if outcomeKnown(err) {
			s.stats.refusedBatches.Add(1)
			s.dropBatch(send, fmt.Errorf("%w: %w", ErrRefused, err))
			return
		}
		s.dropBatch(send, s.failStop(fmt.Errorf("decision batch of %d: %w", n, err), s.ownEpochOf(send)))
		return
	}
	s.stats.requests.Add(int64(n))

	for i, r := range send {
		res := results[i]
		prior := stateOf(res.prior)
		switch r.kind {
		case kindCommit:
			var err error
			switch {
			case !res.leased && (prior == decisionlog.StateCommitted):
				err = nil // a repeat: the decision is durable
			case !res.leased:
				err = s.leaseRefusal(r, s.lostByDatabase(r))
			case res.state != nil:
				// Inserted, or the row that was there (a repeat, or an
				// abort that wins): the fence rule on the database's now.
				_, err = decisionlog.AdmitCommit(r.g, res.now, stateOf(res.state))
			default:
				// Not attempted: the deadline had passed by the database's
				// clock. A repeat of a durable decision is still nil.
				var write bool
				write, err = decisionlog.AdmitCommit(r.g, res.now, prior)
				if write {
					err = fmt.Errorf("pgstore: commit %s: the store wrote nothing and the fence admits it (database now %s)", r.key, res.now)
					err = s.failStop(err, 0) // cannot happen; never guess
				}
			}
			switch {
			case err == nil:
				s.stats.commits.Add(1)
				s.noteCommitted(r.key)
			case isFenced(err):
				s.stats.fenced.Add(1)
			}
			reply(r, err)
		case kindAbort:
			switch {
			case prior == decisionlog.StateCommitted || stateOf(res.state) == decisionlog.StateCommitted:
				reply(r, fmt.Errorf("pgstore: abort %s: %w", r.key, decisionlog.ErrAlreadyCommitted))
			case !res.leased:
				reply(r, s.leaseRefusal(r, s.lostByDatabase(r)))
			default:
				s.stats.aborts.Add(1)
				reply(r, nil)
			}
		case kindRecord:
			if !res.leased {
				reply(r, s.leaseRefusal(r, s.lostByDatabase(r)))
				continue
			}
			s.stats.records.Add(1)
			reply(r, nil)
		case kindEnd:
			if res.leased {
				s.stats.ends.Add(1)
			} else {
				s.stats.endsDropped.Add(1)
				_ = s.lostByDatabase(r)
			}
			s.endDone(r.key)
		}
	}
}

// dropBatch answers every request with err (End requests are dropped).
func (s *Store) dropBatch(batch []*request, err error) {
	for _, r := range batch {
		s.dropOne(r, err)
	}
}

func (s *Store) dropOne(r *request, err error) {
	if r.kind == kindEnd {
		s.stats.endsDropped.Add(1)
		s.endDone(r.key)
		return
	}
	reply(r, err)
}

// lostByDatabase marks r's lease lost (the database refused its epoch) and
// returns the error for r.
func (s *Store) lostByDatabase(r *request) error {
	s.stats.leaseRefused.Add(1)
	err := &LeaseLostError{Node: nodeOf(r.g), Epoch: r.epoch,
		Why: "the database refused the write: another epoch holds the lease, or it expired by the database's clock"}
	s.markLost(nodeOf(r.g), r.epoch, err)
	return err
}

func stateOf(st *string) decisionlog.State {
	if st == nil {
		return decisionlog.StateNone
	}
	switch *st {
	case "C":
		return decisionlog.StateCommitted
	case "A":
		return decisionlog.StateAborted
	}
	return decisionlog.StateNone
}

// ownEpochOf returns the highest own-lease epoch among batch's requests, 0
// if none is for the store's own node.
func (s *Store) ownEpochOf(batch []*request) int64 {
	var e int64
	for _, r := range batch {
		if nodeOf(r.g) == s.node {
			e = max(e, r.epoch)
		}
	}
	return e
}
