// Package drivers is the contract between the xabridge coordinator and the
// database adapters: the XID and its encodings, the Resource and Branch
// interfaces, the error classes adapters return, and a scheme registry for
// opening resources from URLs.
//
// It is the leaf of the dependency graph, in the way database/sql/driver is:
// it imports nothing of xabridge and no database driver.
package drivers

import (
	"context"
	"time"
)

// Resource is one database that takes part in global transactions: a
// PostgreSQL database or a MySQL/MariaDB server, reached through a pool the
// application owns.
//
// Implementations must be safe for concurrent use.
type Resource interface {
	// Name is the resource's stable name. It is written into the decision
	// log, so it must stay the same across restarts.
	Name() string

	// Begin starts a branch with the given XID on a connection that stays
	// pinned to the branch until it ends.
	Begin(ctx context.Context, xid XID) (Branch, error)

	// CommitPrepared commits a prepared branch from any session. It returns
	// an error of class ErrNotFound when no branch with that XID is
	// prepared, and ErrBusy when the branch exists but cannot be finished
	// now.
	CommitPrepared(ctx context.Context, xid XID) error

	// RollbackPrepared rolls back a prepared branch from any session, with
	// the same error classes as CommitPrepared.
	RollbackPrepared(ctx context.Context, xid XID) error

	// Recover lists the prepared branches the resource can see. Branches
	// xabridge created are decoded (Ours); everything else is reported as
	// foreign and must never be acted on.
	Recover(ctx context.Context) ([]Prepared, error)
}

// Vote is a branch's answer to Prepare.
type Vote int

const (
	// VoteCommit: the branch is prepared and waits for the decision.
	VoteCommit Vote = iota + 1
	// VoteReadOnly: the branch changed nothing and is already finished; it
	// takes no part in phase 2.
	VoteReadOnly
)

func (v Vote) String() string {
	switch v {
	case VoteCommit:
		return "commit"
	case VoteReadOnly:
		return "read-only"
	}
	return "invalid"
}

// Branch is the part of a global transaction that runs on one resource.
//
// Branch methods are called by one goroutine at a time. After any method
// returns an error of class ErrInDoubt the branch has dropped its connection
// (a MariaDB session in doubt must never go back to a pool); later calls
// finish the branch by XID from a fresh connection.
type Branch interface {
	// XID is the branch's XID.
	XID() XID

	// Prepare ends the branch's work and prepares it (phase 1). Errors:
	// ErrRefused (the branch rolled back), ErrInDoubt (it may be prepared).
	Prepare(ctx context.Context) (Vote, error)

	// Commit commits the prepared branch (phase 2). It is idempotent: a
	// branch that is already committed, or no longer prepared anywhere,
	// returns nil. ErrBusy and ErrInDoubt mean "call again later".
	Commit(ctx context.Context) error

	// Rollback rolls back the branch, whether active, prepared or in doubt.
	// It is idempotent like Commit.
	Rollback(ctx context.Context) error

	// CommitOnePhase commits an unprepared branch in one step; used when it
	// is the only branch of its global transaction.
	CommitOnePhase(ctx context.Context) error

	// Close releases the branch's connection. On servers where a prepared
	// branch stays bound to its session (MariaDB), a branch that is prepared
	// but not finished closes its connection rather than pooling it, so the
	// prepared branch detaches and recovery can finish it.
	Close() error
}

// Prepared is one prepared transaction found on a resource.
type Prepared struct {
	// XID is the decoded XID: set when Ours is true, and for an entry in
	// xabridge's format that this resource may not finish (Note says why).
	XID XID
	// Ours reports whether xabridge created this branch and it can be
	// finished through this resource.
	Ours bool
	// ID is the transaction's id as the database shows it (a gid, or an
	// XA RECOVER id in X'..',X'..',fmt form). It may contain any bytes; quote
	// it before display.
	ID string
	// PreparedAt is when the database prepared it, if the database says.
	PreparedAt time.Time
	// Owner is the database role that prepared it, if the database says.
	Owner string
	// Database is the database it belongs to, if the database says.
	Database string
	// Note explains why an id that decodes as ours is not Ours (for example
	// "other database").
	Note string
}

// Enlister is a running global transaction as adapters see it. The xa
// package's Tx implements it; adapters use it to offer typed Enlist methods
// without importing xa.
type Enlister interface {
	// Enlist returns the transaction's branch on r, beginning it on first use.
	Enlist(ctx context.Context, r Resource) (Branch, error)
}
