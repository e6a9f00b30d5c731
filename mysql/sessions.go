package mysql

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/xabridge/xabridge/drivers"
)

// SessionLockPrefix is the prefix of the user-level lock (GET_LOCK) that
// marks a branch session of a coordinator incarnation
// (drivers.SessionEnder): the session with connection id 1234 of the
// incarnation whose mark is 0123456789abcdef holds
// "xabridge-s:0123456789abcdef:1234" for as long as it lives (at most
// 11+16+1+20 characters: under the servers' 64). The connection id in the
// name lets a claimant find the holders in one query over the processlist,
// with no slot numbers to allocate.
const SessionLockPrefix = "xabridge-s:"

// maxPastMarks bounds the earlier marks a session drops when it is next
// pinned (see MarkSessions).
const maxPastMarks = 8

// endPoll is the interval at which EndSessions polls the processlist for
// the sessions it killed.
const endPoll = 20 * time.Millisecond

// MarkSessions makes every session r pins for a branch from now on hold
// the user-level lock SessionLockPrefix+mark+":"+CONNECTION_ID()
// (drivers.SessionEnder). The lock is taken once per physical connection,
// in the same query that reads its connection id, so a warm pool pays no
// round trip for it; a pooled session that holds an earlier mark's lock
// drops it (one round trip) when it is next pinned. "" stops marking.
func (r *Resource) MarkSessions(mark string) error {
	if mark != "" {
		if err := drivers.ValidateSessionMark(mark); err != nil {
			return fmt.Errorf("mysql %s: mark sessions: %w", r.name, err)
		}
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if mark == r.mark {
		return nil
	}
	if r.mark != "" {
		r.pastMarks = append(slices.DeleteFunc(r.pastMarks, func(m string) bool { return m == r.mark }), r.mark)
	}
	r.pastMarks = slices.DeleteFunc(r.pastMarks, func(m string) bool { return m == mark })
	if len(r.pastMarks) > maxPastMarks {
		r.pastMarks = r.pastMarks[len(r.pastMarks)-maxPastMarks:]
	}
	r.mark = mark
	return nil
}

// sessionLockExpr is the SQL expression naming mark's lock for the
// session whose connection id is the SQL expression id. mark is validated
// (lowercase hex), so it is safe in a literal.
func sessionLockExpr(mark, id string) string {
	return "CONCAT('" + SessionLockPrefix + mark + ":', " + id + ")"
}

// setupQuery is the query sessionID runs on a session whose marking is not
// known to be mark: it reads the connection id and the server's boot time,
// drops the locks of past marks, and takes mark's lock unless the session
// holds it already (GET_LOCK twice would need two releases). Columns:
// connection id, lock taken (1, or 1 without a mark), releases (ignored),
// boot time.
func setupQuery(mark string, past []string) string {
	var b strings.Builder
	b.WriteString("CONNECTION_ID(), ")
	if mark == "" {
		b.WriteString("1, ")
	} else {
		name := sessionLockExpr(mark, "CONNECTION_ID()")
		b.WriteString("IF(IS_USED_LOCK(" + name + ") <=> CONNECTION_ID(), 1, GET_LOCK(" + name + ", 0)), ")
	}
	b.WriteString("0")
	for _, m := range past {
		b.WriteString(" + COALESCE(RELEASE_LOCK(" + sessionLockExpr(m, "CONNECTION_ID()") + "), 0)")
	}
	b.WriteString(", ")
	return bootQuery(b.String())
}

// EndSessions kills every session of the server holding mark's lock
// (drivers.SessionEnder), then waits until the server lists none of them
// and, on MariaDB, detachGrace more (the server releases a killed
// session's InnoDB transaction just after it leaves the processlist; see
// finishByXID). Each session is killed only if, right before, on the same
// session of ours (so the same server boot, in which connection ids are not
// reused), IS_USED_LOCK still names it as the holder of its own lock.
//
// Finding other database users' sessions needs the PROCESS privilege, and
// killing them CONNECTION ADMIN (MariaDB 10.5+) or SUPER; a coordinator's
// own user needs neither for its own sessions. A session that could not be
// killed is an error matching drivers.ErrSessionsNotEnded.
func (r *Resource) EndSessions(ctx context.Context, mark string) (int, error) {
	const op = "end-sessions"
	if err := drivers.ValidateSessionMark(mark); err != nil {
		return 0, r.errorf(op, drivers.XID{}, drivers.ErrFailed, err)
	}
	conn, err := r.db.Conn(ctx)
	if err != nil {
		return 0, r.errorf(op, drivers.XID{}, drivers.ErrRetryable, err)
	}
	defer func() { _ = conn.Close() }() // only reads and KILLs ran: clean
	fl, err := r.flavour(ctx, conn)
	if err != nil {
		return 0, r.errorf(op, drivers.XID{}, classifyPlain(err), fmt.Errorf("detecting the server flavour: %w", err))
	}
	ids, err := markedSessions(ctx, conn, mark)
	if err != nil {
		return 0, r.errorf(op, drivers.XID{}, classifyPlain(err), fmt.Errorf("listing the sessions marked %s: %w", mark, err))
	}
	var killed []uint64
	var failed error
	for _, id := range ids {
		ok, err := killMarked(ctx, conn, mark, id)
		if err != nil {
			failed = errors.Join(failed, fmt.Errorf("connection %d: %w", id, err))
			if !isServerErr(err) {
				break // our session is gone: what it would do next is unknown
			}
			continue
		}
		if ok {
			killed = append(killed, id)
		}
	}
	if len(killed) > 0 {
		if err := waitGone(ctx, conn, killed, fl.mariaDB); err != nil {
			return len(killed), r.errorf(op, drivers.XID{}, drivers.ErrRetryable, fmt.Errorf("waiting for the killed sessions %v to end: %w", killed, err))
		}
	}
	if failed != nil {
		hint := ""
		if isNumber(failed, erKillDenied) {
			hint = "; killing another database user's session needs the CONNECTION ADMIN privilege (or SUPER)"
		}
		return len(killed), r.errorf(op, drivers.XID{}, drivers.ErrFailed, fmt.Errorf("%w%s: %w", drivers.ErrSessionsNotEnded, hint, failed))
	}
	return len(killed), nil
}

// erKillDenied is ER_KILL_DENIED_ERROR: "You are not owner of thread".
const erKillDenied = 1095

// erNoSuchThread is ER_NO_SUCH_THREAD: the session is already gone.
const erNoSuchThread = 1094

// markedSessions lists the connection ids whose session holds mark's lock
// (the processlist rows this user may see: all with PROCESS, else its
// own).
func markedSessions(ctx context.Context, conn *sql.Conn, mark string) ([]uint64, error) {
	rows, err := conn.QueryContext(ctx, "SELECT ID FROM information_schema.PROCESSLIST WHERE ID <> CONNECTION_ID() AND IS_USED_LOCK("+
		sessionLockExpr(mark, "ID")+") = ID ORDER BY ID")
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var ids []uint64
	for rows.Next() {
		var id uint64
		if err := rows.Scan(&id); err != nil {
			return nil, err
		}
		ids = append(ids, id)
	}
	return ids, rows.Err()
}

// killMarked kills session id if it still holds its lock of mark. false:
// it no longer does (it ended), nothing was killed.
func killMarked(ctx context.Context, conn *sql.Conn, mark string, id uint64) (bool, error) {
	sid := strconv.FormatUint(id, 10)
	var holder sql.NullInt64
	if err := conn.QueryRowContext(ctx, "SELECT IS_USED_LOCK("+sessionLockExpr(mark, sid)+")").Scan(&holder); err != nil {
		return false, err
	}
	if !holder.Valid || uint64(holder.Int64) != id {
		return false, nil
	}
	if _, err := conn.ExecContext(ctx, "KILL CONNECTION "+sid); err != nil {
		if isNumber(err, erNoSuchThread) {
			return false, nil
		}
		return false, err
	}
	return true, nil
}

// waitGone polls until the server lists none of ids, then on MariaDB waits
// detachGrace more.
func waitGone(ctx context.Context, conn *sql.Conn, ids []uint64, mariaDB bool) error {
	for {
		listed, err := sessionListed(ctx, conn, ids)
		if err != nil {
			return err
		}
		if len(listed) == 0 {
			break
		}
		if err := sleepCtx(ctx, endPoll); err != nil {
			return err
		}
	}
	if !mariaDB {
		return nil
	}
	// Not a stand-in for an observable condition: the step after the
	// processlist (InnoDB releasing the killed session's transaction)
	// cannot be read safely; see finishByXID.
	return sleepCtx(ctx, detachGrace)
}

func sleepCtx(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return nil
	}
}

var _ drivers.SessionEnder = (*Resource)(nil)
