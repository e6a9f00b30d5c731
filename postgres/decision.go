package postgres

import (
	"context"
	"errors"
	"fmt"
	"sync"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/xabridge/xabridge/decisionlog"
	"github.com/xabridge/xabridge/drivers"
)

// DecisionTable is the table a Resource keeps commit decisions in when it
// is a coordinator's decision keeper (xa.Config.DecisionResource). One row
// per global transaction: state 'C' is a commit decision (written in the
// keeper branch's own transaction; its commit is the decision), 'A' an abort
// marker written by recovery. The primary key makes the two exclude each
// other. Rows are deleted once phase 2 finishes.
const DecisionTable = "xabridge_decisions"

// decisionDDL creates DecisionTable. gtrid is drivers.GlobalID.String()
// (at most 59 bytes of [a-z0-9.-]).
const decisionDDL = `CREATE TABLE IF NOT EXISTS ` + DecisionTable + ` (
	gtrid        VARCHAR(64) PRIMARY KEY,
	state        CHAR(1)     NOT NULL CHECK (state IN ('C', 'A')),
	participants TEXT        NOT NULL,
	decided_at   TIMESTAMPTZ NOT NULL DEFAULT now()
)`

// SQLSTATEs of the decision table.
const (
	codeUniqueViolation = "23505"
	codeUndefinedTable  = "42P01"
	codeDuplicateTable  = "42P07"
)

var _ decisionlog.Keeper = (*Resource)(nil)

// decisionTable remembers that DecisionTable exists, so it is created once
// per Resource.
type decisionTable struct {
	mu    sync.Mutex
	ready bool
}

// EnsureDecisionTable creates DecisionTable if it does not exist. The
// coordinator's keeper methods (CommitWithDecision) call it on first use;
// recovery's never do (FenceAbort refuses a missing table). Call it at setup when the role the
// coordinator runs as may not create tables (then create the table with a
// privileged role using the same statement, see DecisionTable).
func (r *Resource) EnsureDecisionTable(ctx context.Context) error {
	r.decisions.mu.Lock()
	defer r.decisions.mu.Unlock()
	if r.decisions.ready {
		return nil
	}
	_, err := r.pool.Exec(ctx, decisionDDL)
	var pe *pgconn.PgError
	// Two sessions racing through CREATE TABLE IF NOT EXISTS can collide on
	// the catalog's unique index; the table exists either way.
	if err != nil && !(errors.As(err, &pe) && (pe.Code == codeUniqueViolation || pe.Code == codeDuplicateTable)) {
		return drivers.NewError(r.name, "create decision table", drivers.XID{}, noEffectKind(err), err)
	}
	r.decisions.ready = true
	return nil
}

// CommitWithDecision inserts the commit decision for g into DecisionTable
// inside b's transaction and commits it, both in one round trip (the INSERT
// and the COMMIT are pipelined; the server skips the COMMIT if the INSERT
// fails). An abort marker for g makes the INSERT fail with a unique
// violation: the branch rolls back and the error is ErrRefused.
func (r *Resource) CommitWithDecision(ctx context.Context, db drivers.Branch, g drivers.GlobalID, participants []decisionlog.Participant) error {
	b, ok := db.(*branch)
	if !ok || b.r != r {
		return drivers.NewError(r.name, "commit-with-decision", db.XID(), drivers.ErrFailed,
			fmt.Errorf("got a %T, not a branch of this resource", db))
	}
	if g != b.xid.Global {
		return b.errorf("commit-with-decision", drivers.ErrFailed, "decision for %s on a branch of %s", g, b.xid.Global)
	}
	if err := g.Validate(); err != nil {
		return b.wrap("commit-with-decision", drivers.ErrFailed, err)
	}
	parts, err := decisionlog.EncodeDecision(decisionlog.Decision{Participants: participants, Label: b.xid.Label})
	if err != nil {
		return b.wrap("commit-with-decision", drivers.ErrFailed, err)
	}
	// Before taking the branch lock: it may run a statement on another
	// connection, and the branch's own connection is still mid-transaction.
	if err := r.EnsureDecisionTable(ctx); err != nil {
		b.mu.Lock()
		defer b.mu.Unlock()
		if b.state == stActive {
			cctx, cancel := cleanupCtx(ctx)
			b.rollbackActive(cctx)
			cancel()
		}
		return b.wrap("commit-with-decision", drivers.ErrRefused, err)
	}

	b.mu.Lock()
	defer b.mu.Unlock()
	if b.state != stActive {
		return b.errorf("commit-with-decision", drivers.ErrFailed, "branch is %s", b.state)
	}
	if b.escaped() {
		return b.errEscaped("commit-with-decision")
	}
	// A pgx batch rather than a raw pipeline: the connection's statement
	// cache then prepares the INSERT once per connection, so the server
	// only binds and executes it. One round trip, one Sync; after an error
	// the server skips the rest up to the Sync, so a failed INSERT never
	// reaches COMMIT.
	batch := &pgx.Batch{}
	if !b.begun {
		// The keeper ran nothing: its transaction holds only the decision.
		batch.Queue(b.r.beginSQL)
	}
	batch.Queue(`INSERT INTO `+DecisionTable+` (gtrid, state, participants) VALUES ($1, 'C', $2)`, g.String(), string(parts))
	batch.Queue("COMMIT")
	begun := b.begun
	b.begun = true // from here on the session may be in a transaction
	br := b.conn.SendBatch(ctx, batch)
	var tag pgconn.CommandTag
	if !begun {
		_, err = br.Exec()
	}
	if err == nil {
		_, err = br.Exec()
	}
	if err == nil {
		tag, err = br.Exec()
	}
	if cerr := br.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		if done, err := b.endByCommitTag("commit-with-decision", tag); done {
			return err
		}
		err = checkTag(tag, "COMMIT")
	}
	f, pe := fateOf(err)
	switch {
	case errors.Is(err, errBadTag) || f == unknown:
		discard(b.takeConn())
		b.state = stOnePhaseInDoubt
		return b.wrap("commit-with-decision", drivers.ErrInDoubt, err)
	case f == notSent:
		discard(b.takeConn())
		b.state = stRolledBack
		return b.wrap("commit-with-decision", drivers.ErrRefused, fmt.Errorf("INSERT and COMMIT not sent, transaction rolled back: %w", err))
	default:
		// An ERROR from the INSERT (the COMMIT was then skipped) or from
		// the COMMIT (which then rolled back): nothing committed.
		cctx, cancel := cleanupCtx(ctx)
		b.rollbackActive(cctx)
		cancel()
		if pe.Code == codeUniqueViolation {
			return b.wrap("commit-with-decision", drivers.ErrRefused,
				fmt.Errorf("recovery fenced the transaction out (an abort marker for %s is in %s): %w", g, DecisionTable, err))
		}
		return b.wrap("commit-with-decision", drivers.ErrRefused, withTransient(err, pe))
	}
}

// LookupDecision reads g's row of DecisionTable. A missing table holds
// nothing.
func (r *Resource) LookupDecision(ctx context.Context, g drivers.GlobalID) (decisionlog.Decision, bool, error) {
	var (
		state, parts string
		d            decisionlog.Decision
	)
	err := r.pool.QueryRow(ctx, `SELECT state, participants, decided_at FROM `+DecisionTable+` WHERE gtrid = $1`,
		g.String()).Scan(&state, &parts, &d.At)
	if err != nil {
		if errors.Is(err, pgx.ErrNoRows) || isUndefinedTable(err) {
			return decisionlog.Decision{}, false, nil
		}
		return decisionlog.Decision{}, false, drivers.NewError(r.name, "lookup-decision", drivers.XID{Global: g}, noEffectKind(err), err)
	}
	d.GTRID = g
	if err := decodeKept(&d, state, parts); err != nil {
		return decisionlog.Decision{}, false, drivers.NewError(r.name, "lookup-decision", drivers.XID{Global: g}, drivers.ErrFailed, err)
	}
	return d, true, nil
}

// CheckDecisionTable returns an error wrapping
// decisionlog.ErrNoDecisionTable, naming the database, when DecisionTable
// does not exist where r's sessions look for it. It creates nothing.
func (r *Resource) CheckDecisionTable(ctx context.Context) error {
	var (
		db     string
		exists bool
	)
	if err := r.pool.QueryRow(ctx, `SELECT current_database(), to_regclass($1) IS NOT NULL`, DecisionTable).Scan(&db, &exists); err != nil {
		return drivers.NewError(r.name, "check-decision-table", drivers.XID{}, noEffectKind(err), err)
	}
	if !exists {
		return noDecisionTable(r.name, "check-decision-table", db)
	}
	return nil
}

// noDecisionTable is the error of op finding no DecisionTable, naming the
// database the session is in when it can be read.
func (r *Resource) noDecisionTable(ctx context.Context, op string) error {
	var db string
	if err := r.pool.QueryRow(ctx, `SELECT current_database()`).Scan(&db); err != nil {
		db = "?"
	}
	return noDecisionTable(r.name, op, db)
}

func noDecisionTable(name, op, db string) error {
	return drivers.NewError(name, op, drivers.XID{}, drivers.ErrFailed,
		fmt.Errorf("%w %s in database %q: is this the keeper's database?", decisionlog.ErrNoDecisionTable, DecisionTable, db))
}

// FenceAbort inserts an abort marker for g unless a row for g exists, and
// returns the state of g's row either way. ON CONFLICT DO UPDATE (a no-op
// update) is used rather than DO NOTHING because it waits for a concurrent
// CommitWithDecision to end and then sees the row it committed, even one
// committed after this statement's snapshot was taken.
func (r *Resource) FenceAbort(ctx context.Context, g drivers.GlobalID) (bool, error) {
	if err := g.Validate(); err != nil {
		return false, drivers.NewError(r.name, "fence-abort", drivers.XID{}, drivers.ErrFailed, err)
	}
	// Never EnsureDecisionTable here: recovery calls FenceAbort, and a
	// table it created would turn a keeper URL naming the wrong database
	// into "no decisions there" (see CheckDecisionTable).
	var state string
	err := r.pool.QueryRow(ctx, `INSERT INTO `+DecisionTable+` AS d (gtrid, state, participants) VALUES ($1, 'A', '')
		ON CONFLICT (gtrid) DO UPDATE SET state = d.state RETURNING d.state`, g.String()).Scan(&state)
	if err != nil {
		kind := drivers.ErrInDoubt
		if f, _ := fateOf(err); f != unknown {
			kind = noEffectKind(err)
		}
		if isUndefinedTable(err) {
			return false, r.noDecisionTable(ctx, "fence-abort")
		}
		return false, drivers.NewError(r.name, "fence-abort", drivers.XID{Global: g}, kind, err)
	}
	switch state {
	case "C":
		return true, nil
	case "A":
		return false, nil
	}
	return false, drivers.NewError(r.name, "fence-abort", drivers.XID{Global: g}, drivers.ErrFailed,
		fmt.Errorf("%s holds state %q for %s", DecisionTable, state, g))
}

// ForgetDecisions deletes the rows of gs from DecisionTable in one
// statement.
func (r *Resource) ForgetDecisions(ctx context.Context, gs []drivers.GlobalID) error {
	if len(gs) == 0 {
		return nil
	}
	ids := make([]string, len(gs))
	for i, g := range gs {
		ids[i] = g.String()
	}
	_, err := r.pool.Exec(ctx, `DELETE FROM `+DecisionTable+` WHERE gtrid = ANY($1)`, ids)
	if err != nil && !isUndefinedTable(err) {
		return drivers.NewError(r.name, "forget-decisions", drivers.XID{}, noEffectKind(err), err)
	}
	return nil
}

// ListDecisions returns every row of DecisionTable whose gtrid decodes,
// oldest first. A missing table holds nothing.
func (r *Resource) ListDecisions(ctx context.Context) ([]decisionlog.Decision, error) {
	rows, err := r.pool.Query(ctx, `SELECT gtrid, state, participants, decided_at FROM `+DecisionTable+` ORDER BY decided_at, gtrid`)
	if err != nil {
		if isUndefinedTable(err) {
			return nil, nil
		}
		return nil, drivers.NewError(r.name, "list-decisions", drivers.XID{}, noEffectKind(err), err)
	}
	defer rows.Close()
	var out []decisionlog.Decision
	for rows.Next() {
		var (
			id, state, parts string
			d                decisionlog.Decision
		)
		if err := rows.Scan(&id, &state, &parts, &d.At); err != nil {
			return nil, drivers.NewError(r.name, "list-decisions", drivers.XID{}, drivers.ErrFailed, err)
		}
		g, err := drivers.ParseGlobalID(id)
		if err != nil {
			continue // not written by xabridge: never ours to act on
		}
		d.GTRID = g
		if err := decodeKept(&d, state, parts); err != nil {
			return nil, drivers.NewError(r.name, "list-decisions", drivers.XID{Global: g}, drivers.ErrFailed, err)
		}
		out = append(out, d)
	}
	if err := rows.Err(); err != nil {
		if isUndefinedTable(err) {
			return nil, nil
		}
		return nil, drivers.NewError(r.name, "list-decisions", drivers.XID{}, noEffectKind(err), err)
	}
	return out, nil
}

// decodeKept fills d from a decision row's state and participants.
func decodeKept(d *decisionlog.Decision, state, parts string) error {
	dec, err := decisionlog.DecodeRow(DecisionTable, d.GTRID, state, []byte(parts))
	if err != nil {
		return err
	}
	dec.At = d.At
	*d = dec
	return nil
}

func isUndefinedTable(err error) bool {
	var pe *pgconn.PgError
	return errors.As(err, &pe) && pe.Code == codeUndefinedTable
}
