// Package pgstore is a decision log in PostgreSQL that several coordinator
// processes share, each holding a lease on its node id (DESIGN rules 10 to
// 12). A Store implements decisionlog.Log for its own node; a peer that
// claims a dead node's lease reads and fences that node's transactions
// through NodeLog.
//
// # Where it lives, and why here
//
// The package is decisionlog/pgstore, beside the contract it implements,
// rather than in decisionlog itself: decisionlog stays free of any database
// driver, so xa and recovery, which import it, do not import pgx. It is not
// in postgres/ either: that package is a participant adapter (XA on a
// resource) and imports only drivers; the store is a log, whatever database
// holds it.
//
// # Using it
//
//	pool, _ := pgxpool.New(ctx, "postgres://…")  // any database; often a participant's
//	st, err := pgstore.Open(ctx, pool, pgstore.Options{Node: "payments-1"})
//	if errors.Is(err, pgstore.ErrNodeLeased) { … another live process is payments-1 … }
//	defer st.Close()
//	// st is a decisionlog.Log: hand it to the coordinator and to recovery.
//
// Open creates the tables on first use (CREATE … IF NOT EXISTS under a
// transaction-scoped advisory lock, so processes starting together do not
// collide), checks the schema version, and takes the lease. The pool stays
// the caller's. The role needs CREATE on the schema the first time, then
// SELECT, INSERT, UPDATE, DELETE on the four tables.
//
// # Schema (version 1)
//
// In Options.Schema, or the connection's search_path when empty:
//
//	CREATE TABLE xabridge_store_meta (
//		id         boolean     PRIMARY KEY DEFAULT true CHECK (id),  -- one row
//		version    integer     NOT NULL,                             -- SchemaVersion
//		created_at timestamptz NOT NULL DEFAULT clock_timestamp());
//	CREATE TABLE xabridge_store_nodes (      -- one lease per node id
//		node        text PRIMARY KEY,
//		epoch       bigint NOT NULL CHECK (epoch > 0), -- +1 on every acquisition or claim
//		holder_node text NOT NULL,   -- the holder's own node id: node itself, or a claimant
//		host text NOT NULL, pid integer NOT NULL, started_at timestamptz NOT NULL,
//		incarnation text NOT NULL,   -- random id of the holding Store
//		acquired_at timestamptz NOT NULL, renewed_at timestamptz NOT NULL,
//		expires_at  timestamptz NOT NULL);  -- the database's clock_timestamp() + TTL
//	CREATE TABLE xabridge_store_decisions (  -- commit decisions and abort rows
//		gtrid        text PRIMARY KEY,       -- drivers.GlobalID.String()
//		node         text NOT NULL,          -- the gtrid's node
//		state        char(1) NOT NULL CHECK (state IN ('C', 'A')),
//		epoch        bigint NOT NULL,        -- the lease epoch it was written under
//		seq          bigint GENERATED ALWAYS AS IDENTITY,  -- decision order (Pending)
//		participants jsonb,                  -- [{"r": resource, "b": branch}], commits only;
//		                                     -- {"l": label, "p": [...]} for a labelled one
//		decided_at   timestamptz NOT NULL,   -- Decision.At
//		deadline     timestamptz NOT NULL,   -- the gtrid's fence
//		written_at   timestamptz NOT NULL DEFAULT clock_timestamp(),
//		ended_at     timestamptz);           -- phase 2 finished (End)
//	CREATE INDEX … ON xabridge_store_decisions (node, seq) WHERE state = 'C' AND ended_at IS NULL;
//	CREATE INDEX … ON xabridge_store_decisions (node, ended_at) WHERE ended_at IS NOT NULL;
//	CREATE INDEX … ON xabridge_store_decisions (node, deadline) WHERE state = 'A';
//	CREATE TABLE xabridge_store_actions (    -- Record and Abort: what recovery or an operator did
//		id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
//		gtrid text NOT NULL, node text NOT NULL, epoch bigint NOT NULL,
//		resource text NOT NULL, branch smallint NOT NULL, op text NOT NULL,
//		reason text NOT NULL, actor text NOT NULL, heuristic boolean NOT NULL,
//		at timestamptz NOT NULL, written_at timestamptz NOT NULL DEFAULT clock_timestamp());
//	CREATE INDEX … ON xabridge_store_actions (gtrid, id);
//	CREATE INDEX … ON xabridge_store_actions (node, written_at) WHERE NOT heuristic;
//
// The exact statements are ddl in schema.go. A commit row and an abort row
// for one gtrid exclude each other by the primary key: that, not any lock,
// is what makes "commit after abort" and "abort after commit" impossible,
// in every process at once.
//
// # Writes: group commit, the fence, the lease
//
// Commit, Abort and Record queue a request for one writer goroutine and
// wait; the writer sends everything queued while the previous batch was in
// flight as one statement (one round trip, one commit, one WAL flush): an
// INSERT … SELECT FROM unnest(arrays) … ON CONFLICT (gtrid) DO UPDATE with
// data-modifying CTEs for actions and ends (batchSQL in writer.go), sent as
// BEGIN; SET LOCAL plan_cache_mode = force_generic_plan; statement; COMMIT
// in one pipeline (re-planning at every execution was most of its cost;
// LOCAL leaves the pool's sessions as they were). Options.CommitDelay, like
// the file log's, holds a batch open a little longer once decisions are seen
// to arrive concurrently, so that more share it. Per request row the
// statement checks, with the database's clock_timestamp():
//
//   - the lease: the row's (node, epoch) is the one in xabridge_store_nodes
//     and not expired. Otherwise nothing is written for it;
//   - the deadline, for a commit: deadline > now, else nothing is written;
//   - the primary key: an existing row wins and is returned.
//
// The answers are then decisionlog.AdmitCommit's, evaluated on the
// database's now and the row's state: a repeat of a durable decision is
// nil (even after the deadline or with the lease lost); at or past the
// deadline, or against an abort row, ErrFenced; an abort against a commit
// row, ErrAlreadyCommitted. End requests are queued without waiting and
// ride the next batch (UPDATE … SET ended_at); Lookup and Pending of this
// store show them ended at once. A batch of nothing but ends is held back
// (Options.EndDelay, default 5 ms) until a request somebody waits for is
// queued, so that ends share a decision's round trip and commit instead of
// costing their own; a full batch of ends, Close and Release end the hold,
// and other processes see such an end up to EndDelay later. A batch never
// holds one gtrid twice (the writer cuts the batch there, so per-gtrid
// order is queue order).
//
// # Errors: which outcome each one means
//
//   - nil: durable (committed row).
//   - decisionlog.ErrFenced: nothing written, and no commit decision will
//     ever be written for this gtrid by this epoch: the outcome is abort.
//   - ErrLeaseLost with ErrFenced (from Commit): the lease was lost, by the
//     database's answer (another epoch holds it, or it expired by the
//     database's clock) or by the store's own estimate (then nothing was
//     sent). The store first checks that no commit decision for the gtrid
//     is durable (a repeat answers nil). Outcome: abort.
//   - ErrLeaseLost alone (Commit, when that check could not be read; Abort,
//     Record, End): nothing written by this request. A coordinator treats a
//     Commit error that is neither ErrFenced nor nil as in doubt.
//   - decisionlog.ErrAlreadyCommitted: the abort was refused; commit.
//   - ErrRefused: the database refused the statement with an error (or it
//     was never sent): nothing written; the store stays usable.
//   - decisionlog.ErrLogFailed: the outcome is unknown (the connection was
//     lost, or the write timed out, after the statement may have reached the
//     server). The store is fail-stopped, as FileLog (DESIGN rule 6): every
//     later write returns the same error, and the store gives its own
//     lease up (Lost fires; it is no longer renewed). Reacquire, which
//     succeeds once that lease has expired by the database's clock, takes a
//     new epoch that no late write of the failed batch can match, and
//     clears the failure; so does closing and reopening. Reads keep
//     working; the database holds the truth.
//   - ErrNotHolder: the transaction's node is not leased by this store.
//
// # Leases
//
// Open inserts the node's lease row at epoch 1, or takes an expired one at
// epoch + 1 (ON CONFLICT … DO UPDATE … WHERE expires_at <= clock_timestamp():
// of two racing processes exactly one wins, the other re-evaluates the WHERE
// on the winner's row and gets nothing). A live holder makes Open fail with
// a *LeasedError (ErrNodeLeased) naming host, pid, incarnation, expiry and
// epoch. Expiry is always the database's clock_timestamp() + LeaseTTL.
//
// A renewer goroutine extends every lease the store holds each RenewEvery
// (default TTL/3), only while it is live (an expired lease is never revived:
// a peer may be claiming it). The store trusts a lease until local start of
// its last successful renewal + TTL − Margin (monotonic clock, default
// margin TTL/5): before the database's expiry, whatever the clocks say.
// Past that, or when the database refuses a renewal or a write's lease
// check, the lease is lost: Lost() is closed, LeaseErr() says why, and
// every write is refused as above. Reacquire takes the lease again under a
// new epoch, but only once it has expired by the database's clock (so that
// a peer's takeover may come first); until then it returns a *LeasedError
// saying until when. Close releases the leases (expiry set to now), so a
// restarted process, or a peer, takes them at once. A lease released while
// live has renewed_at equal to expires_at (a renewal always puts its expiry
// a TTL later), which NodeInfo.Released reports: a clean stop, told from a
// lapse, so that survivors need not claim a node that stopped with nothing
// left. Open does not fail while a claimant (another node's process
// taking this node over) holds the node's lease: it waits, up to
// Options.ClaimWait, for the claim to be released or to lapse; a live
// process of the node itself is refused at once.
//
// The lease check in a batch reads the statement's snapshot and does not
// lock the lease row (a tuple lock per batch cost up to half the
// throughput at 32 committers in our runs). A claim that
// commits while a batch is in flight is therefore not seen by that batch,
// and a commit decision may land just after its node was claimed. Safety
// does not rest on that check but on the abort row: the claimant records an
// abort before it rolls a branch back; the abort and the late commit
// collide on the primary key, and exactly one wins, visibly to both.
//
// # Takeover (the next step, issue 11 item 3): how it uses this API
//
// Every coordinator on the store runs, every pass (say every TTL/2):
//
//	nodes, _ := st.Nodes(ctx)                 // node, epoch, holder, ExpiresIn, State
//	for _, n := range nodes {
//		if n.State != pgstore.NodeExpired || n.Node == st.Node() { continue }
//		epoch, err := st.Claim(ctx, n.Node)  // CAS to epoch+1; ErrNodeLeased: someone else won
//		if err != nil { continue }
//		log, _ := st.ForNode(n.Node)         // decisionlog.Log of the dead node, under the new epoch
//		// recovery.Run(ctx, log, resources, only gtrids of n.Node):
//		//   log.Pending(): commit every branch, then log.End(g);
//		//   prepared branches of n.Node without a decision:
//		//     log.Abort(g) first (ErrAlreadyCommitted: commit instead), then roll back.
//		//   The fence need not be waited for: the node is dead and its
//		//   late decisions are refused by epoch and by the abort rows.
//		st.Release(ctx, n.Node)               // the node may come back (epoch+1 again)
//	}
//
// While it holds the claim the store renews it; if the claimant itself
// dies, the claim expires and another peer claims again (epoch + 1 again).
// A node whose process comes back opens under a new epoch, and its own
// recovery sees the aborts and ends the claimant wrote. Nodes() also shows
// taken-over nodes (NodeTakenOver: held live by another node's process),
// which is what `xabridge nodes` will print. A coordinator learns that it
// lost its own lease from Lost() (stop deciding; its in-flight commits have
// returned ErrFenced or are in doubt) and calls Reacquire until it
// succeeds. Keeper mode (decisions in a participant) is outside this
// package: the claimant fences with the keeper's FenceAbort, under its
// claim.
//
// # Cleanup
//
// A sweeper (every SweepEvery) deletes, in statements of at most 1000 rows,
// for every node whose lease the store holds: commit decisions ended more
// than EndedRetention ago, abort rows more than AbortRetention past their
// deadline (after the deadline the database's clock alone refuses the
// commit), and actions without a decision row older than ActionRetention.
// Anything with a heuristic action is kept, to be reported.
//
// # Durability
//
// The store is exactly as durable as its PostgreSQL. A decision is
// acknowledged when its transaction commits on the server the pool talks
// to: with synchronous_commit = off, or with asynchronous replication and a
// failover to a replica that had not received the commit, an acknowledged
// commit decision can be lost after branches were told to commit — and
// recovery would then presume abort for the branches still prepared,
// breaking atomicity (DESIGN rule 12). Run the store's PostgreSQL with
// synchronous_commit on and, if it is replicated, with synchronous
// replication (synchronous_standby_names) before relying on failover.
//
// # Reads
//
// Lookup and Pending read the database (one statement each), since
// recovery in another process reads the same rows. They take no context
// (the Log contract): they use Options.ReadTimeout and answer "nothing" on
// an error; LookupContext and PendingContext return the error instead.
// Answering "nothing" for a committed transaction is not unsafe by itself:
// recovery records an abort before rolling back, and that abort is refused.
//
// # Tests
//
// The tests run against the real PostgreSQL of internal/dbtest, each in a
// schema of its own (parallel and repeatable). The package's own tests
// cover the Log semantics table (tests that need a deadline already past
// build gtrids from dbNow). TestConformance runs the decisionlog/logtest
// suite, every subtest on a fresh schema: the suite's clock replaces the
// database's for the fence only (an unexported test hook; the lease is
// always checked on the database's clock), Reopen closes and reopens the
// Store, Compact is Sweep, and Fail makes the next batch a write of
// unknown outcome.
package pgstore
