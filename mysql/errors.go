package mysql

import (
	"database/sql"
	"database/sql/driver"
	"errors"
	"fmt"

	mysqldriver "github.com/go-sql-driver/mysql"

	"github.com/xabridge/xabridge/drivers"
)

// MySQL/MariaDB error numbers the adapter acts on.
const (
	erLockWaitTimeout = 1205 // ER_LOCK_WAIT_TIMEOUT: the statement was rolled back; the branch lives on (innodb_rollback_on_timeout=OFF)
	erLockDeadlock    = 1213 // ER_LOCK_DEADLOCK: the whole branch was rolled back (XA state ROLLBACK ONLY)
	erAccessDenied    = 1227 // ER_SPECIFIC_ACCESS_DENIED_ERROR: e.g. XA RECOVER without XA_RECOVER_ADMIN (MySQL 8)
	erXAERNota        = 1397 // XAER_NOTA: unknown XID (on this session, or anywhere: see finishByXID)
	erXAERRMFail      = 1399 // XAER_RMFAIL: the session's XA state forbids the command
	erXARBRollback    = 1402 // XA_RBROLLBACK: the branch was rolled back
	erXARBTimeout     = 1613 // XA_RBTIMEOUT: rolled back, took too long
	erXARBDeadlock    = 1614 // XA_RBDEADLOCK: rolled back, deadlock

	// Errors that report the session itself being torn down while a
	// statement ran. The server did answer, but the statement's effect is as
	// unknown as after a lost connection, so they are treated like one.
	erServerShutdown    = 1053 // ER_SERVER_SHUTDOWN
	erQueryInterrupted  = 1317 // ER_QUERY_INTERRUPTED (KILL QUERY)
	erStatementTimeout  = 1969 // ER_STATEMENT_TIMEOUT (MariaDB max_statement_time: the same kill)
	erConnectionKilled  = 1927 // ER_CONNECTION_KILLED (MariaDB)
	erSessionWasKilled  = 3169 // ER_SESSION_WAS_KILLED (MySQL)
	erClientInterrupted = 4031 // ER_CLIENT_INTERACTION_TIMEOUT (MySQL 8.0.24+: idle session closed)
)

// serverError returns the server's error when the server received the
// statement, processed it and refused it: its effect is known (none, apart
// from what the error number itself says). Any other error (network, bad
// connection, context, a session being killed) leaves the effect unknown.
func serverError(err error) (*mysqldriver.MySQLError, bool) {
	var me *mysqldriver.MySQLError
	if !errors.As(err, &me) {
		return nil, false
	}
	switch me.Number {
	case erServerShutdown, erQueryInterrupted, erStatementTimeout, erConnectionKilled, erSessionWasKilled, erClientInterrupted:
		return me, false
	}
	return me, true
}

// isNumber reports whether err is a server error with one of the numbers.
func isNumber(err error, numbers ...uint16) bool {
	me, ok := serverError(err)
	if !ok {
		return false
	}
	for _, n := range numbers {
		if me.Number == n {
			return true
		}
	}
	return false
}

// isRolledBack reports the XA_RB* errors: the server rolled the branch back.
func isRolledBack(err error) bool {
	return isNumber(err, erXARBRollback, erXARBTimeout, erXARBDeadlock)
}

// notSent reports errors that prove the statement never left the client.
// database/sql's contract is that a driver returns driver.ErrBadConn only
// when the server cannot have performed the operation (go-sql-driver maps
// "nothing written" to it), and sql.ErrConnDone means the *sql.Conn was
// already closed, so nothing was attempted.
func notSent(err error) bool {
	return errors.Is(err, driver.ErrBadConn) || errors.Is(err, sql.ErrConnDone)
}

// transient is the error class of a deadlock or lock wait timeout: the
// global transaction can be run again as is. It is attached to refusals
// too (as a second wrapped error), so xa.Retryable sees a Prepare refused
// because of an earlier deadlock.
func transient(err error) bool {
	return isNumber(err, erLockDeadlock, erLockWaitTimeout, erXARBDeadlock, erXARBTimeout)
}

// withRetryable marks err as a conflict (drivers.ErrConflict, so
// retryable) while keeping it reachable.
func withRetryable(err error) error {
	if err == nil || errors.Is(err, drivers.ErrConflict) {
		return err
	}
	return fmt.Errorf("%w: %w", drivers.ErrConflict, err)
}

// isServerErr reports whether the server received and refused the statement.
func isServerErr(err error) bool { _, ok := serverError(err); return ok }
