package pgstore

import (
	"errors"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
)

// Errors of a Store, besides decisionlog's. Every error the Store returns
// is one of three kinds, told apart with errors.Is:
//
//   - known outcome, nothing written: ErrLeaseLost, ErrNodeLeased,
//     ErrNotHolder, decisionlog.ErrFenced, decisionlog.ErrAlreadyCommitted,
//     ErrRefused;
//   - unknown outcome: decisionlog.ErrLogFailed (the store is fail-stopped);
//   - closed: decisionlog.ErrLogClosed.
var (
	// ErrLeaseLost: this store no longer holds the node's lease (the
	// database refused the write because another epoch holds it or it
	// expired, or the store's own conservative estimate says it may have
	// expired, and then nothing was sent). Nothing was written. A refused
	// Commit also wraps decisionlog.ErrFenced: the decision can never be
	// written under this epoch, so the outcome is abort.
	ErrLeaseLost = errors.New("pgstore: node lease lost")

	// ErrNodeLeased: the node's lease is held by a live holder (see
	// LeasedError for who and until when).
	ErrNodeLeased = errors.New("pgstore: node lease held by a live holder")

	// ErrUnknownNode: Claim of a node that never held a lease in the store.
	ErrUnknownNode = errors.New("pgstore: no lease for this node in the store")

	// ErrNotHolder: a write for a transaction of a node whose lease this
	// store does not hold (neither its own node nor a claimed one).
	ErrNotHolder = errors.New("pgstore: this store holds no lease for the transaction's node")

	// ErrRefused: the database refused or never received a write (an SQL
	// error, a connection that could not be had): nothing was written. The
	// store stays usable.
	ErrRefused = errors.New("pgstore: write refused, nothing written")
)

// Holder identifies the process holding a node lease.
type Holder struct {
	Node        string    // the node id of the holding store (the node itself, or a claimant)
	Host        string    // os.Hostname of the holder
	PID         int       // its process id
	Started     time.Time // when the holding process started (approximately: package init)
	Incarnation string    // random id of the holding Store
}

func (h Holder) String() string {
	s := fmt.Sprintf("host %s pid %d (started %s, incarnation %s)", h.Host, h.PID,
		h.Started.UTC().Format(time.RFC3339), h.Incarnation)
	if h.Node != "" {
		s = "node " + h.Node + " on " + s
	}
	return s
}

// LeasedError reports a lease held by a live holder. It matches
// ErrNodeLeased.
type LeasedError struct {
	Node      string
	Epoch     int64
	Holder    Holder
	ExpiresAt time.Time     // by the database's clock
	ExpiresIn time.Duration // as the database saw it when refusing
}

func (e *LeasedError) Error() string {
	return fmt.Sprintf("pgstore: node %s is held by %s until %s (in %s), epoch %d",
		e.Node, e.Holder, e.ExpiresAt.UTC().Format(time.RFC3339Nano), e.ExpiresIn.Round(time.Millisecond), e.Epoch)
}

// Is makes errors.Is(err, ErrNodeLeased) true.
func (e *LeasedError) Is(target error) bool { return target == ErrNodeLeased }

// LeaseLostError says which lease was lost and why. It matches ErrLeaseLost.
type LeaseLostError struct {
	Node  string
	Epoch int64  // the epoch this store held
	Why   string // e.g. "the database holds epoch 8", "not renewed in time"
}

func (e *LeaseLostError) Error() string {
	return fmt.Sprintf("pgstore: lease on node %s epoch %d lost: %s", e.Node, e.Epoch, e.Why)
}

// Is makes errors.Is(err, ErrLeaseLost) true.
func (e *LeaseLostError) Is(target error) bool { return target == ErrLeaseLost }

// outcomeKnown reports whether a failed statement certainly changed
// nothing: the server answered with an ERROR (the implicit transaction
// rolled back), or nothing was sent. A lost connection, a FATAL, a timeout
// mid-flight may have come after the server committed: unknown.
func outcomeKnown(err error) bool {
	var pe *pgconn.PgError
	if errors.As(err, &pe) {
		sev := pe.SeverityUnlocalized
		if sev == "" {
			sev = pe.Severity
		}
		return sev != "FATAL" && sev != "PANIC"
	}
	return pgconn.SafeToRetry(err)
}
