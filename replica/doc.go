// Package replica runs a coordinator as one replica: the xa.Coordinator, its
// in-process recovery, and, on a shared decision store
// (decisionlog/pgstore), the takeover of dead peers (DESIGN rules 10 to 12).
// It is where xa, recovery and the store meet; xa imports neither recovery
// nor pgx.
//
//	r, err := replica.Open(ctx, replica.Config{
//		Coordinator: xa.Config{NodeID: "payments-1", Resources: res},
//		Pool:        storePool, // any PostgreSQL database; nil: a file log in Coordinator.LogDir
//	})
//	if errors.Is(err, pgstore.ErrNodeLeased) { … another live process is payments-1 … }
//	defer r.Close()
//	err = r.Coordinator().Run(ctx, transfer)
//
// # The loop
//
// Open takes the node's lease in the store (refused with
// pgstore.ErrNodeLeased while a live process holds it), then the node's
// lock in every participant that can hold one (recovery.LockNode; refused
// with drivers.ErrNodeInUse while another live process holds it, with a
// file log too: two file logs in two directories cannot see each other),
// opens the coordinator on the store, and starts one goroutine that runs a pass at
// once and then every RecoverEvery:
//
//  1. this node's own recovery (recovery.Pass with Active: the coordinator's
//     running transactions are left alone): commit decisions whose phase 2
//     did not finish are driven to commit; orphans past their fence, seen
//     in two scans Settle apart, are rolled back after their abort is
//     recorded;
//  2. on a shared store, for every peer whose lease has expired by the
//     database's clock: TakeOver. A peer that died holding its own lease is
//     taken over once; one a claimant already released, or one its own
//     process released cleanly (Close: pgstore.NodeInfo.Released), is
//     claimed only while something of it is left (branches prepared on a
//     resource, commit decisions not ended), so a node that never comes
//     back costs a lease read per pass, not a claim and a scan, and a
//     replica stopped cleanly is not claimed just as it restarts. A replica
//     restarted while a peer does hold its node waits for that claim to
//     end (pgstore.Options.ClaimWait) instead of failing.
//
// TakeOver claims the node (a compare-and-set to epoch + 1 in the database:
// of several survivors exactly one wins; the others get
// pgstore.ErrNodeLeased and skip it quietly), runs recovery as that node,
// on its log under the claim, with no fence to wait for (MinAge 0: the
// node is dead, and a late decision of its old process is refused twice,
// by its epoch and by the abort row the claimant records before any
// rollback), and with the two-scan rule kept (Settle: a killed process's
// MariaDB sessions detach from their prepared branches late). In keeper
// mode (Coordinator.DecisionResource) the claimant also reads the node's
// decisions kept in the participant and fences orphans there
// (FenceAbort) before presuming them aborted. It runs passes until nothing
// of the node is prepared and no decision of it is pending, then releases
// the claim (so the node's own process, coming back, takes it at once).
//
// Before its passes, a takeover ends the sessions the node's dead
// incarnation may still hold open (drivers.SessionEnder): a replica on a
// store marks the sessions it pins for branches with its incarnation's
// mark (drivers.SessionMark of its node and its lease's incarnation id),
// and the claimant ends exactly the sessions with the mark of the
// incarnation its lease row named (or that its passes last saw holding
// the node). A paused or partitioned process keeps its sessions, and
// MariaDB finishes a prepared branch from another session only once the
// preparing session is gone; ending them is what its death would do, and
// it runs only while the claim is held, when no incarnation of the node
// can decide. A resource carries one mark, so two replicas of one process
// need resources (pools) of their own: Open refuses a resource another
// open replica of the process marks.
//
// A second goroutine watches the node's own lease (pgstore.Store.Lost). A
// process that loses it (paused, partitioned from the store, or its store
// failed a write of unknown outcome) writes no decision: the store refuses,
// and the coordinator tells callers aborted (decisionlog.ErrFenced) or in
// doubt, never committed. The replica calls Reacquire with backoff until it
// succeeds, which is only once the old lease has expired by the database's
// clock, so a peer's takeover may come first; the node then goes on under
// the new epoch, and its own recovery sees what the claimant did (aborts
// recorded, decisions ended).
//
// # What it guarantees
//
//   - Nobody acts on a live node's transactions: only an expired lease can
//     be claimed, and only by one survivor at a time.
//   - A dead node's transactions are settled, with no operator, within
//     about LeaseTTL (its last renewal to the database's expiry) + one
//     RecoverEvery (until a survivor's pass sees it expired) + Settle and
//     two scans. Measured in this package's tests with LeaseTTL 2s,
//     RecoverEvery 500ms, Settle 1s: 2.7 to 5.3 s from the kill to nothing
//     of the dead node prepared or pending.
//   - Atomicity across every crash, pause and partition, as the rules of the
//     store and of recovery give it; the replica adds no decision of its
//     own.
//
// Limits: in keeper mode the decision is a commit in a participant, not a
// store write, so a node that lost its lease can still make one; what
// excludes it from a claimant's rollback is the abort marker the claimant
// writes in the keeper first (the same exclusion as the store's abort row),
// not the lease. The store must be as durable as the decisions it holds:
// see pgstore's "Durability".
//
// # Settings and what they trade
//
//   - Store.LeaseTTL (pgstore.DefaultLeaseTTL, 15s): the floor of the time a
//     dead node's prepared branches hold their row locks. Shorter means a
//     faster takeover, but a process paused or cut off from the store for
//     longer than it (a GC pause, a slow disk, a network blip) loses its
//     lease: its transactions in flight are aborted or in doubt and a peer
//     takes them over. Store.RenewEvery (TTL/3) and Store.Margin (TTL/5)
//     say how many renewals may fail before that.
//   - RecoverEvery (TTL/2 with a store, 10s with a file log): how often
//     recovery scans every resource (one XA RECOVER or pg_prepared_xacts
//     read each, and the lease table). Shorter adds load on the databases
//     and settles sooner.
//   - Settle (1s): the two-scan wait. Keep it with MariaDB.
//   - NoTakeover: this replica settles only its own node (for replicas that
//     must not reach every resource, or when another tool does takeovers).
//   - NodeLockWait (recovery.DefaultNodeLockWait, 5s): how long Open
//     retries a node lock in use before refusing, for a restart right
//     after a kill whose sessions a server has not yet ended. A lock not
//     held (a participant unreachable at Open, a lock lost later, found by
//     a ping every second) turns the restart fast path off until a pass
//     takes it again: the fence rules meanwhile.
//   - Coordinator.Timeout (30s): the fence of the node's own transactions;
//     a takeover does not wait for it, a node's own recovery does.
package replica
