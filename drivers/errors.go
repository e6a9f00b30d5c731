package drivers

import (
	"errors"
	"strings"
)

// The error classes adapters return. Every error an adapter returns from a
// Resource or Branch method is an *Error whose Kind is one of these, so the
// coordinator and recovery can decide with errors.Is alone.
var (
	// ErrInDoubt: the operation may or may not have taken effect (the
	// connection broke or the context ended while the server was working).
	// A branch in doubt is never treated as failed.
	ErrInDoubt = errors.New("outcome unknown")

	// ErrNotFound: no prepared branch with that XID exists on the resource
	// (it was already committed or rolled back, or never prepared).
	ErrNotFound = errors.New("no such prepared branch")

	// ErrBusy: the branch exists but cannot be finished right now (MariaDB:
	// its preparing session is still attached; PostgreSQL: another session is
	// finishing it). Try again later.
	ErrBusy = errors.New("prepared branch is busy")

	// ErrRefused: the branch could not prepare and has been rolled back
	// (a constraint failed, the transaction block was aborted, ...).
	ErrRefused = errors.New("branch refused to prepare")

	// ErrRetryable: the operation failed with no effect and can be tried
	// again as is (deadlock victim, serialization failure, lock timeout,
	// connection refused before anything was sent).
	ErrRetryable = errors.New("transient failure")

	// ErrConflict: the operation lost to a concurrent transaction (deadlock
	// victim, serialization failure, lock wait timeout) and the branch or
	// statement was rolled back; running the whole global transaction
	// again may succeed. It is a kind of ErrRetryable: errors.Is(err,
	// ErrRetryable) holds for it, and Classify reports ErrRetryable.
	ErrConflict error = conflictKind{}

	// ErrUnsupported: the server cannot take part in two-phase commit as
	// configured (for example max_prepared_transactions = 0).
	ErrUnsupported = errors.New("two-phase commit not available")

	// ErrFailed: the operation failed with no effect and retrying will not
	// help (permission denied, wrong database, invalid XID, ...).
	ErrFailed = errors.New("operation failed")
)

// conflictKind is ErrConflict's type: an error that is also ErrRetryable.
type conflictKind struct{}

func (conflictKind) Error() string        { return "conflict with a concurrent transaction" }
func (conflictKind) Is(target error) bool { return target == ErrRetryable }

// Error is the error type adapters return: which resource, which operation,
// which class, and the underlying driver error.
type Error struct {
	Resource string // resource name
	Op       string // "begin", "prepare", "commit", "rollback", "commit-one-phase", "recover", ...
	XID      string // the XID's gid form, if any
	Kind     error  // one of the Err* classes above
	Err      error  // the driver's error, may be nil
}

func (e *Error) Error() string {
	s := e.Resource + ": " + e.Op
	if e.XID != "" {
		s += " " + e.XID
	}
	s += ": " + e.Kind.Error()
	if e.Err != nil {
		s += ": " + e.Err.Error()
	}
	return OneLine(s)
}

// Unwrap returns both the class and the driver error, so errors.Is matches
// the class and errors.As finds the driver's own error type.
func (e *Error) Unwrap() []error {
	if e.Err == nil {
		return []error{e.Kind}
	}
	return []error{e.Kind, e.Err}
}

// NewError builds an *Error. kind must be one of the Err* classes.
func NewError(resource, op string, xid XID, kind, err error) *Error {
	e := &Error{Resource: resource, Op: op, Kind: kind, Err: err}
	if !xid.Global.IsZero() {
		e.XID = xid.GID()
	}
	return e
}

// Classify returns the class of err: one of the Err* values, or nil when err
// carries none (then the caller must assume the worst that fits its context).
func Classify(err error) error {
	for _, k := range []error{ErrInDoubt, ErrNotFound, ErrBusy, ErrRefused, ErrRetryable, ErrUnsupported, ErrFailed} {
		if errors.Is(err, k) {
			return k
		}
	}
	return nil
}

// Join is errors.Join on one line (OneLine): the errors' texts separated by "; ",
// since an error is shown as one line (a log record, a CLI message, a
// table cell). Nil errors are dropped; Join returns nil when all are nil.
// errors.Is and errors.As see every joined error.
func Join(errs ...error) error {
	var kept []error
	for _, err := range errs {
		if err != nil {
			kept = append(kept, err)
		}
	}
	if len(kept) == 0 {
		return nil
	}
	return joined(kept)
}

// joined is the error Join returns.
type joined []error

func (j joined) Error() string {
	s := j[0].Error()
	for _, err := range j[1:] {
		s += "; " + err.Error()
	}
	return OneLine(s)
}

func (j joined) Unwrap() []error { return j }

// OneLine returns s with its line breaks (and the blanks around them)
// replaced by "; ": a server or driver message may span lines (PostgreSQL's
// DETAIL and HINT), an error shown to an operator does not.
func OneLine(s string) string {
	if !strings.ContainsAny(s, "\r\n") {
		return s
	}
	var b strings.Builder
	for _, l := range strings.FieldsFunc(s, func(r rune) bool { return r == '\n' || r == '\r' }) {
		if l = strings.TrimSpace(l); l == "" {
			continue
		}
		if b.Len() > 0 {
			if strings.HasSuffix(b.String(), ":") {
				b.WriteString(" ") // "failed to connect:" then its causes
			} else {
				b.WriteString("; ")
			}
		}
		b.WriteString(l)
	}
	return b.String()
}
