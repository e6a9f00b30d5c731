package crashcheck

import (
	"context"
	"errors"
	"fmt"
	"sort"

	"github.com/xabridge/xabridge/decisionlog"
	"github.com/xabridge/xabridge/drivers"
	"github.com/xabridge/xabridge/internal/bank"
)

// Expect is what the invariant check compares the databases against.
type Expect struct {
	// Node is the coordinator node whose branches and log are checked.
	Node string
	// Nodes are more nodes checked like Node (several coordinator
	// processes on one shared store).
	Nodes []string
	// Total is the money in both databases before the scenario.
	Total int64
	// Journal, if set, is what the workload's callers were told: a
	// transfer reported committed (or commit-pending) must be in both
	// databases, one reported aborted in neither.
	Journal Journal
	// Entries, if set, is the decision log: a commit decision must be in
	// both databases, an abort record in neither, and every transfer of
	// Node in the databases must have a commit decision (unless
	// LogCompacted: compaction drops finished transactions).
	Entries      []decisionlog.Entry
	LogCompacted bool
	// Kept are the transfers whose commit decision, if any, was kept in a
	// participant's table rather than the log (runs with a keeper): their
	// absence from the log is no violation.
	Kept map[string]bool
	// Foreign, if set, are prepared transactions of another application
	// that must still be there, untouched: Intact reports a violation with
	// an error matching ErrForeignTouched.
	Foreign interface {
		Intact(ctx context.Context) error
	}
}

// ErrForeignTouched is returned by an Expect.Foreign's Intact when a
// foreign prepared transaction was finished by someone.
var ErrForeignTouched = errors.New("a foreign prepared transaction was finished by someone")

// Result is what the invariant check found.
type Result struct {
	// Transfers is the number of transfer ids in both databases.
	Transfers int
	// Stranded is the number of prepared branches of Node still on either
	// server.
	Stranded int
	// Violations describes every broken invariant; empty means all hold.
	Violations []string
}

// OK reports whether every invariant holds and nothing is stranded.
func (r Result) OK() bool { return len(r.Violations) == 0 && r.Stranded == 0 }

// Check verifies the invariants after a scenario: the total money is
// unchanged; every transfer id is in both databases or in neither (with the
// same amount); no prepared branch of e.Node remains; foreign prepared
// transactions are untouched; the decision log and the journal agree with
// the databases. An error means the check itself could not run.
func Check(ctx context.Context, b *bank.Bank, e Expect) (Result, error) {
	var r Result
	checked := map[string]bool{e.Node: true}
	for _, n := range e.Nodes {
		checked[n] = true
	}
	bad := func(format string, a ...any) { r.Violations = append(r.Violations, fmt.Sprintf(format, a...)) }

	st, err := b.Check(ctx)
	if err != nil {
		return r, err
	}
	if st.Total() != e.Total {
		bad("money not conserved: %d in both databases, %d at the start", st.Total(), e.Total)
	}
	if st.NetPG != st.NetMy {
		bad("transfer amounts differ: %d left PostgreSQL, %d arrived in MySQL", st.NetPG, st.NetMy)
	}
	for _, id := range st.OnlyPG {
		bad("atomicity: transfer %s only in PostgreSQL", id)
	}
	for _, id := range st.OnlyMy {
		bad("atomicity: transfer %s only in MySQL", id)
	}
	for _, id := range st.AmountMismatch {
		bad("atomicity: transfer %s has different amounts", id)
	}
	r.Transfers = st.PGTransfers - len(st.OnlyPG) - len(st.AmountMismatch)

	in, err := transferIDs(ctx, b)
	if err != nil {
		return r, err
	}

	for _, res := range []drivers.Resource{b.PG, b.My} {
		ps, err := res.Recover(ctx)
		if err != nil {
			return r, err
		}
		for _, p := range ps {
			if p.Ours && checked[p.XID.Global.Node()] {
				r.Stranded++
			}
		}
	}

	if e.Foreign != nil {
		if err := e.Foreign.Intact(ctx); errors.Is(err, ErrForeignTouched) {
			bad("%v", err)
		} else if err != nil {
			return r, err
		}
	}

	if e.Entries != nil {
		logged := map[string]decisionlog.State{}
		for _, en := range e.Entries {
			if !checked[en.GTRID.Node()] {
				continue
			}
			id := en.GTRID.String()
			logged[id] = en.State
			if en.Heuristic() {
				bad("log: %s has a heuristic (forced) outcome", id)
			}
			switch en.State {
			case decisionlog.StateCommitted, decisionlog.StateDone:
				if !in[id] {
					bad("log: %s has a commit decision but is not in the databases", id)
				}
			case decisionlog.StateAborted:
				if in[id] {
					bad("log: %s was recorded aborted but is in the databases", id)
				}
			}
		}
		if !e.LogCompacted {
			for _, id := range sortedKeys(in) {
				g, err := drivers.ParseGlobalID(id)
				if err != nil || !checked[g.Node()] || e.Kept[id] {
					continue
				}
				if s := logged[id]; s != decisionlog.StateCommitted && s != decisionlog.StateDone {
					bad("log: %s is in the databases but the log has no commit decision (state %s)", id, s)
				}
			}
		}
	}

	if e.Journal != nil {
		for _, id := range sortedKeys(e.Journal) {
			switch o := e.Journal[id]; o {
			case Committed, Pending:
				if !in[id] {
					bad("durability: %s was reported %s but is not in the databases", id, o)
				}
			case Aborted:
				if in[id] {
					bad("%s was reported aborted but is in the databases", id)
				}
			}
		}
	}
	return r, nil
}

// transferIDs returns the transfer ids present in both databases.
func transferIDs(ctx context.Context, b *bank.Bank) (map[string]bool, error) {
	q := "SELECT id FROM " + b.Table("transfers")
	pg := map[string]bool{}
	rows, err := b.PGPool.Query(ctx, q)
	if err != nil {
		return nil, fmt.Errorf("postgres: %w", err)
	}
	for rows.Next() {
		var id string
		if err := rows.Scan(&id); err != nil {
			rows.Close()
			return nil, fmt.Errorf("postgres: %w", err)
		}
		pg[id] = true
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("postgres: %w", err)
	}
	both := map[string]bool{}
	mrows, err := b.MyDB.QueryContext(ctx, q)
	if err != nil {
		return nil, fmt.Errorf("mysql: %w", err)
	}
	defer mrows.Close()
	for mrows.Next() {
		var id string
		if err := mrows.Scan(&id); err != nil {
			return nil, fmt.Errorf("mysql: %w", err)
		}
		if pg[id] {
			both[id] = true
		}
	}
	if err := mrows.Err(); err != nil {
		return nil, fmt.Errorf("mysql: %w", err)
	}
	return both, nil
}

func sortedKeys[V any](m map[string]V) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}

// TransferPresent reports whether the transfer id is in each database's
// transfers table.
func TransferPresent(ctx context.Context, b *bank.Bank, id string) (inPG, inMy bool, err error) {
	q := "SELECT count(*) FROM " + b.Table("transfers") + " WHERE id = "
	var n int
	if err := b.PGPool.QueryRow(ctx, q+"$1", id).Scan(&n); err != nil {
		return false, false, fmt.Errorf("postgres: %w", err)
	}
	inPG = n > 0
	if err := b.MyDB.QueryRowContext(ctx, q+"?", id).Scan(&n); err != nil {
		return false, false, fmt.Errorf("mysql: %w", err)
	}
	return inPG, n > 0, nil
}
