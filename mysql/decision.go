package mysql

import (
	"context"
	"database/sql"
	"encoding/hex"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/xabridge/xabridge/decisionlog"
	"github.com/xabridge/xabridge/drivers"
)

// DecisionTable is the table a Resource keeps commit decisions in when it
// is a coordinator's decision keeper (xa.Config.DecisionResource). One row
// per global transaction: state 'C' is a commit decision (inserted by the
// keeper branch's own local transaction; its COMMIT is the decision), 'A'
// an abort marker written by recovery. The primary key makes the two
// exclude each other. Rows are deleted once phase 2 finishes.
const DecisionTable = "xabridge_decisions"

// decisionDDL creates DecisionTable. gtrid is drivers.GlobalID.String() (at
// most 59 bytes of [a-z0-9.-]), compared as bytes; participants is the JSON
// list of the other branches; decided_at is UTC.
const decisionDDL = `CREATE TABLE IF NOT EXISTS ` + DecisionTable + ` (
	gtrid        VARBINARY(64) NOT NULL PRIMARY KEY,
	state        CHAR(1) CHARACTER SET ascii COLLATE ascii_bin NOT NULL CHECK (state IN ('C', 'A')),
	participants BLOB NOT NULL,
	decided_at   DATETIME(6) NOT NULL
) ENGINE=InnoDB`

// MariaDB error numbers of the decision table.
const (
	erDupEntry    = 1062 // ER_DUP_ENTRY: the gtrid already has a row (recovery's abort marker)
	erBadNull     = 1048 // ER_BAD_NULL_ERROR: the guard of the decision INSERT fired (no transaction)
	erParseError  = 1064 // ER_PARSE_ERROR: "DO 1; DO 1" without multi-statements
	erNoSuchTable = 1146 // ER_NO_SUCH_TABLE
)

// decidedAtFormat is how decided_at is read back (DATE_FORMAT ... %f), so
// that the DSN's parseTime and loc settings do not matter.
const (
	decidedAtSQL    = `DATE_FORMAT(decided_at, '%Y-%m-%d %H:%i:%s.%f')`
	decidedAtLayout = "2006-01-02 15:04:05.000000"
)

var _ decisionlog.KeptBeginner = (*Resource)(nil)

// keeperState is what a Resource learns once about keeping decisions.
type keeperState struct {
	tableReady bool
	// multi: 0 not known yet, 1 the pool's sessions refuse several
	// statements in one query, 2 they accept them (the DSN's
	// multiStatements=true).
	multi int8
}

// gtridLiteral returns g's text form as an SQL string literal. Its
// alphabet ([a-z0-9.-], checked by Validate) cannot break the quoting.
func gtridLiteral(g drivers.GlobalID) (string, error) {
	if err := g.Validate(); err != nil {
		return "", err
	}
	return "'" + g.String() + "'", nil
}

// EnsureDecisionTable creates DecisionTable (InnoDB) if it does not exist.
// BeginKept (the coordinator's) calls it on first use; recovery never does
// (FenceAbort refuses a missing table); call it at setup when the account the
// coordinator runs as may not create tables (then create the table with a
// privileged account using the same statement, see DecisionTable).
func (r *Resource) EnsureDecisionTable(ctx context.Context) error {
	r.mu.Lock()
	ready := r.keep.tableReady
	r.mu.Unlock()
	if ready {
		return nil
	}
	conn, err := r.db.Conn(ctx)
	if err != nil {
		return r.errorf("create decision table", drivers.XID{}, drivers.ErrRetryable, err)
	}
	defer conn.Close() // DDL commits itself: the session is clean either way
	return r.ensureTable(ctx, conn)
}

// ensureTable creates DecisionTable on conn, a session outside any
// transaction (CREATE TABLE commits implicitly).
func (r *Resource) ensureTable(ctx context.Context, conn *sql.Conn) error {
	r.mu.Lock()
	ready := r.keep.tableReady
	r.mu.Unlock()
	if ready {
		return nil
	}
	if _, err := conn.ExecContext(ctx, decisionDDL); err != nil {
		// An account without the CREATE privilege is refused even when
		// the table exists; it only needs to use it.
		if !isServerErr(err) {
			return r.errorf("create decision table", drivers.XID{}, drivers.ErrRetryable, err)
		}
		if _, perr := conn.ExecContext(ctx, "SELECT 1 FROM "+DecisionTable+" LIMIT 0"); perr != nil {
			return r.errorf("create decision table", drivers.XID{}, classifyPlain(err), err)
		}
	}
	r.mu.Lock()
	r.keep.tableReady = true
	r.mu.Unlock()
	return nil
}

// multiStatements reports whether the pool's sessions accept several
// statements in one query, asking the server once per Resource on conn
// (outside any transaction): a harmless "DO 1; DO 1" succeeds only when
// the DSN enabled multiStatements. xabridge never turns them on itself.
func (r *Resource) multiStatements(ctx context.Context, conn *sql.Conn) (bool, error) {
	r.mu.Lock()
	m := r.keep.multi
	r.mu.Unlock()
	if m != 0 {
		return m == 2, nil
	}
	_, err := conn.ExecContext(ctx, "DO 1; DO 1")
	switch {
	case err == nil:
		m = 2
	case isNumber(err, erParseError):
		m = 1
	default:
		return false, err
	}
	r.mu.Lock()
	r.keep.multi = m
	r.mu.Unlock()
	return m == 2, nil
}

// BeginKept starts the decision keeper's branch (the coordinator calls it
// instead of Begin when this Resource is its xa.Config.DecisionResource):
// a plain local transaction, BEGIN on a pinned session, never XA. It
// creates DecisionTable on first use. The branch commits with
// CommitWithDecision (or CommitOnePhase when it is the only branch with
// writes); it cannot prepare.
//
// MariaDB only: MySQL has no @@in_transaction, which CommitWithDecision
// needs to tell that the local transaction is still the one BEGIN started
// (ErrUnsupported there; keep the decisions in MariaDB or PostgreSQL).
func (r *Resource) BeginKept(ctx context.Context, xid drivers.XID) (drivers.Branch, error) {
	const op = "begin-kept"
	if err := xid.Validate(); err != nil {
		return nil, r.errorf(op, drivers.XID{}, drivers.ErrFailed, err)
	}
	conn, err := r.db.Conn(ctx)
	if err != nil {
		return nil, r.errorf(op, xid, drivers.ErrRetryable, err)
	}
	fl, err := r.flavour(ctx, conn)
	if err != nil {
		discard(conn)
		return nil, r.errorf(op, xid, classifyPlain(err), fmt.Errorf("detecting the server flavour: %w", err))
	}
	if !fl.mariaDB {
		_ = conn.Close() // only SELECTs ran: clean
		return nil, r.errorf(op, xid, drivers.ErrUnsupported, fmt.Errorf(
			"server %s is not MariaDB: MySQL has no @@in_transaction, so a keeper could not tell that its local transaction ended under it; keep the decisions in MariaDB or PostgreSQL", fl.version))
	}
	// On the pinned session before BEGIN (CREATE TABLE commits, and the
	// pool may have no other connection to spare).
	if err := r.ensureTable(ctx, conn); err != nil {
		discard(conn)
		return nil, err
	}
	if _, err := r.multiStatements(ctx, conn); err != nil {
		discard(conn)
		return nil, r.errorf(op, xid, classifyPlain(err), fmt.Errorf("checking for multi-statement support: %w", err))
	}
	owner, err := r.sessionID(ctx, conn)
	if err != nil {
		discard(conn)
		return nil, r.errorf(op, xid, classifyPlain(err), fmt.Errorf("reading CONNECTION_ID(): %w", err))
	}
	b := &branch{r: r, xid: xid, xidSQL: xid.MySQL(), conn: conn, owner: owner.id, ownerBoot: owner.boot, state: stActive, local: true}
	b.user = &Branch{b: b}
	if _, err := conn.ExecContext(ctx, "BEGIN"); err != nil {
		discard(conn) // whatever BEGIN did dies with the session
		return nil, r.errorf(op, xid, classifyPlain(err), err)
	}
	return b, nil
}

// CommitWithDecision inserts the commit decision for g into DecisionTable
// inside b's local transaction and commits it. b must come from BeginKept.
// With multiStatements=true in the DSN the INSERT and the COMMIT travel in
// one query (the server skips the COMMIT if the INSERT fails); otherwise
// they take two round trips.
//
// The INSERT writes the row only inside a transaction (state is
// IF(@@in_transaction AND ..., 'C', NULL), NOT NULL): if MariaDB ended the
// transaction BEGIN started (a deadlock rolls it back and the session
// goes on in autocommit; DDL commits it implicitly), the decision is
// refused rather than committed with only part of the branch's work. It
// is refused too once the database's clock is lateDecision past the
// transaction's deadline: bytes held in a partition for many minutes must
// not commit a decision after recovery fenced the transaction and, 10
// minutes past its deadline, deleted the abort marker.
//
// ErrRefused: nothing committed (an abort marker for g exists, the
// transaction had ended, the server refused, or the COMMIT was never sent:
// the session is then dropped and the server rolls back). ErrInDoubt: the
// COMMIT was sent and its answer lost; LookupDecision or FenceAbort settles
// it.
func (r *Resource) CommitWithDecision(ctx context.Context, db drivers.Branch, g drivers.GlobalID, participants []decisionlog.Participant) error {
	const op = "commit-with-decision"
	b, ok := db.(*branch)
	if !ok || b.r != r {
		return r.errorf(op, db.XID(), drivers.ErrFailed, fmt.Errorf("got a %T, not a branch of this resource", db))
	}
	if g != b.xid.Global {
		return b.errorf(op, drivers.ErrFailed, fmt.Errorf("decision for %s on a branch of %s", g, b.xid.Global))
	}
	lit, err := gtridLiteral(g)
	if err != nil {
		return b.errorf(op, drivers.ErrFailed, err)
	}
	parts, err := decisionlog.EncodeDecision(decisionlog.Decision{Participants: participants, Label: b.xid.Label})
	if err != nil {
		return b.errorf(op, drivers.ErrFailed, err)
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	// A deadlock that only the application's rows reported: refuse as
	// after one the adapter saw (retryable, saying why) rather than leave
	// it to the INSERT's guard. One round trip, only after a query.
	b.verify()
	switch {
	case !b.local:
		return b.errorf(op, drivers.ErrFailed, errors.New("the branch is an XA branch (Begin); a decision keeper's branch comes from BeginKept"))
	case b.state != stActive:
		return b.errorf(op, drivers.ErrFailed, fmt.Errorf("the branch is already %s", b.out))
	case b.conn == nil:
		b.state, b.out = stDone, outRolledBack
		return b.refused(op, errors.New("the branch's session was lost; the server rolled it back"))
	case b.rbCause != nil:
		return b.refuseLocal(ctx, op, errors.New("the server rolled the transaction back"))
	}
	if cerr := context.Cause(ctx); cerr != nil {
		return b.refuseLocal(ctx, op, fmt.Errorf("INSERT and COMMIT not sent: %w", cerr))
	}
	insert := "INSERT INTO " + DecisionTable + " (gtrid, state, participants, decided_at) VALUES (" +
		lit + ", IF(@@in_transaction AND UTC_TIMESTAMP(6) < '" + g.Deadline().Add(lateDecision).UTC().Format(decidedAtLayout) +
		"', 'C', NULL), X'" + hex.EncodeToString(parts) + "', UTC_TIMESTAMP(6))"

	r.mu.Lock()
	multi := r.keep.multi == 2
	r.mu.Unlock()
	if multi {
		_, err = b.conn.ExecContext(ctx, insert+"; COMMIT")
	} else {
		_, err = b.conn.ExecContext(ctx, insert)
		if err != nil {
			if isServerErr(err) {
				// The INSERT failed and the COMMIT was not sent.
				return b.refuseLocal(ctx, op, decisionRefusal(g, err))
			}
			// The COMMIT was never sent: dropping the session makes the
			// server roll the transaction back, whatever the INSERT did.
			b.drop()
			b.state, b.out = stDone, outRolledBack
			return b.refused(op, fmt.Errorf("INSERT got no answer, COMMIT not sent; session dropped, so the server rolls back: %w", err))
		}
		if cerr := context.Cause(ctx); cerr != nil {
			return b.refuseLocal(ctx, op, fmt.Errorf("COMMIT not sent: %w", cerr))
		}
		_, err = b.conn.ExecContext(ctx, "COMMIT")
	}
	switch {
	case err == nil:
		b.finish(outCommitted)
		return nil
	case notSent(err):
		b.drop()
		b.state, b.out = stDone, outRolledBack
		return b.refused(op, fmt.Errorf("COMMIT not sent; session dropped, so the server rolls back: %w", err))
	case isServerErr(err):
		// The session answers: ask it what happened.
		return b.settleLocal(ctx, op, g, lit, err)
	}
	b.drop()
	b.state, b.out = stDone, outInDoubt
	return b.errorf(op, drivers.ErrInDoubt, err)
}

// lateDecision is how long past a transaction's deadline, by the database's
// clock, its decision may still be inserted: well under the 10 minutes
// recovery keeps an abort marker, well over the coordinator's own deadline
// check (so a coordinator clock up to this much behind the database's
// costs no refusals).
const lateDecision = 5 * time.Minute

// decisionRefusal explains a server error of the decision INSERT.
func decisionRefusal(g drivers.GlobalID, err error) error {
	switch {
	case isNumber(err, erDupEntry):
		return fmt.Errorf("recovery fenced the transaction out (an abort marker for %s is in %s): %w", g, DecisionTable, err)
	case isNumber(err, erBadNull):
		return fmt.Errorf("the keeper's local transaction had already ended (a deadlock or lock wait timeout rolled it back, or a statement such as DDL or COMMIT ended it), or the database's clock was %v past the transaction's deadline %s: %w",
			lateDecision, g.Deadline().UTC().Format(time.RFC3339), err)
	}
	return err
}

// refuseLocal rolls back the local transaction after a refusal; b.mu is
// held.
func (b *branch) refuseLocal(ctx context.Context, op string, err error) error {
	if b.rollbackSession(ctx, false) {
		b.release()
	}
	b.state, b.out = stDone, outRolledBack
	return b.refused(op, err)
}

// settleLocal finds out, on the branch's own session, whether the decision
// committed after a server error whose statement is not known (the INSERT
// or the COMMIT of a multi-statement query, or a failed COMMIT): it rolls
// back whatever is left and reads g's row. b.mu is held.
func (b *branch) settleLocal(ctx context.Context, op string, g drivers.GlobalID, lit string, cause error) error {
	cctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), cleanupTimeout)
	defer cancel()
	// Only after a successful ROLLBACK: inside the failed transaction the
	// SELECT would see the transaction's own uncommitted row.
	_, err := b.conn.ExecContext(cctx, "ROLLBACK")
	var state string
	if err == nil {
		err = b.conn.QueryRowContext(cctx, "SELECT state FROM "+DecisionTable+" WHERE gtrid = "+lit).Scan(&state)
	}
	switch {
	case err == nil && state == "C":
		b.finish(outCommitted)
		return nil
	case err == nil || errors.Is(err, sql.ErrNoRows) || isNumber(err, erNoSuchTable):
		b.finish(outRolledBack)
		return b.refused(op, decisionRefusal(g, cause))
	}
	b.drop()
	b.state, b.out = stDone, outInDoubt
	return b.errorf(op, drivers.ErrInDoubt, fmt.Errorf("%w; then, reading the decision back: %w", cause, err))
}

// prepareLocal refuses to prepare a keeper's local branch, rolling it
// back. b.mu is held.
func (b *branch) prepareLocal(ctx context.Context) error {
	const op = "prepare"
	if b.state != stActive {
		return b.errorf(op, drivers.ErrFailed, fmt.Errorf("the branch is already %s", b.out))
	}
	err := errors.New("a decision keeper's branch (BeginKept) is a local transaction: it commits with CommitWithDecision and cannot prepare; rolled back")
	if b.conn == nil {
		b.state, b.out = stDone, outRolledBack
		return b.refused(op, err)
	}
	return b.refuseLocal(ctx, op, err)
}

// commitLocalOnePhase commits a keeper's local branch without a decision
// (it is the only branch with writes). b.mu is held.
func (b *branch) commitLocalOnePhase(ctx context.Context) error {
	const op = "commit-one-phase"
	if b.rbCause != nil {
		return b.refuseLocal(ctx, op, errors.New("the server rolled the transaction back"))
	}
	if cerr := context.Cause(ctx); cerr != nil {
		return b.refuseLocal(ctx, op, fmt.Errorf("COMMIT not sent: %w", cerr))
	}
	// As the decision INSERT's guard does: a transaction MariaDB ended
	// under the branch must not be reported committed. This check also
	// does verify's work, so verify is not run first.
	var in int
	if err := b.conn.QueryRowContext(ctx, "SELECT @@in_transaction").Scan(&in); err != nil {
		if isServerErr(err) {
			return b.refuseLocal(ctx, op, err)
		}
		b.drop() // COMMIT not sent: the server rolls back
		b.state, b.out = stDone, outRolledBack
		return b.refused(op, err)
	}
	if in == 0 {
		if b.unverified {
			b.rbCause = errEndedReading // refused as verify would have it
		}
		return b.refuseLocal(ctx, op, errors.New("the local transaction had already ended (a deadlock or lock wait timeout rolled it back, or a statement such as DDL or COMMIT ended it)"))
	}
	_, err := b.conn.ExecContext(ctx, "COMMIT")
	switch {
	case err == nil:
		b.finish(outCommitted)
		return nil
	case notSent(err):
		b.drop()
		b.state, b.out = stDone, outRolledBack
		return b.refused(op, err)
	}
	// A COMMIT whose answer was lost, or that failed (which MariaDB does
	// not say rolled back): nothing on the server can tell afterwards.
	b.drop()
	b.state, b.out = stDone, outInDoubt
	return b.errorf(op, drivers.ErrInDoubt, err)
}

// LookupDecision reads g's row of DecisionTable. A missing table holds
// nothing.
func (r *Resource) LookupDecision(ctx context.Context, g drivers.GlobalID) (decisionlog.Decision, bool, error) {
	const op = "lookup-decision"
	lit, err := gtridLiteral(g)
	if err != nil {
		return decisionlog.Decision{}, false, r.errorf(op, drivers.XID{}, drivers.ErrFailed, err)
	}
	var (
		state, at string
		parts     []byte
	)
	err = r.db.QueryRowContext(ctx, "SELECT state, participants, "+decidedAtSQL+" FROM "+DecisionTable+" WHERE gtrid = "+lit).
		Scan(&state, &parts, &at)
	if err != nil {
		if errors.Is(err, sql.ErrNoRows) || isNumber(err, erNoSuchTable) {
			return decisionlog.Decision{}, false, nil
		}
		return decisionlog.Decision{}, false, r.errorf(op, drivers.XID{Global: g}, classifyPlain(err), err)
	}
	d := decisionlog.Decision{GTRID: g}
	if err := decodeKept(&d, state, parts, at); err != nil {
		return decisionlog.Decision{}, false, r.errorf(op, drivers.XID{Global: g}, drivers.ErrFailed, err)
	}
	return d, true, nil
}

// CheckDecisionTable returns an error wrapping
// decisionlog.ErrNoDecisionTable, naming the database, when DecisionTable
// does not exist in the session's database (or none is selected). It
// creates nothing.
func (r *Resource) CheckDecisionTable(ctx context.Context) error {
	const op = "check-decision-table"
	var (
		db sql.NullString
		n  int
	)
	err := r.db.QueryRowContext(ctx, "SELECT DATABASE(), (SELECT COUNT(*) FROM information_schema.TABLES WHERE TABLE_SCHEMA = DATABASE() AND TABLE_NAME = '"+
		DecisionTable+"')").Scan(&db, &n)
	if err != nil {
		return r.errorf(op, drivers.XID{}, classifyPlain(err), err)
	}
	if n == 0 {
		return r.noTableError(op, db)
	}
	return nil
}

// noDecisionTable is the error of op finding no DecisionTable, naming the
// database the session is in when it can be read.
func (r *Resource) noDecisionTable(ctx context.Context, op string) error {
	var db sql.NullString
	if err := r.db.QueryRowContext(ctx, "SELECT DATABASE()").Scan(&db); err != nil {
		db = sql.NullString{String: "?", Valid: true}
	}
	return r.noTableError(op, db)
}

func (r *Resource) noTableError(op string, db sql.NullString) error {
	where := fmt.Sprintf("in database %q", db.String)
	if !db.Valid {
		where = "(no database selected: the URL names none)"
	}
	return r.errorf(op, drivers.XID{}, drivers.ErrFailed,
		fmt.Errorf("%w %s %s: is this the keeper's database?", decisionlog.ErrNoDecisionTable, DecisionTable, where))
}

// FenceAbort inserts an abort marker for g unless g has a row, and reports
// the state of g's row either way, in one transaction on a fresh session.
// INSERT … ON DUPLICATE KEY UPDATE waits, on the row lock of the duplicate
// key, for a keeper whose decision INSERT has not committed yet, and then
// finds its row (or, if it rolled back, inserts the marker); the locking
// read that follows cannot miss a row committed meanwhile, and the row
// stays locked (so no ForgetDecisions deletes it) until the COMMIT.
func (r *Resource) FenceAbort(ctx context.Context, g drivers.GlobalID) (bool, error) {
	const op = "fence-abort"
	lit, err := gtridLiteral(g)
	if err != nil {
		return false, r.errorf(op, drivers.XID{}, drivers.ErrFailed, err)
	}
	xid := drivers.XID{Global: g}
	// Never EnsureDecisionTable here: recovery calls FenceAbort, and a
	// table it created would turn a keeper URL naming the wrong database
	// into "no decisions there" (see CheckDecisionTable).
	conn, err := r.db.Conn(ctx)
	if err != nil {
		return false, r.errorf(op, xid, drivers.ErrRetryable, err)
	}
	clean := false
	defer func() {
		if clean {
			_ = conn.Close()
		} else {
			discard(conn) // a transaction may be open: the server rolls it back
		}
	}()
	var state string
	for _, q := range []string{
		"BEGIN",
		"INSERT INTO " + DecisionTable + " (gtrid, state, participants, decided_at) VALUES (" + lit +
			", 'A', '', UTC_TIMESTAMP(6)) ON DUPLICATE KEY UPDATE state = state",
	} {
		if _, err := conn.ExecContext(ctx, q); err != nil {
			if isNumber(err, erNoSuchTable) {
				return false, r.noDecisionTable(ctx, op)
			}
			return false, r.errorf(op, xid, classifyPlain(err), err) // nothing committed
		}
	}
	if err := conn.QueryRowContext(ctx, "SELECT state FROM "+DecisionTable+" WHERE gtrid = "+lit+" FOR UPDATE").Scan(&state); err != nil {
		return false, r.errorf(op, xid, classifyPlain(err), err)
	}
	if _, err := conn.ExecContext(ctx, "COMMIT"); err != nil {
		if notSent(err) {
			return false, r.errorf(op, xid, drivers.ErrRetryable, err)
		}
		// The marker may or may not be committed (recovery leaves the
		// branch alone and fences again next pass).
		return false, r.errorf(op, xid, drivers.ErrInDoubt, err)
	}
	clean = true
	switch state {
	case "C":
		return true, nil
	case "A":
		return false, nil
	}
	return false, r.errorf(op, xid, drivers.ErrFailed, fmt.Errorf("%s holds state %q for %s", DecisionTable, state, g))
}

// ForgetDecisions deletes the rows of gs from DecisionTable in one
// statement. A missing table holds nothing to delete.
func (r *Resource) ForgetDecisions(ctx context.Context, gs []drivers.GlobalID) error {
	const op = "forget-decisions"
	if len(gs) == 0 {
		return nil
	}
	var q strings.Builder
	q.WriteString("DELETE FROM " + DecisionTable + " WHERE gtrid IN (")
	for i, g := range gs {
		lit, err := gtridLiteral(g)
		if err != nil {
			return r.errorf(op, drivers.XID{}, drivers.ErrFailed, err)
		}
		if i > 0 {
			q.WriteByte(',')
		}
		q.WriteString(lit)
	}
	q.WriteByte(')')
	if _, err := r.db.ExecContext(ctx, q.String()); err != nil && !isNumber(err, erNoSuchTable) {
		return r.errorf(op, drivers.XID{}, classifyPlain(err), err)
	}
	return nil
}

// ListDecisions returns every row of DecisionTable whose gtrid decodes,
// oldest first. A missing table holds nothing.
func (r *Resource) ListDecisions(ctx context.Context) ([]decisionlog.Decision, error) {
	const op = "list-decisions"
	rows, err := r.db.QueryContext(ctx, "SELECT gtrid, state, participants, "+decidedAtSQL+" FROM "+DecisionTable+" ORDER BY decided_at, gtrid")
	if err != nil {
		if isNumber(err, erNoSuchTable) {
			return nil, nil
		}
		return nil, r.errorf(op, drivers.XID{}, classifyPlain(err), err)
	}
	defer rows.Close()
	var out []decisionlog.Decision
	for rows.Next() {
		var (
			id, parts []byte
			state, at string
		)
		if err := rows.Scan(&id, &state, &parts, &at); err != nil {
			return nil, r.errorf(op, drivers.XID{}, drivers.ErrFailed, err)
		}
		g, err := drivers.ParseGlobalID(string(id))
		if err != nil {
			continue // not written by xabridge: never ours to act on
		}
		d := decisionlog.Decision{GTRID: g}
		if err := decodeKept(&d, state, parts, at); err != nil {
			return nil, r.errorf(op, drivers.XID{Global: g}, drivers.ErrFailed, err)
		}
		out = append(out, d)
	}
	if err := rows.Err(); err != nil {
		return nil, r.errorf(op, drivers.XID{}, classifyPlain(err), err)
	}
	return out, nil
}

// decodeKept fills d from a decision row's state, participants and time.
func decodeKept(d *decisionlog.Decision, state string, parts []byte, at string) error {
	t, err := time.ParseInLocation(decidedAtLayout, at, time.UTC)
	if err != nil {
		return fmt.Errorf("%s: decided_at of %s: %w", DecisionTable, d.GTRID, err)
	}
	dec, err := decisionlog.DecodeRow(DecisionTable, d.GTRID, state, parts)
	if err != nil {
		return err
	}
	dec.At = t
	*d = dec
	return nil
}
