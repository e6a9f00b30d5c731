package postgres

import (
	"context"
	"errors"
	"fmt"
	"io"
	"testing"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/xabridge/xabridge/drivers"
)

// notSentErr mimics pgconn's errors that are known to happen before any
// byte was sent.
type notSentErr struct{}

func (notSentErr) Error() string     { return "conn busy" }
func (notSentErr) SafeToRetry() bool { return true }

// The mapping from what the server (or the network) said to a class, for
// the cases a live server cannot be made to produce on demand (a "busy"
// gid, a permission error, a PANIC).
func TestFinishErrClasses(t *testing.T) {
	r := &Resource{name: "pg"}
	pg := func(sev, code, msg string) error {
		return fmt.Errorf("wrapped: %w", &pgconn.PgError{Severity: sev, SeverityUnlocalized: sev, Code: code, Message: msg})
	}
	cases := []struct {
		name string
		err  error
		want error
	}{
		{"does not exist", pg("ERROR", "42704", `prepared transaction with identifier "g" does not exist`), drivers.ErrNotFound},
		{"busy", pg("ERROR", "55000", `prepared transaction with identifier "g" is busy`), drivers.ErrBusy},
		{"other role", pg("ERROR", "42501", "permission denied to finish prepared transaction"), drivers.ErrFailed},
		{"other database", pg("ERROR", "0A000", "prepared transaction belongs to another database"), drivers.ErrFailed},
		{"inside a block", pg("ERROR", "25001", "COMMIT PREPARED cannot run inside a transaction block"), drivers.ErrFailed},
		{"cancelled", pg("ERROR", "57014", "canceling statement due to user request"), drivers.ErrRetryable},
		{"fatal mid-statement", pg("FATAL", "XX000", "server closed the connection"), drivers.ErrInDoubt},
		{"terminated", pg("FATAL", "57P01", "terminating connection due to administrator command"), drivers.ErrInDoubt},
		{"panic", pg("PANIC", "XX000", "could not write"), drivers.ErrInDoubt},
		{"not sent", notSentErr{}, drivers.ErrRetryable},
		{"network", io.ErrUnexpectedEOF, drivers.ErrInDoubt},
		{"context", context.DeadlineExceeded, drivers.ErrInDoubt},
		{"bad tag", fmt.Errorf("%w: x", errBadTag), drivers.ErrInDoubt},
	}
	for _, c := range cases {
		err := r.finishErr("commit", drivers.XID{}, c.err)
		if got := drivers.Classify(err); got != c.want {
			t.Errorf("%s: class %v, want %v (%v)", c.name, got, c.want, err)
		}
		var de *drivers.Error
		if !errors.As(err, &de) || !errors.Is(err, c.err) {
			t.Errorf("%s: %v does not wrap the cause as a *drivers.Error", c.name, err)
		}
	}
}

func TestNoEffectKind(t *testing.T) {
	cases := []struct {
		err  error
		want error
	}{
		{&pgconn.PgError{Severity: "FATAL", Code: "28P01"}, drivers.ErrFailed},    // bad password
		{&pgconn.PgError{Severity: "FATAL", Code: "3D000"}, drivers.ErrFailed},    // no such database
		{&pgconn.PgError{Severity: "FATAL", Code: "53300"}, drivers.ErrRetryable}, // too many clients
		{&pgconn.PgError{Severity: "FATAL", Code: "57P03"}, drivers.ErrRetryable}, // starting up
		{&pgconn.PgError{Severity: "FATAL", Code: "57P01"}, drivers.ErrRetryable}, // terminated
		{io.ErrUnexpectedEOF, drivers.ErrRetryable},
	}
	for _, c := range cases {
		if got := noEffectKind(c.err); got != c.want {
			t.Errorf("%v: %v, want %v", c.err, got, c.want)
		}
	}
}

func TestIsDisabled(t *testing.T) {
	en := &pgconn.PgError{Code: "55000", Message: "prepared transactions are disabled", Hint: "Set max_prepared_transactions to a nonzero value."}
	de := &pgconn.PgError{Code: "55000", Message: "vorbereitete Transaktionen sind abgeschaltet", Hint: "Setzen Sie max_prepared_transactions auf einen Wert höher als null."}
	busy := &pgconn.PgError{Code: "55000", Message: `prepared transaction with identifier "g" is busy`}
	if !isDisabled(en) || !isDisabled(de) || isDisabled(busy) {
		t.Errorf("isDisabled: en %v de %v busy %v", isDisabled(en), isDisabled(de), isDisabled(busy))
	}
}

// A refusal caused by a serialization failure is a refusal (Classify) and
// retryable (xa.Retryable looks for ErrRetryable anywhere in the chain).
func TestWithTransient(t *testing.T) {
	pe := &pgconn.PgError{Severity: "ERROR", Code: "40001"}
	err := drivers.NewError("pg", "prepare", drivers.XID{}, drivers.ErrRefused, withTransient(pe, pe))
	if drivers.Classify(err) != drivers.ErrRefused || !errors.Is(err, drivers.ErrRetryable) || !errors.Is(err, pe) {
		t.Errorf("withTransient: %v", err)
	}
	uv := &pgconn.PgError{Severity: "ERROR", Code: "23505"}
	if errors.Is(withTransient(uv, uv), drivers.ErrRetryable) {
		t.Error("a unique violation became retryable")
	}
}

// Only pgx's constants reach the BEGIN text.
func TestBeginSQL(t *testing.T) {
	ok := map[pgx.TxOptions]string{
		{}:                           "BEGIN",
		{IsoLevel: pgx.Serializable}: "BEGIN ISOLATION LEVEL serializable",
		{IsoLevel: pgx.RepeatableRead, AccessMode: pgx.ReadOnly, DeferrableMode: pgx.Deferrable}: "BEGIN ISOLATION LEVEL repeatable read read only deferrable",
	}
	for o, want := range ok {
		if got, err := beginSQL(o); err != nil || got != want {
			t.Errorf("beginSQL(%+v) = %q, %v; want %q", o, got, err, want)
		}
	}
	for _, o := range []pgx.TxOptions{
		{IsoLevel: "serializable; DROP TABLE t"},
		{AccessMode: "read write; --"},
		{DeferrableMode: "x"},
		{BeginQuery: "BEGIN"},
		{CommitQuery: "COMMIT"},
	} {
		if got, err := beginSQL(o); err == nil {
			t.Errorf("beginSQL(%+v) = %q, want an error", o, got)
		}
	}
}
