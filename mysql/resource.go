package mysql

import (
	"context"
	"database/sql"
	"database/sql/driver"
	"encoding/hex"
	"errors"
	"fmt"
	"math"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/xabridge/xabridge/drivers"
)

// cleanupTimeout bounds the statements the adapter sends on its own behalf
// after a failure (XA ROLLBACK of a refused branch), which run even when the
// caller's context has ended. On timeout the session is discarded instead.
const cleanupTimeout = 2 * time.Second

// maxSessionIDs bounds the per-Resource cache of server connection ids.
const maxSessionIDs = 256

// maxDetached bounds the per-Resource memory of detached branches' owners.
const maxDetached = 4096

// detachGrace is how long the session that prepared a branch must have been
// out of the processlist before the branch is finished by XID from another
// session (MariaDB; see finishByXID). MariaDB releases the InnoDB
// transaction microseconds after it drops the session from the processlist;
// the grace covers that step even when the server thread is descheduled.
const detachGrace = 250 * time.Millisecond

// Resource is one MySQL or MariaDB server taking part in global
// transactions, reached through the application's *sql.DB. It implements
// drivers.Resource and is safe for concurrent use.
type Resource struct {
	name string
	db   *sql.DB

	mu       sync.Mutex
	fl       *flavour                // detected on first use; nil until then
	ids      map[any]pinned          // driver connection → its server session and mark
	detached map[drivers.XID]session // branches this process detached → the session that prepared them
	gone     map[session]time.Time   // owner session (id and boot: ids restart with the server) → when first seen out of the processlist
	keep     keeperState             // decision keeping (decision.go)
	ident    drivers.IdentityCache   // identity.go
	mark     string                  // the mark branch sessions carry (sessions.go); "" none
	// pastMarks are earlier marks, whose locks a pooled session drops
	// when it is next pinned (at most maxPastMarks, the latest).
	pastMarks []string
}

var _ drivers.Resource = (*Resource)(nil)

// New returns the resource called name (stable across restarts: it is
// written into the decision log) on the server db connects to. db must come
// from github.com/go-sql-driver/mysql; the application keeps owning it.
func New(name string, db *sql.DB) *Resource {
	return &Resource{name: name, db: db, ids: map[any]pinned{}, detached: map[drivers.XID]session{}, gone: map[session]time.Time{}}
}

// Name returns the resource's name.
func (r *Resource) Name() string { return r.name }

// Enlist returns the global transaction's branch on r, beginning it on first
// use, as the typed handle the application runs its statements on.
func (r *Resource) Enlist(ctx context.Context, tx drivers.Enlister) (*Branch, error) {
	b, err := tx.Enlist(ctx, r)
	if err != nil {
		return nil, err
	}
	br, ok := b.(*branch)
	if !ok || br.r != r {
		return nil, fmt.Errorf("mysql %s: the transaction returned a branch of another resource (%T)", r.name, b)
	}
	return br.user, nil
}

func (r *Resource) errorf(op string, xid drivers.XID, kind, err error) error {
	return drivers.NewError(r.name, op, xid, kind, err)
}

// Begin starts a branch: it pins a connection from the pool and runs
// XA START on it. Errors: ErrFailed (invalid XID, XID already in use, ...),
// ErrUnsupported (a server whose prepared XA branches do not survive a
// disconnect), ErrRetryable (no connection, or it broke; nothing was
// started).
func (r *Resource) Begin(ctx context.Context, xid drivers.XID) (drivers.Branch, error) {
	if err := xid.Validate(); err != nil {
		return nil, r.errorf("begin", drivers.XID{}, drivers.ErrFailed, err)
	}
	conn, err := r.db.Conn(ctx)
	if err != nil {
		return nil, r.errorf("begin", xid, drivers.ErrRetryable, err)
	}
	fl, err := r.flavour(ctx, conn)
	if err != nil {
		discard(conn)
		return nil, r.errorf("begin", xid, classifyPlain(err), fmt.Errorf("detecting the server flavour: %w", err))
	}
	if why := fl.unsupported(); why != "" {
		_ = conn.Close() // only SELECTs ran: clean
		return nil, r.errorf("begin", xid, drivers.ErrUnsupported, errors.New(why))
	}
	owner, err := r.sessionID(ctx, conn)
	if err != nil {
		discard(conn)
		return nil, r.errorf("begin", xid, classifyPlain(err), fmt.Errorf("reading CONNECTION_ID(): %w", err))
	}
	b := &branch{r: r, xid: xid, xidSQL: xid.MySQL(), conn: conn, owner: owner.id, ownerBoot: owner.boot, state: stActive}
	b.user = &Branch{b: b}
	if _, err := conn.ExecContext(ctx, "XA START "+b.xidSQL); err != nil {
		// Whatever the session did, dropping it ends any XA transaction it
		// may have started (an unprepared branch dies with its session),
		// and a session a server refused XA START on (1399/1400: already in
		// a transaction) is not one to pool anyway.
		discard(conn)
		return nil, r.errorf("begin", xid, classifyPlain(err), err)
	}
	return b, nil
}

// classifyPlain classes an error of a statement that changes nothing
// durable: a server refusal is ErrFailed, anything else ErrRetryable.
func classifyPlain(err error) error {
	if _, ok := serverError(err); ok {
		return drivers.ErrFailed
	}
	return drivers.ErrRetryable
}

// discard closes conn's underlying session instead of returning it to the
// pool: returning driver.ErrBadConn from Raw makes database/sql close the
// driver connection (go-sql-driver sends COM_QUIT and closes the socket) and
// close the *sql.Conn. The server then rolls back an unprepared XA
// transaction and detaches a prepared one.
//
// It blocks until rows the application left open on conn are closed.
func discard(conn *sql.Conn) {
	_ = conn.Raw(func(any) error { return driver.ErrBadConn })
	_ = conn.Close() // ErrConnDone after the Raw above (or if conn was already closed, i.e. already discarded)
}

// sessionID returns the server's connection id of conn, cached per driver
// connection so a branch costs no extra round trip on a warm pool. The key
// is the driver connection itself: one go-sql-driver connection is exactly
// one server session for its whole life, and the map keeps it reachable, so
// a key is never reused by another connection. The map is emptied when it
// grows past maxSessionIDs, which bounds the memory held by closed
// connections.
//
// The same query marks the session with r's current mark (MarkSessions):
// once per physical connection, and again only when the mark changed.
func (r *Resource) sessionID(ctx context.Context, conn *sql.Conn) (session, error) {
	var key any
	if err := conn.Raw(func(dc any) error { key = dc; return nil }); err != nil {
		return session{}, err
	}
	r.mu.Lock()
	p, ok := r.ids[key]
	mark := r.mark
	if ok && p.mark == mark {
		r.mu.Unlock()
		return p.session, nil // every branch start: no copy, no query
	}
	past := slices.Clone(r.pastMarks)
	r.mu.Unlock()
	var s session
	var locked sql.NullInt64
	var released any
	if err := conn.QueryRowContext(ctx, setupQuery(mark, past)).Scan(&s.id, &locked, &released, &s.boot); err != nil {
		return session{}, err
	}
	if locked.Int64 != 1 { // NULL: an error in GET_LOCK; 0 cannot be (the name holds our own id)
		return session{}, fmt.Errorf("marking the session %d for its coordinator's incarnation: GET_LOCK returned %v", s.id, locked)
	}
	r.mu.Lock()
	if len(r.ids) >= maxSessionIDs {
		clear(r.ids)
	}
	r.ids[key] = pinned{s, mark}
	r.mu.Unlock()
	return s, nil
}

// session identifies a server session across restarts: connection ids
// restart at 1 when the server does, so the id alone is not enough.
type session struct {
	id   uint64
	boot float64 // the server's boot time when id was read (Unix seconds, ±1s); 0: not known
}

// pinned is what sessionID caches of a driver connection: its session and
// the mark whose lock it holds ("" none).
type pinned struct {
	session
	mark string
}

// CommitPrepared commits a prepared branch from a fresh session (recovery).
// ErrNotFound: XA RECOVER does not list it. ErrBusy: its preparing session
// still holds it, or is still detaching from it (see finishByXID); try
// again later.
func (r *Resource) CommitPrepared(ctx context.Context, xid drivers.XID) error {
	return r.finishByXID(ctx, "commit-prepared", xid, true, session{})
}

// RollbackPrepared rolls back a prepared branch from a fresh session, with
// the same error classes as CommitPrepared.
func (r *Resource) RollbackPrepared(ctx context.Context, xid drivers.XID) error {
	return r.finishByXID(ctx, "rollback-prepared", xid, false, session{})
}

// rememberDetached records the owner of a branch whose session this process
// dropped while the branch was (or may have been) prepared, so that
// CommitPrepared/RollbackPrepared in this process can wait for exactly that
// session, not just for any.
func (r *Resource) rememberDetached(xid drivers.XID, owner session) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if len(r.detached) >= maxDetached {
		clear(r.detached) // fall back to the server-wide check for the forgotten ones
	}
	r.detached[xid] = owner
}

func (r *Resource) detachedOwner(xid drivers.XID) session {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.detached[xid]
}

func (r *Resource) forgetDetached(xid drivers.XID) {
	r.mu.Lock()
	defer r.mu.Unlock()
	delete(r.detached, xid)
	// r.gone keeps the owner: a session that left stays gone (its id is
	// only reused after a server restart, which ownerAttached notices).
}

// finishByXID runs XA COMMIT or XA ROLLBACK for xid on a fresh session.
//
// The race it avoids (MariaDB 10.11, reproduced here): when a session
// holding a prepared branch ends, MariaDB first makes the XID finishable
// from other sessions (THD::cleanup → trans_xa_detach), then drops the
// session from the processlist, and only then releases the InnoDB
// transaction (THD::free_connection → innobase_close_connection →
// trx_disconnect_prepared). An XA COMMIT arriving in between finds the XID,
// InnoDB does not find the transaction (it only finishes released ones),
// the server ignores that and answers OK: the XID vanishes from XA RECOVER
// while InnoDB keeps the branch prepared, holding its locks, until the next
// restart brings it back. Without a guard this hit about 1 in 150 commits
// issued right after the owner's Close.
//
// So when the owner is known (a branch of this process, or one this
// Resource detached), finishing waits until the owner has been out of the
// processlist for detachGrace (ErrBusy until then). The processlist is read
// live; the InnoDB side cannot be read safely (SHOW ENGINE INNODB STATUS
// printed a disconnecting session and crashed MariaDB 10.11.19 with SIGSEGV
// in thd_get_error_context_description; information_schema.INNODB_TRX is a
// cache refreshed at most every 100 ms of idleness), hence the grace.
//
// When the owner is unknown (recovery in another process) no such wait is
// possible: a commit issued while the owner is disconnecting can still be
// swallowed. Recovery must therefore finish only branches whose owner has
// certainly been gone for a while (seen prepared in two scans, well past
// the transaction's deadline), never right after a disconnect.
//
// Then: XAER_NOTA proves nothing while XA RECOVER still lists the XID (the
// owner holds it): ErrBusy. Only when it is no longer listed is the branch
// gone: ErrNotFound.
func (r *Resource) finishByXID(ctx context.Context, op string, xid drivers.XID, commit bool, owner session) error {
	if err := xid.Validate(); err != nil {
		return r.errorf(op, drivers.XID{}, drivers.ErrFailed, err)
	}
	conn, err := r.db.Conn(ctx)
	if err != nil {
		return r.errorf(op, xid, drivers.ErrRetryable, err)
	}
	// Every statement below leaves the fresh session's XA state as it was
	// (none), unless the answer is lost: then discard.
	ok := false
	defer func() {
		if ok {
			_ = conn.Close()
		} else {
			discard(conn)
		}
	}()
	fl, err := r.flavour(ctx, conn)
	if err != nil {
		ok = isServerErr(err)
		return r.errorf(op, xid, classifyPlain(err), fmt.Errorf("detecting the server flavour: %w", err))
	}
	if owner.id == 0 {
		owner = r.detachedOwner(xid)
	}
	busy, err := r.ownerAttached(ctx, conn, fl, owner)
	if err != nil {
		ok = isServerErr(err)
		return r.errorf(op, xid, classifyPlain(err), fmt.Errorf("checking the preparing session: %w", err))
	}
	if busy != "" {
		ok = true
		return r.errorf(op, xid, drivers.ErrBusy, errors.New(busy))
	}
	// MariaDB matches an XID in XA COMMIT/ROLLBACK by its gtrid and bqual
	// bytes and ignores the formatID: with a foreign twin prepared (same
	// bytes, another formatID), finishing ours by XID could finish theirs.
	twin, err := foreignTwin(ctx, conn, xid)
	if err != nil {
		ok = isServerErr(err)
		return r.errorf(op, xid, classifyPlain(err), fmt.Errorf("checking XA RECOVER for a foreign twin: %w", err))
	}
	if twin != "" {
		ok = true
		return r.errorf(op, xid, drivers.ErrFailed, fmt.Errorf("%w: XA RECOVER lists %s, which has this branch's gtrid and bqual under another formatID; "+
			"the server would not tell them apart, so nothing was finished: settle the other application's branch first", ErrAmbiguousXID, twin))
	}
	stmt := "XA ROLLBACK " + xid.MySQL()
	if commit {
		stmt = "XA COMMIT " + xid.MySQL()
	}
	_, err = conn.ExecContext(ctx, stmt)
	if err == nil {
		ok = true
		r.forgetDetached(xid)
		return nil
	}
	me, answered := serverError(err)
	if !answered {
		return r.errorf(op, xid, drivers.ErrInDoubt, err)
	}
	ok = true
	switch {
	case me.Number == erXAERNota:
		listed, rerr := recoverHas(ctx, conn, xid)
		if rerr != nil {
			ok = isServerErr(rerr)
			if isNumber(rerr, erAccessDenied) {
				// Retrying cannot help: only a grant can.
				return r.errorf(op, xid, drivers.ErrFailed, fmt.Errorf("%w, and XA RECOVER is denied to this account, so whether the branch is gone cannot be told; grant it XA_RECOVER_ADMIN (MySQL 8): %w", err, rerr))
			}
			return r.errorf(op, xid, drivers.ErrBusy, fmt.Errorf("%w (and XA RECOVER failed: %w)", err, rerr))
		}
		if listed {
			return r.errorf(op, xid, drivers.ErrBusy, fmt.Errorf("%w, but XA RECOVER lists it: its preparing session still holds it", err))
		}
		r.forgetDetached(xid)
		return r.errorf(op, xid, drivers.ErrNotFound, err)
	case !commit && isRolledBack(err):
		r.forgetDetached(xid)
		return nil
	case commit && me.Number == erXARBRollback:
		// MariaDB rolls back a prepared branch that wrote nothing when its
		// session detaches (trans_xa_detach: "!is_trx_read_write()"), but
		// keeps its XID in XA RECOVER until someone finishes it, and then
		// answers XA_RBROLLBACK. A prepared branch cannot be rolled back by
		// the server for any other reason (a deadlock can no longer hit
		// it), so this is a read-only branch: committed and rolled back
		// are the same outcome, and the XID is now gone.
		r.forgetDetached(xid)
		return nil
	case commit && isRolledBack(err):
		// XA_RBDEADLOCK/XA_RBTIMEOUT on a prepared branch: should not
		// happen; a heuristic outcome nothing can retry.
		return r.errorf(op, xid, drivers.ErrFailed, fmt.Errorf("the server rolled back a prepared branch instead of committing it: %w", err))
	}
	return r.errorf(op, xid, drivers.ErrFailed, err)
}

// ownerAttached returns why a branch whose preparing session was owner
// cannot be finished by XID yet (see finishByXID), or "" when it can.
// owner 0 (unknown) always returns "".
func (r *Resource) ownerAttached(ctx context.Context, conn *sql.Conn, fl *flavour, os session) (string, error) {
	owner := os.id
	if owner == 0 {
		return "", nil
	}
	listed, err := sessionListed(ctx, conn, []uint64{owner})
	if err != nil {
		return "", err
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if _, ok := listed[owner]; ok {
		_, seenGone := r.gone[os]
		// The boot time kept with the branch, not one looked up by id: after
		// a restart a new session may have taken the owner's id (and would
		// then look like the owner itself).
		bootThen, known := os.boot, os.boot != 0
		r.mu.Unlock()
		restarted := false
		if known && !seenGone {
			// A server restart restarts connection ids at 1, so a listed
			// session with the owner's id may be a stranger: the owner is
			// gone if the server has booted since we learned its id. Boot
			// times are estimated from whole-second uptimes, so they agree
			// within a second for the same boot. (Two boots less than ~1.5s
			// apart look like one: the branch then stays busy until
			// recovery from another process finishes it; safe, only slow.
			// Taking "we closed that session ourselves" as proof instead
			// would not be safe: under a network partition the real owner
			// is still listed.)
			var bootNow float64
			err := conn.QueryRowContext(ctx, bootQuery("")).Scan(&bootNow)
			restarted = err == nil && math.Abs(bootNow-bootThen) > 1.5
		}
		r.mu.Lock()
		if !seenGone && !restarted {
			return fmt.Sprintf("the session that prepared the branch (connection id %d) is still open", owner), nil
		}
		// A session that once left never comes back: the id is reused.
		if !seenGone {
			r.gone[os] = time.Now().Add(-detachGrace) // the restart killed it long enough ago
		}
	}
	if !fl.mariaDB {
		// MySQL's InnoDB synchronises commit-by-XID with a disconnecting
		// session itself (trx_disconnect_from_mysql under the trx_sys
		// mutex), and with xa_detach_on_prepare the branch already left
		// its session at XA PREPARE.
		return "", nil
	}
	since, ok := r.gone[os]
	if !ok {
		if len(r.gone) >= maxDetached {
			clear(r.gone)
		}
		since = time.Now()
		r.gone[os] = since
	}
	if wait := detachGrace - time.Since(since); wait > 0 {
		return fmt.Sprintf("the session that prepared the branch (connection id %d) left the processlist %v ago; MariaDB may still hold its InnoDB transaction: retry in %v",
			owner, time.Since(since).Round(time.Millisecond), wait.Round(time.Millisecond)), nil
	}
	return "", nil
}

// bootQuery selects prefix (more columns) and the server's boot time in
// Unix seconds, estimated as now minus the whole-second uptime.
func bootQuery(prefix string) string {
	return "SELECT " + prefix + "UNIX_TIMESTAMP(NOW(6)) - VARIABLE_VALUE FROM information_schema.GLOBAL_STATUS WHERE VARIABLE_NAME = 'UPTIME'"
}

// sessionListed returns the processlist COMMAND of those of ids the server
// lists (information_schema.PROCESSLIST is read live). The ids are integers
// formatted into the text: one round trip, no server-side prepare.
func sessionListed(ctx context.Context, conn *sql.Conn, ids []uint64) (map[uint64]string, error) {
	var b strings.Builder
	b.WriteString("SELECT ID, COMMAND FROM information_schema.PROCESSLIST WHERE ID IN (")
	for i, id := range ids {
		if i > 0 {
			b.WriteByte(',')
		}
		b.WriteString(strconv.FormatUint(id, 10))
	}
	b.WriteByte(')')
	rows, err := conn.QueryContext(ctx, b.String())
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	out := map[uint64]string{}
	for rows.Next() {
		var id uint64
		var cmd string
		if err := rows.Scan(&id, &cmd); err != nil {
			return nil, err
		}
		out[id] = cmd
	}
	return out, rows.Err()
}

// recoverHas reports whether XA RECOVER lists xid.
func recoverHas(ctx context.Context, conn *sql.Conn, xid drivers.XID) (bool, error) {
	rows, err := conn.QueryContext(ctx, "XA RECOVER")
	if err != nil {
		return false, err
	}
	defer rows.Close()
	found := false
	for rows.Next() {
		rec, err := scanRecover(rows)
		if err != nil {
			return false, err
		}
		if x, ok := drivers.ParseMySQLXID(rec.formatID, rec.gtridLen, rec.bqualLen, rec.data); ok && x == xid {
			found = true
		}
	}
	return found, rows.Err()
}

// ErrAmbiguousXID: a branch could not be finished by XID because another
// prepared branch carries the same gtrid and bqual bytes under another
// formatID (MariaDB does not compare formatIDs).
var ErrAmbiguousXID = errors.New("mysql: XID is ambiguous on this server")

// foreignTwin returns the id of a prepared branch that has xid's gtrid and
// bqual bytes but another formatID, or "" when there is none.
func foreignTwin(ctx context.Context, conn *sql.Conn, xid drivers.XID) (string, error) {
	gtrid, bqual := xid.Global.String(), xid.BranchQualifier()
	want := gtrid + bqual
	rows, err := conn.QueryContext(ctx, "XA RECOVER")
	if err != nil {
		return "", err
	}
	defer rows.Close()
	twin := ""
	for rows.Next() {
		rec, err := scanRecover(rows)
		if err != nil {
			return "", err
		}
		if rec.formatID != int64(drivers.FormatID) && rec.gtridLen == int64(len(gtrid)) &&
			rec.bqualLen == int64(len(bqual)) && string(rec.data) == want {
			twin = rec.id()
		}
	}
	return twin, rows.Err()
}

type recoverRow struct {
	formatID, gtridLen, bqualLen int64
	data                         []byte
}

func scanRecover(rows *sql.Rows) (recoverRow, error) {
	var rec recoverRow
	err := rows.Scan(&rec.formatID, &rec.gtridLen, &rec.bqualLen, &rec.data)
	return rec, err
}

// id returns the row's XID in the X'gtrid',X'bqual',formatID form XA
// statements accept, whatever its bytes.
func (rec recoverRow) id() string {
	g, b := rec.data, []byte(nil)
	if rec.gtridLen >= 0 && rec.gtridLen <= int64(len(rec.data)) {
		g, b = rec.data[:rec.gtridLen], rec.data[rec.gtridLen:]
	}
	return "X'" + hex.EncodeToString(g) + "',X'" + hex.EncodeToString(b) + "'," + strconv.FormatInt(rec.formatID, 10)
}

// Recover lists the prepared XA branches on the server. XA RECOVER is
// server-wide, not per database: it shows the branches of every database
// and every application (MariaDB lets any user see and finish them; MySQL 8
// shows other users' XIDs only with XA_RECOVER_ADMIN). Branches xabridge did
// not create are reported with Ours=false and must be left alone.
func (r *Resource) Recover(ctx context.Context) ([]drivers.Prepared, error) {
	rows, err := r.db.QueryContext(ctx, "XA RECOVER")
	if err != nil {
		kind := classifyPlain(err)
		if isNumber(err, erAccessDenied) {
			err = fmt.Errorf("%w (MySQL 8 needs the XA_RECOVER_ADMIN privilege)", err)
		}
		return nil, r.errorf("recover", drivers.XID{}, kind, err)
	}
	defer rows.Close()
	var out []drivers.Prepared
	for rows.Next() {
		rec, err := scanRecover(rows)
		if err != nil {
			return nil, r.errorf("recover", drivers.XID{}, drivers.ErrFailed, err)
		}
		p := drivers.Prepared{ID: rec.id()}
		if x, ok := drivers.ParseMySQLXID(rec.formatID, rec.gtridLen, rec.bqualLen, rec.data); ok {
			p.XID, p.Ours = x, true
		}
		out = append(out, p)
	}
	if err := rows.Err(); err != nil {
		return nil, r.errorf("recover", drivers.XID{}, classifyPlain(err), err)
	}
	return out, nil
}

// flavour is what the adapter knows about the server.
type flavour struct {
	version string // SELECT VERSION()
	mariaDB bool
	major   int
	minor   int
	patch   int
	// detachOnPrepare: MySQL ≥ 8.0.29 with xa_detach_on_prepare=ON. The
	// prepared branch leaves its session at XA PREPARE, so any session can
	// finish it and the preparing session is clean again. Informational:
	// the adapter's same-session rule is correct either way.
	detachOnPrepare bool
}

func (f *flavour) atLeast(major, minor, patch int) bool {
	if f.major != major {
		return f.major > major
	}
	if f.minor != minor {
		return f.minor > minor
	}
	return f.patch >= patch
}

// unsupported explains why the server cannot take part in 2PC, or "".
// Before MariaDB 10.5 (MDEV-742) and MySQL 5.7.7, a prepared XA branch is
// rolled back when its session disconnects, so a prepared vote would not
// survive a coordinator crash.
func (f *flavour) unsupported() string {
	switch {
	case f.major == 0:
		return "" // unparsable version (a fork?): let the server decide
	case f.mariaDB && !f.atLeast(10, 5, 0):
		return "MariaDB " + f.version + " rolls back prepared XA branches on disconnect; 10.5 or later is needed"
	case !f.mariaDB && !f.atLeast(5, 7, 7):
		return "MySQL " + f.version + " rolls back prepared XA branches on disconnect; 5.7.7 or later is needed"
	}
	return ""
}

// flavour detects the server on the first use of the Resource, on conn.
func (r *Resource) flavour(ctx context.Context, conn *sql.Conn) (*flavour, error) {
	r.mu.Lock()
	fl := r.fl
	r.mu.Unlock()
	if fl != nil {
		return fl, nil
	}
	var v string
	if err := conn.QueryRowContext(ctx, "SELECT VERSION()").Scan(&v); err != nil {
		return nil, err
	}
	fl = parseVersion(v)
	if !fl.mariaDB && fl.atLeast(8, 0, 29) {
		var on sql.NullInt64
		if err := conn.QueryRowContext(ctx, "SELECT @@xa_detach_on_prepare").Scan(&on); err != nil {
			return nil, err
		}
		fl.detachOnPrepare = on.Int64 != 0
	}
	r.mu.Lock()
	r.fl = fl
	r.mu.Unlock()
	return fl, nil
}

// parseVersion reads "10.11.19-MariaDB-0+deb12u1", "8.0.36", "8.4.0-commercial"
// or the replication-era "5.5.5-10.11.19-MariaDB".
func parseVersion(v string) *flavour {
	f := &flavour{version: v, mariaDB: strings.Contains(strings.ToLower(v), "mariadb")}
	s := v
	if f.mariaDB {
		s = strings.TrimPrefix(s, "5.5.5-")
	}
	if i := strings.IndexFunc(s, func(c rune) bool { return c != '.' && (c < '0' || c > '9') }); i >= 0 {
		s = s[:i]
	}
	parts := strings.SplitN(s, ".", 3)
	nums := []*int{&f.major, &f.minor, &f.patch}
	for i, p := range parts {
		n, err := strconv.Atoi(p)
		if err != nil {
			f.major, f.minor, f.patch = 0, 0, 0
			break
		}
		*nums[i] = n
	}
	return f
}
