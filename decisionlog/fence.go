package decisionlog

import (
	"fmt"
	"time"

	"github.com/xabridge/xabridge/drivers"
)

// AdmitCommit is the fence rule, the one place it is written: may a commit
// decision for g be written at now, given what the store already holds for g
// (st)? It answers write = false with a nil error when the decision is
// already durable (a repeat changes nothing, and answering ErrFenced would
// be a lie once a commit is decided); an error wrapping ErrFenced, nothing
// to write, at or after g's deadline or once an abort is recorded; and
// write = true otherwise.
//
// The order matters: a repeat of a durable decision is checked before the
// deadline, the deadline before the abort.
func AdmitCommit(g drivers.GlobalID, now time.Time, st State) (write bool, err error) {
	switch {
	case st == StateCommitted || st == StateDone:
		return false, nil
	case !now.Before(g.Deadline()):
		return false, fmt.Errorf("decisionlog: commit %s: deadline %s reached (now %s): %w",
			g, g.Deadline().UTC().Format(time.RFC3339Nano), now.UTC().Format(time.RFC3339Nano), ErrFenced)
	case st == StateAborted:
		return false, fmt.Errorf("decisionlog: commit %s: an abort is recorded: %w", g, ErrFenced)
	}
	return true, nil
}
