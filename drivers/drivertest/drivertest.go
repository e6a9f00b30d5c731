// Package drivertest is the conformance suite every xabridge database
// adapter must pass. An adapter's own tests build a Harness around a real
// database and call Run; the suite then checks, against that database, the
// behaviour the coordinator and recovery rely on: prepared branches survive
// their connection, phase 2 is idempotent, unknown XIDs are reported as
// such, foreign prepared transactions are never touched, hostile XIDs never
// reach SQL, and every error carries a class.
//
// The suite uses only portable SQL (CREATE TABLE, INSERT, SELECT COUNT(*)),
// so the same checks run on PostgreSQL and MySQL/MariaDB. It creates one
// table, xab_conf_<random>, and drops it at the end; it never touches
// prepared transactions it did not create except through the Harness's own
// PrepareForeign cleanup.
package drivertest

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/xabridge/xabridge/drivers"
)

// Harness is what an adapter's tests hand to Run.
type Harness struct {
	// Resource returns the resource under test, on the test database. Run
	// calls it once and shares the resource across its subtests, so its
	// pool must allow at least a few connections.
	Resource func(t *testing.T) drivers.Resource

	// Exec runs a statement inside an active branch, through the adapter's
	// typed handle (the way application code would).
	Exec func(ctx context.Context, b drivers.Branch, sql string) error

	// SQL runs a plain statement outside any global transaction, on its own
	// connection (autocommit).
	SQL func(t *testing.T, sql string)

	// QueryInt returns the single integer result of a query run outside any
	// global transaction.
	QueryInt func(t *testing.T, sql string) int64

	// PrepareForeign leaves a prepared transaction that xabridge did not
	// create (another gid or formatID) and returns its id exactly as Recover
	// reports it in Prepared.ID, and a cleanup that finishes it. Optional.
	PrepareForeign func(t *testing.T) (id string, cleanup func())

	// Refuse makes an active branch unable to prepare (PostgreSQL: run a
	// failing statement, which aborts the block). It returns nil once the
	// branch is in that state. Optional.
	Refuse func(ctx context.Context, b drivers.Branch) error

	// SessionBound says a prepared branch stays bound to the session that
	// prepared it until that session closes (MariaDB), so finishing it by
	// XID from another session may answer ErrBusy for a moment after Close.
	SessionBound bool
}

// NodeID is the coordinator node id in every XID NewXID makes.
const NodeID = "conftest"

// NewXID returns a fresh, valid XID for tests: node NodeID, begun now,
// a random sequence number and a deadline one hour ahead. Its times have
// millisecond precision in UTC, exactly as the codecs decode them, so an
// XID read back from Recover compares equal with ==.
func NewXID() drivers.XID {
	now := time.Now().UnixMilli()
	return drivers.XID{Global: drivers.MustGlobalID(NodeID, time.UnixMilli(now).UTC(), rand.Uint32(), time.UnixMilli(now+time.Hour.Milliseconds()).UTC())}
}

// opTimeout bounds every call into the adapter, so a leaked connection or a
// lock wait shows up as a failure instead of a hung test.
const opTimeout = 10 * time.Second

// suite is the state shared by Run's subtests.
type suite struct {
	h     Harness
	r     drivers.Resource
	table string
	ids   atomic.Int64
}

// Run runs the conformance suite against h. Every subtest asserts exactly
// the behaviour it names.
func Run(t *testing.T, h Harness) {
	t.Helper()
	if h.Resource == nil || h.Exec == nil || h.SQL == nil || h.QueryInt == nil {
		t.Fatal("drivertest: Harness.Resource, Exec, SQL and QueryInt are required")
	}
	s := &suite{h: h, r: h.Resource(t)}
	s.table = fmt.Sprintf("xab_conf_%08x", rand.Uint32())
	h.SQL(t, "CREATE TABLE "+s.table+" (id BIGINT PRIMARY KEY, v BIGINT NOT NULL)")
	t.Cleanup(func() { h.SQL(t, "DROP TABLE "+s.table) })

	// The foreign prepared transaction lives through every subtest: none of
	// them may touch it, which the last check below proves.
	var foreignID string
	if h.PrepareForeign != nil {
		id, cleanup := h.PrepareForeign(t)
		foreignID = id
		defer cleanup()
	}

	t.Run("CommitMakesRowsVisible", s.testCommit)
	t.Run("RollbackPrepared", s.testRollbackPrepared)
	if !t.Run("RollbackActiveAndPoolStillWorks", s.testRollbackActive) {
		// Most likely a leaked connection: every later subtest would only
		// wait for the exhausted pool until it timed out.
		t.Fatal("stopping: the resource may be leaking connections")
	}
	t.Run("PrepareSurvivesDisconnect", s.testSurvivesDisconnect)
	t.Run("RollbackPreparedAfterDisconnect", s.testRollbackAfterDisconnect)
	t.Run("UnknownXIDNotFound", s.testUnknownXID)
	t.Run("CommitIdempotent", s.testCommitIdempotent)
	t.Run("OnePhaseCommit", s.testOnePhase)
	t.Run("ReadOnlyVote", s.testReadOnly)
	t.Run("Refused", s.testRefused)
	t.Run("Recover", func(t *testing.T) { s.testRecover(t, foreignID) })
	t.Run("InvalidXIDSendsNothing", s.testInvalidXID)
	t.Run("Limits", s.testLimits)
	t.Run("LabelledXID", s.testLabelledXID)
	t.Run("ConcurrentBranches", s.testConcurrent)
	t.Run("CancelDuringWork", s.testCancel)
	t.Run("Savepoints", s.testSavepoints)

	if foreignID != "" {
		t.Run("ForeignUntouched", func(t *testing.T) {
			p, ok := s.find(t, foreignID)
			if !ok {
				t.Fatalf("foreign prepared transaction %q is gone: the adapter touched it", foreignID)
			}
			if p.Ours {
				t.Errorf("foreign prepared transaction %q reported as ours", foreignID)
			}
		})
	}
}

func ctxT(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(t.Context(), opTimeout)
	t.Cleanup(cancel)
	return ctx
}

// nextID returns a row id no other subtest uses.
func (s *suite) nextID() int64 { return s.ids.Add(1) }

func (s *suite) insert(ctx context.Context, t *testing.T, b drivers.Branch, id int64) {
	t.Helper()
	if err := s.h.Exec(ctx, b, fmt.Sprintf("INSERT INTO %s (id, v) VALUES (%d, %d)", s.table, id, id)); err != nil {
		t.Fatalf("insert %d in branch %s: %v", id, b.XID(), err)
	}
}

func (s *suite) count(t *testing.T, ids ...int64) int64 {
	t.Helper()
	list := make([]string, len(ids))
	for i, id := range ids {
		list[i] = fmt.Sprint(id)
	}
	return s.h.QueryInt(t, fmt.Sprintf("SELECT COUNT(*) FROM %s WHERE id IN (%s)", s.table, strings.Join(list, ",")))
}

func (s *suite) wantRows(t *testing.T, want int64, ids ...int64) {
	t.Helper()
	if got := s.count(t, ids...); got != want {
		t.Errorf("rows %v visible outside the transaction: got %d, want %d", ids, got, want)
	}
}

func (s *suite) begin(ctx context.Context, t *testing.T) drivers.Branch {
	t.Helper()
	return s.beginXID(ctx, t, NewXID())
}

func (s *suite) beginXID(ctx context.Context, t *testing.T, xid drivers.XID) drivers.Branch {
	t.Helper()
	b, err := s.r.Begin(ctx, xid)
	noErr(t, "Begin", err)
	if b.XID() != xid {
		t.Fatalf("Branch.XID() = %v, want %v", b.XID(), xid)
	}
	t.Cleanup(func() {
		// Last resort for a failed subtest: leave nothing prepared behind.
		// It runs after the subtest's own ending, where Rollback is a no-op.
		ctx, cancel := context.WithTimeout(context.Background(), opTimeout)
		defer cancel()
		_ = b.Rollback(ctx)
		_ = b.Close()
	})
	return b
}

func (s *suite) prepare(ctx context.Context, t *testing.T, b drivers.Branch, want drivers.Vote) {
	t.Helper()
	v, err := b.Prepare(ctx)
	noErr(t, "Prepare", err)
	if v != want {
		t.Fatalf("Prepare voted %v, want %v", v, want)
	}
}

// recoverAll lists the resource's prepared transactions.
func (s *suite) recoverAll(t *testing.T) []drivers.Prepared {
	t.Helper()
	ps, err := s.r.Recover(ctxT(t))
	noErr(t, "Recover", err)
	return ps
}

// find looks a prepared transaction up by its database id.
func (s *suite) find(t *testing.T, id string) (drivers.Prepared, bool) {
	t.Helper()
	for _, p := range s.recoverAll(t) {
		if p.ID == id {
			return p, true
		}
	}
	return drivers.Prepared{}, false
}

// findXID looks one of our branches up by XID.
func (s *suite) findXID(t *testing.T, xid drivers.XID) (drivers.Prepared, bool) {
	t.Helper()
	for _, p := range s.recoverAll(t) {
		if p.Ours && p.XID == xid {
			return p, true
		}
	}
	return drivers.Prepared{}, false
}

func (s *suite) wantPrepared(t *testing.T, xid drivers.XID) {
	t.Helper()
	if _, ok := s.findXID(t, xid); !ok {
		t.Errorf("Recover does not list prepared branch %s", xid)
	}
}

func (s *suite) wantNotPrepared(t *testing.T, xids ...drivers.XID) {
	t.Helper()
	ps := s.recoverAll(t)
	for _, xid := range xids {
		for _, p := range ps {
			if p.Ours && p.XID == xid || p.ID == xid.GID() || strings.Contains(p.ID, xid.Global.String()) {
				t.Errorf("branch %s is still prepared (Recover: %+v)", xid, p)
			}
		}
	}
}

// finishByXID calls CommitPrepared or RollbackPrepared, retrying while the
// adapter answers ErrBusy on a session-bound server: the branch detaches
// from its closed session a moment after Close.
func (s *suite) finishByXID(ctx context.Context, t *testing.T, xid drivers.XID, commit bool) error {
	t.Helper()
	op := s.r.RollbackPrepared
	if commit {
		op = s.r.CommitPrepared
	}
	delay := time.Millisecond
	deadline := time.Now().Add(10 * time.Second)
	for {
		err := op(ctx, xid)
		if err == nil || !s.h.SessionBound || !errors.Is(err, drivers.ErrBusy) || time.Now().After(deadline) {
			return err
		}
		select {
		case <-ctx.Done():
			return err
		case <-time.After(delay):
		}
		delay = min(2*delay, 100*time.Millisecond)
	}
}

// ---------------------------------------------------------------- checks on errors

// noErr fails the test if err is not nil, and checks its shape if it is not.
func noErr(t *testing.T, what string, err error) {
	t.Helper()
	if err != nil {
		checkShape(t, what, err)
		t.Fatalf("%s: %v", what, err)
	}
}

// wantClass asserts err is an *drivers.Error of class kind.
func wantClass(t *testing.T, what string, err, kind error) {
	t.Helper()
	if err == nil {
		t.Errorf("%s: got nil error, want class %q", what, kind)
		return
	}
	checkShape(t, what, err)
	if got := drivers.Classify(err); got != kind {
		t.Errorf("%s: error class %v, want %q (error: %v)", what, got, kind, err)
	}
}

// checkShape asserts that every adapter error is an *drivers.Error with one
// of the classes.
func checkShape(t *testing.T, what string, err error) {
	t.Helper()
	var de *drivers.Error
	if !errors.As(err, &de) {
		t.Errorf("%s: error %v (%T) is not a *drivers.Error", what, err, err)
		return
	}
	if drivers.Classify(de.Kind) == nil {
		t.Errorf("%s: *drivers.Error has no class: %v", what, err)
	}
}

// ---------------------------------------------------------------- subtests

func (s *suite) testCommit(t *testing.T) {
	ctx := ctxT(t)
	b := s.begin(ctx, t)
	id := s.nextID()
	s.insert(ctx, t, b, id)
	s.prepare(ctx, t, b, drivers.VoteCommit)
	s.wantRows(t, 0, id) // prepared, not yet committed
	noErr(t, "Commit", b.Commit(ctx))
	s.wantRows(t, 1, id)
	noErr(t, "Close", b.Close())
	s.wantNotPrepared(t, b.XID())
}

// testSavepoints: SAVEPOINT, ROLLBACK TO SAVEPOINT (also after a failed
// statement) and RELEASE SAVEPOINT are the application's business inside a
// branch (ORMs nest transactions this way); the branch still prepares and
// commits what was not rolled back to a savepoint.
func (s *suite) testSavepoints(t *testing.T) {
	ctx := ctxT(t)
	b := s.begin(ctx, t)
	kept, undone, after := s.nextID(), s.nextID(), s.nextID()
	ins := func(id int64) string { return fmt.Sprintf("INSERT INTO %s (id, v) VALUES (%d, %d)", s.table, id, id) }
	for _, st := range []struct {
		sql  string
		fail bool
	}{
		{ins(kept), false},
		{"SAVEPOINT xab_conf_a", false},
		{ins(undone), false},
		{"ROLLBACK TO SAVEPOINT xab_conf_a", false},
		{"SAVEPOINT xab_conf_b", false},
		{ins(kept), true}, // duplicate key
		{"ROLLBACK TO SAVEPOINT xab_conf_b", false},
		{ins(after), false},
		{"RELEASE SAVEPOINT xab_conf_b", false},
		{"RELEASE SAVEPOINT xab_conf_a", false},
	} {
		err := s.h.Exec(ctx, b, st.sql)
		if st.fail {
			if err == nil {
				t.Fatalf("%s: no error", st.sql)
			}
			continue
		}
		noErr(t, st.sql, err)
	}
	s.prepare(ctx, t, b, drivers.VoteCommit)
	noErr(t, "Commit", b.Commit(ctx))
	noErr(t, "Close", b.Close())
	s.wantRows(t, 2, kept, undone, after)
	s.wantRows(t, 0, undone)
}

func (s *suite) testRollbackPrepared(t *testing.T) {
	ctx := ctxT(t)
	b := s.begin(ctx, t)
	id := s.nextID()
	s.insert(ctx, t, b, id)
	s.prepare(ctx, t, b, drivers.VoteCommit)
	noErr(t, "Rollback", b.Rollback(ctx))
	noErr(t, "Close", b.Close())
	s.wantRows(t, 0, id)
	s.wantNotPrepared(t, b.XID())
}

func (s *suite) testRollbackActive(t *testing.T) {
	ctx := ctxT(t)
	// More rounds than any test pool has connections: a connection leaked
	// by Rollback would exhaust the pool and time out here.
	var ids []int64
	for range 40 {
		b := s.begin(ctx, t)
		id := s.nextID()
		ids = append(ids, id)
		s.insert(ctx, t, b, id)
		noErr(t, "Rollback", b.Rollback(ctx))
		noErr(t, "Close", b.Close())
	}
	s.wantRows(t, 0, ids...)

	// The pool still hands out clean connections.
	b := s.begin(ctx, t)
	id := s.nextID()
	s.insert(ctx, t, b, id)
	s.prepare(ctx, t, b, drivers.VoteCommit)
	noErr(t, "Commit", b.Commit(ctx))
	noErr(t, "Close", b.Close())
	s.wantRows(t, 1, id)
}

func (s *suite) testSurvivesDisconnect(t *testing.T) {
	ctx := ctxT(t)
	b := s.begin(ctx, t)
	id := s.nextID()
	s.insert(ctx, t, b, id)
	s.prepare(ctx, t, b, drivers.VoteCommit)
	noErr(t, "Close", b.Close())
	s.wantPrepared(t, b.XID())
	s.wantRows(t, 0, id)
	noErr(t, "CommitPrepared after Close", s.finishByXID(ctx, t, b.XID(), true))
	s.wantRows(t, 1, id)
	s.wantNotPrepared(t, b.XID())
	wantClass(t, "CommitPrepared again", s.r.CommitPrepared(ctx, b.XID()), drivers.ErrNotFound)
}

func (s *suite) testRollbackAfterDisconnect(t *testing.T) {
	ctx := ctxT(t)
	b := s.begin(ctx, t)
	id := s.nextID()
	s.insert(ctx, t, b, id)
	s.prepare(ctx, t, b, drivers.VoteCommit)
	noErr(t, "Close", b.Close())
	s.wantPrepared(t, b.XID())
	noErr(t, "RollbackPrepared after Close", s.finishByXID(ctx, t, b.XID(), false))
	s.wantRows(t, 0, id)
	s.wantNotPrepared(t, b.XID())
	wantClass(t, "RollbackPrepared again", s.r.RollbackPrepared(ctx, b.XID()), drivers.ErrNotFound)
}

func (s *suite) testUnknownXID(t *testing.T) {
	ctx := ctxT(t)
	xid := NewXID()
	wantClass(t, "CommitPrepared(unknown)", s.r.CommitPrepared(ctx, xid), drivers.ErrNotFound)
	wantClass(t, "RollbackPrepared(unknown)", s.r.RollbackPrepared(ctx, xid), drivers.ErrNotFound)
}

func (s *suite) testCommitIdempotent(t *testing.T) {
	ctx := ctxT(t)
	b := s.begin(ctx, t)
	id := s.nextID()
	s.insert(ctx, t, b, id)
	s.prepare(ctx, t, b, drivers.VoteCommit)
	noErr(t, "Commit", b.Commit(ctx))
	noErr(t, "Commit again", b.Commit(ctx))
	wantClass(t, "CommitPrepared after Commit", s.r.CommitPrepared(ctx, b.XID()), drivers.ErrNotFound)
	noErr(t, "Close", b.Close())
	noErr(t, "Close again", b.Close())
	s.wantRows(t, 1, id)
}

func (s *suite) testOnePhase(t *testing.T) {
	ctx := ctxT(t)
	b := s.begin(ctx, t)
	id := s.nextID()
	s.insert(ctx, t, b, id)
	noErr(t, "CommitOnePhase", b.CommitOnePhase(ctx))
	noErr(t, "Close", b.Close())
	s.wantRows(t, 1, id)
	s.wantNotPrepared(t, b.XID())
}

func (s *suite) testReadOnly(t *testing.T) {
	ctx := ctxT(t)
	b := s.begin(ctx, t)
	s.prepare(ctx, t, b, drivers.VoteReadOnly)
	noErr(t, "Close", b.Close())
	s.wantNotPrepared(t, b.XID())
}

func (s *suite) testRefused(t *testing.T) {
	if s.h.Refuse == nil {
		t.Skip("Harness.Refuse not set")
	}
	ctx := ctxT(t)
	b := s.begin(ctx, t)
	id := s.nextID()
	s.insert(ctx, t, b, id)
	if err := s.h.Refuse(ctx, b); err != nil {
		t.Fatalf("Refuse: %v", err)
	}
	_, err := b.Prepare(ctx)
	wantClass(t, "Prepare after Refuse", err, drivers.ErrRefused)
	s.wantNotPrepared(t, b.XID())
	noErr(t, "Rollback after refusal", b.Rollback(ctx))
	noErr(t, "Close", b.Close())
	s.wantRows(t, 0, id)
}

func (s *suite) testRecover(t *testing.T, foreignID string) {
	ctx := ctxT(t)
	b := s.begin(ctx, t)
	id := s.nextID()
	s.insert(ctx, t, b, id)
	s.prepare(ctx, t, b, drivers.VoteCommit)

	var ours, foreign *drivers.Prepared
	ps := s.recoverAll(t)
	for i := range ps {
		p := &ps[i]
		if p.Ours && p.XID == b.XID() {
			ours = p
		}
		if p.ID == foreignID {
			foreign = p
		}
		if p.Ours && p.XID.Global.IsZero() {
			t.Errorf("Recover: entry %q is Ours but has no XID", p.ID)
		}
		if !p.Ours && !p.XID.Global.IsZero() && p.Note == "" {
			t.Errorf("Recover: entry %q carries an XID %v but is not ours, and no Note says why", p.ID, p.XID)
		}
	}
	if ours == nil {
		t.Errorf("Recover does not list our prepared branch %s as Ours", b.XID())
	} else if ours.XID != b.XID() {
		t.Errorf("Recover: XID %v, want exactly %v", ours.XID, b.XID())
	}
	if foreignID != "" {
		if foreign == nil {
			t.Errorf("Recover does not list the foreign prepared transaction %q", foreignID)
		} else if foreign.Ours {
			t.Errorf("Recover lists the foreign prepared transaction %q as Ours", foreignID)
		}
	}
	noErr(t, "Rollback", b.Rollback(ctx))
	noErr(t, "Close", b.Close())
	s.wantNotPrepared(t, b.XID())
}

func (s *suite) testInvalidXID(t *testing.T) {
	ctx := ctxT(t)
	// A GlobalID cannot carry hostile bytes (drivers.NewGlobalID refuses
	// them); the zero XID is the one invalid XID left to refuse.
	hostile := []drivers.XID{{}, {Branch: 1},
		// A label outside the label alphabet.
		{Global: NewXID().Global, Label: "x'); DROP TABLE t; --"}, {Global: NewXID().Global, Label: `a\'b`},
		{Global: NewXID().Global, Label: strings.Repeat("l", drivers.MaxLabelLen+1)}}
	for _, xid := range hostile {
		b, err := s.r.Begin(ctx, xid)
		if err == nil {
			_ = b.Rollback(ctx)
			_ = b.Close()
		}
		wantClass(t, fmt.Sprintf("Begin(%q)", xid.Global.Node()), err, drivers.ErrFailed)
		wantClass(t, fmt.Sprintf("CommitPrepared(%q)", xid.Global.Node()), s.r.CommitPrepared(ctx, xid), drivers.ErrFailed)
		wantClass(t, fmt.Sprintf("RollbackPrepared(%q)", xid.Global.Node()), s.r.RollbackPrepared(ctx, xid), drivers.ErrFailed)
	}
	if n := s.h.QueryInt(t, "SELECT COUNT(*) FROM "+s.table+" WHERE id < 0"); n != 0 {
		t.Errorf("count = %d", n)
	}
}

func (s *suite) testLimits(t *testing.T) {
	ctx := ctxT(t)
	now := time.Now().UnixMilli()
	xid := drivers.XID{
		Global: drivers.MustGlobalID("abcdefghijklmnopqrstuv-9", // MaxNodeIDLen characters
			time.UnixMilli(now).UTC(), ^uint32(0), time.UnixMilli(now+time.Hour.Milliseconds()).UTC()),
		Branch: 255,
	}
	if len(xid.Global.Node()) != drivers.MaxNodeIDLen {
		t.Fatalf("test bug: node id has %d characters", len(xid.Global.Node()))
	}
	b := s.beginXID(ctx, t, xid)
	id := s.nextID()
	s.insert(ctx, t, b, id)
	s.prepare(ctx, t, b, drivers.VoteCommit)
	s.wantPrepared(t, xid)
	noErr(t, "Commit", b.Commit(ctx))
	noErr(t, "Close", b.Close())
	s.wantRows(t, 1, id)
	s.wantNotPrepared(t, xid)
}

// testLabelledXID: a branch whose XID carries the longest label, in every
// character of the label alphabet, at the longest node id and the highest
// branch number, prepares, is listed by Recover with its label, and is
// finished by that XID after its session closed; the same branch without
// the label is another XID, unknown to the database.
func (s *suite) testLabelledXID(t *testing.T) {
	ctx := ctxT(t)
	now := time.Now().UnixMilli()
	alphabet := "ABCXYZabcxyz0189._:/#@+-"
	label := alphabet + strings.Repeat("L", drivers.MaxLabelLen-len(alphabet))
	xid := drivers.XID{
		Global: drivers.MustGlobalID("abcdefghijklmnopqrstuv-9",
			time.UnixMilli(now).UTC(), rand.Uint32(), time.UnixMilli(now+time.Hour.Milliseconds()).UTC()),
		Branch: 255,
		Label:  label,
	}
	b := s.beginXID(ctx, t, xid)
	id := s.nextID()
	s.insert(ctx, t, b, id)
	s.prepare(ctx, t, b, drivers.VoteCommit)
	noErr(t, "Close", b.Close())
	p, ok := s.findXID(t, xid)
	if !ok || p.XID.Label != label {
		t.Fatalf("Recover does not list the labelled branch %s (found %v: %+v)", xid, ok, p)
	}
	unlabelled := xid
	unlabelled.Label = ""
	wantClass(t, "CommitPrepared(without the label)", s.r.CommitPrepared(ctx, unlabelled), drivers.ErrNotFound)
	s.wantPrepared(t, xid)
	s.wantRows(t, 0, id)
	noErr(t, "CommitPrepared(labelled)", s.finishByXID(ctx, t, xid, true))
	s.wantRows(t, 1, id)
	s.wantNotPrepared(t, xid)
}

func (s *suite) testConcurrent(t *testing.T) {
	ctx := ctxT(t)
	const n = 16
	ids := make([]int64, n)
	xids := make([]drivers.XID, n)
	errs := make([]error, n)
	var wg sync.WaitGroup
	for i := range n {
		ids[i] = s.nextID()
		xids[i] = NewXID()
		wg.Go(func() {
			errs[i] = s.oneBranch(ctx, xids[i], ids[i])
		})
	}
	wg.Wait()
	for i, err := range errs {
		if err != nil {
			checkShape(t, fmt.Sprintf("branch %d", i), err)
			t.Errorf("branch %d: %v", i, err)
		}
	}
	s.wantRows(t, n, ids...)
	s.wantNotPrepared(t, xids...)
}

// oneBranch runs a whole branch (begin, insert, prepare, commit); it reports
// errors instead of failing so that it can run off the test goroutine.
func (s *suite) oneBranch(ctx context.Context, xid drivers.XID, id int64) (err error) {
	b, err := s.r.Begin(ctx, xid)
	if err != nil {
		return err
	}
	defer func() {
		if err != nil {
			_ = b.Rollback(context.WithoutCancel(ctx))
		}
		_ = b.Close()
	}()
	if err := s.h.Exec(ctx, b, fmt.Sprintf("INSERT INTO %s (id, v) VALUES (%d, %d)", s.table, id, id)); err != nil {
		return fmt.Errorf("insert: %w", err)
	}
	v, err := b.Prepare(ctx)
	if err != nil {
		return err
	}
	if v != drivers.VoteCommit {
		return fmt.Errorf("prepare voted %v, want %v", v, drivers.VoteCommit)
	}
	return b.Commit(ctx)
}

func (s *suite) testCancel(t *testing.T) {
	ctx := ctxT(t)
	id, locked := s.nextID(), s.nextID()
	s.h.SQL(t, fmt.Sprintf("INSERT INTO %s (id, v) VALUES (%d, 0)", s.table, locked))

	// The holder keeps a row lock, so the victim's UPDATE waits on it; the
	// victim's context ends during that wait, i.e. during work.
	holder := s.begin(ctx, t)
	if err := s.h.Exec(ctx, holder, fmt.Sprintf("UPDATE %s SET v = 1 WHERE id = %d", s.table, locked)); err != nil {
		t.Fatalf("holder update: %v", err)
	}
	victim := s.begin(ctx, t)
	s.insert(ctx, t, victim, id)
	wctx, cancel := context.WithTimeout(ctx, 300*time.Millisecond)
	err := s.h.Exec(wctx, victim, fmt.Sprintf("UPDATE %s SET v = 2 WHERE id = %d", s.table, locked))
	cancel()
	if err == nil {
		t.Fatal("UPDATE of a locked row returned before its context ended")
	}

	// Rollback gets a fresh context, as the coordinator gives it.
	noErr(t, "Rollback after cancelled work", victim.Rollback(ctx))
	noErr(t, "Close", victim.Close())
	noErr(t, "holder Rollback", holder.Rollback(ctx))
	noErr(t, "holder Close", holder.Close())
	s.wantRows(t, 0, id)
	s.wantNotPrepared(t, victim.XID(), holder.XID())
	if v := s.h.QueryInt(t, fmt.Sprintf("SELECT v FROM %s WHERE id = %d", s.table, locked)); v != 0 {
		t.Errorf("locked row has v = %d, want 0 (both branches rolled back)", v)
	}

	// A context already cancelled when the work starts: the statement
	// fails, and Rollback with that same dead context still cleans up
	// (a connection in an open transaction never goes back to the pool).
	dead := s.begin(ctx, t)
	id2 := s.nextID()
	s.insert(ctx, t, dead, id2)
	cctx, cancel2 := context.WithCancel(ctx)
	cancel2()
	if err := s.h.Exec(cctx, dead, fmt.Sprintf("INSERT INTO %s (id, v) VALUES (%d, 0)", s.table, s.nextID())); err == nil {
		t.Error("Exec with a cancelled context succeeded")
	}
	_ = dead.Rollback(cctx) // may fail for lack of context; Close must still clean up
	noErr(t, "Close", dead.Close())
	s.wantRows(t, 0, id2)
	s.wantNotPrepared(t, dead.XID())

	// The pool still works.
	b := s.begin(ctx, t)
	id3 := s.nextID()
	s.insert(ctx, t, b, id3)
	noErr(t, "CommitOnePhase", b.CommitOnePhase(ctx))
	noErr(t, "Close", b.Close())
	s.wantRows(t, 1, id3)
}
