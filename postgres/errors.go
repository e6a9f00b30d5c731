package postgres

import (
	"errors"
	"fmt"
	"strings"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/xabridge/xabridge/drivers"
)

// SQLSTATE codes the adapter acts on.
const (
	codeUndefinedObject        = "42704" // prepared transaction ... does not exist
	codeObjectNotInPrereqState = "55000" // ... is busy / prepared transactions are disabled
	codeSerializationFailure   = "40001"
	codeDeadlockDetected       = "40P01"
	codeLockNotAvailable       = "55P03"
	codeQueryCanceled          = "57014"
)

// fate says what a failed statement did on the server, which is what every
// classification below hinges on.
type fate int

const (
	// answered: the server replied with an ERROR. The statement had no
	// effect, the session is alive, and (PostgreSQL rule) an ERROR inside a
	// transaction command means that command rolled back: anything past
	// the point of no return of PREPARE or COMMIT would be a PANIC instead.
	answered fate = iota
	// notSent: the failure happened before any byte of the statement left
	// the client (pgconn.SafeToRetry), e.g. a context that was already done
	// or a connection already known to be closed.
	notSent
	// unknown: the statement may or may not have been executed: the
	// connection broke or the context ended while the server was working,
	// or the server answered FATAL/PANIC (the backend died, possibly after
	// the command took effect — a FATAL can follow a locally durable
	// PREPARE during a synchronous-replication wait).
	unknown
)

// fateOf classifies a non-nil error from a statement.
func fateOf(err error) (fate, *pgconn.PgError) {
	var pe *pgconn.PgError
	if errors.As(err, &pe) {
		sev := pe.SeverityUnlocalized
		if sev == "" {
			sev = pe.Severity
		}
		if sev == "FATAL" || sev == "PANIC" {
			return unknown, pe
		}
		return answered, pe
	}
	if pgconn.SafeToRetry(err) {
		return notSent, nil
	}
	return unknown, nil
}

// transientCode reports SQLSTATEs after which the same work can simply be
// run again: serialization failures, deadlocks, lock timeouts.
func transientCode(code string) bool {
	switch code {
	case codeSerializationFailure, codeDeadlockDetected, codeLockNotAvailable:
		return true
	}
	return false
}

// unavailableCode reports SQLSTATEs of a server that could not take the
// request at all (too many connections, starting up, out of resources,
// cancelled), which are worth retrying later.
func unavailableCode(code string) bool {
	return transientCode(code) || code == codeQueryCanceled ||
		strings.HasPrefix(code, "57P") || // admin/crash shutdown, cannot connect now
		strings.HasPrefix(code, "08") || strings.HasPrefix(code, "53")
}

// noEffectKind classifies an error of an operation that cannot have changed
// anything durable (connecting, BEGIN, reading pg_prepared_xacts): a
// server that refused for good is ErrFailed, anything else is worth a retry.
func noEffectKind(err error) error {
	if _, pe := fateOf(err); pe != nil && !unavailableCode(pe.Code) {
		return drivers.ErrFailed
	}
	return drivers.ErrRetryable
}

// isDisabled reports the error PREPARE TRANSACTION gives when
// max_prepared_transactions is 0. The message may be translated
// (lc_messages), so the hint's GUC name is checked too.
func isDisabled(pe *pgconn.PgError) bool {
	return pe.Code == codeObjectNotInPrereqState &&
		(strings.Contains(pe.Message, "prepared transactions are disabled") ||
			strings.Contains(pe.Hint, "max_prepared_transactions"))
}

// errDisabled explains how to turn two-phase commit on.
func errDisabled(cause error) error {
	return fmt.Errorf("PostgreSQL has max_prepared_transactions = 0, which disables two-phase commit; "+
		"set max_prepared_transactions to a value > 0 (at least max_connections) in postgresql.conf "+
		"and restart the server (a reload is not enough): %w", cause)
}

// withTransient marks a refusal caused by a serialization failure or a
// deadlock as a conflict (so retryable) too, so that xa.Retryable sees it,
// while drivers.Classify still reports the refusal.
func withTransient(err error, pe *pgconn.PgError) error {
	if pe != nil && transientCode(pe.Code) {
		return fmt.Errorf("%w: %w", drivers.ErrConflict, err)
	}
	return err
}

// userErr wraps the error of an application statement: serialization
// failures, deadlocks and lock timeouts become ErrConflict (the
// *pgconn.PgError stays reachable with errors.As); other errors are
// returned unchanged.
func (b *branch) userErr(op string, err error) error {
	if err == nil {
		return nil
	}
	var pe *pgconn.PgError
	if errors.As(err, &pe) && transientCode(pe.Code) {
		return drivers.NewError(b.r.name, op, b.xid, drivers.ErrConflict, err)
	}
	return err
}
