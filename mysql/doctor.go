package mysql

import (
	"context"
	"database/sql"
	"fmt"
	"sort"
	"strings"
	"time"

	"github.com/xabridge/xabridge/drivers"
)

var _ drivers.Doctor = (*Resource)(nil)

// MySQL/MariaDB error numbers Doctor acts on.
const (
	erUnknownSystemVariable = 1193 // ER_UNKNOWN_SYSTEM_VARIABLE
)

// Doctor checks whether the server is ready for two-phase commit through
// this resource: version and flavour, xa_detach_on_prepare (MySQL 8.0.29+),
// the binary log format, the right to run XA RECOVER, storage engines,
// the isolation level, branches of xabridge prepared longer than
// opts.MaxPreparedAge, and the offset between this host's clock and the
// server's. Session values are reported, since they are what this
// resource's connections run with. It implements drivers.Doctor and
// changes nothing on the server.
//
// It never runs SHOW ENGINE INNODB STATUS (see finishByXID: it crashed
// MariaDB 10.11 here).
func (r *Resource) Doctor(ctx context.Context, opts drivers.DoctorOptions) []drivers.Check {
	opts = opts.WithDefaults()
	conn, err := r.db.Conn(ctx)
	if err == nil {
		// Conn may hand out a pooled connection without a round trip.
		if err = conn.PingContext(ctx); err != nil {
			_ = conn.Close()
		}
	}
	if err != nil {
		return []drivers.Check{{Name: "connect", Status: drivers.CheckFail,
			Detail: "cannot connect: " + err.Error(),
			Fix:    "check that the server is running and the URL's host, port, user and password"}}
	}
	// Every statement below is a plain read that leaves the session as it
	// was, so the connection can go back to the pool.
	defer conn.Close()

	fl, err := r.flavour(ctx, conn)
	if err != nil {
		return []drivers.Check{{Name: "version", Status: drivers.CheckFail,
			Detail: "cannot read the server version: " + err.Error(), Fix: "check the connection and retry"}}
	}
	checks := []drivers.Check{versionCheck(fl)}
	if !fl.mariaDB && fl.atLeast(8, 0, 29) {
		checks = append(checks, detachCheck(fl.detachOnPrepare))
	}
	checks = append(checks,
		queryCheck(ctx, conn, "binlog", func(ctx context.Context, conn *sql.Conn) (drivers.Check, error) {
			var logBin, format sql.NullString
			if err := conn.QueryRowContext(ctx, "SELECT @@GLOBAL.log_bin, @@SESSION.binlog_format").Scan(&logBin, &format); err != nil {
				return drivers.Check{}, err
			}
			return binlogCheck(fl, logBin.String == "1" || strings.EqualFold(logBin.String, "ON"), format.String), nil
		}),
		queryCheck(ctx, conn, "storage_engine", engineCheckOn),
		queryCheck(ctx, conn, "isolation", func(ctx context.Context, conn *sql.Conn) (drivers.Check, error) {
			level, err := isolationOf(ctx, conn)
			if err != nil {
				return drivers.Check{}, err
			}
			return isolationCheck(level, fl.mariaDB), nil
		}),
	)
	recs, rerr := recoverRows(ctx, conn)
	checks = append(checks, r.xaRecoverCheck(ctx, conn, fl, len(recs), rerr))
	if rerr != nil {
		checks = append(checks, drivers.Check{Name: "prepared", Status: drivers.CheckWarn,
			Detail: "not checked: XA RECOVER failed (see xa_recover)", Fix: "fix xa_recover first"})
	} else {
		checks = append(checks, preparedCheck(recs, opts.MaxPreparedAge, opts.Now()))
	}
	checks = append(checks, drivers.ClockCheck(ctx, opts.Now, func(ctx context.Context) (time.Time, error) {
		// A string, so that neither parseTime nor loc in the URL changes
		// how the value is read.
		var s string
		if err := conn.QueryRowContext(ctx, "SELECT CAST(UTC_TIMESTAMP(6) AS CHAR)").Scan(&s); err != nil {
			return time.Time{}, err
		}
		return time.ParseInLocation("2006-01-02 15:04:05.999999", s, time.UTC)
	}))
	return checks
}

// queryCheck runs one check's queries and turns a failure into a failed
// Check of that name.
func queryCheck(ctx context.Context, conn *sql.Conn, name string, f func(context.Context, *sql.Conn) (drivers.Check, error)) drivers.Check {
	c, err := f(ctx, conn)
	if err != nil {
		return drivers.Check{Name: name, Status: drivers.CheckFail, Detail: "query failed: " + err.Error(),
			Fix: "check the connection and the user's privileges, then run doctor again"}
	}
	return c
}

func versionCheck(fl *flavour) drivers.Check {
	c := drivers.Check{Name: "version", Status: drivers.CheckOK}
	product := "MySQL"
	if fl.mariaDB {
		product = "MariaDB"
	}
	switch why := fl.unsupported(); {
	case fl.major == 0:
		c.Status = drivers.CheckWarn
		c.Detail = "unrecognised server version " + drivers.DisplayID(fl.version) + ": cannot tell whether prepared XA branches survive a disconnect"
		c.Fix = "use MariaDB 10.5 or later, or MySQL 5.7.7 or later (8.0.30+ with a binary log)"
	case why != "":
		c.Status = drivers.CheckFail
		c.Detail = why
		c.Fix = "upgrade to MariaDB 10.5 or later, or MySQL 8"
	default:
		c.Detail = product + " " + drivers.DisplayID(fl.version) + ": prepared XA branches survive disconnects and restarts"
	}
	return c
}

func detachCheck(on bool) drivers.Check {
	c := drivers.Check{Name: "xa_detach_on_prepare", Status: drivers.CheckOK}
	if on {
		c.Detail = "ON (the default): a prepared branch leaves its session at XA PREPARE; xabridge works with either value"
	} else {
		c.Detail = "OFF: a prepared branch stays bound to its session until phase 2 or a disconnect; xabridge works with either value"
	}
	return c
}

// binlogCheck judges the binary log: XA with statement-based logging is
// unsafe for replicas, and before MySQL 8.0.30 XA PREPARE was not
// crash-safe with respect to the binary log.
func binlogCheck(fl *flavour, logBin bool, format string) drivers.Check {
	c := drivers.Check{Name: "binlog", Status: drivers.CheckOK}
	if !logBin {
		c.Detail = "binary log off"
		return c
	}
	c.Detail = "binary log on, binlog_format = " + drivers.DisplayID(format)
	var problems, fixes []string
	if !strings.EqualFold(format, "ROW") {
		problems = append(problems, "XA transactions logged as statements are unsafe for replication (replicas can deadlock or diverge); use ROW")
		fixes = append(fixes, "set binlog_format = ROW in the server config (SET GLOBAL binlog_format = 'ROW' for new sessions), and in the URL if it sets one")
	}
	if !fl.mariaDB && fl.major != 0 && !fl.atLeast(8, 0, 30) {
		problems = append(problems, "before MySQL 8.0.30, XA PREPARE is not crash-safe with the binary log: a crash can leave the binary log and InnoDB disagreeing about a prepared branch")
		fixes = append(fixes, "upgrade to MySQL 8.0.30 or later")
	}
	if len(problems) > 0 {
		c.Status = drivers.CheckWarn
		c.Detail += ": " + strings.Join(problems, "; ")
		c.Fix = strings.Join(fixes, "; ")
	}
	return c
}

// tableEngine is a table whose engine does not support XA.
type tableEngine struct{ table, engine string }

// engineCheckOn reads the default storage engine and the tables of the
// URL's database whose engines ignore XA.
func engineCheckOn(ctx context.Context, conn *sql.Conn) (drivers.Check, error) {
	var def, db sql.NullString
	if err := conn.QueryRowContext(ctx, "SELECT @@SESSION.default_storage_engine, DATABASE()").Scan(&def, &db); err != nil {
		return drivers.Check{}, err
	}
	xa := map[string]bool{}
	rows, err := conn.QueryContext(ctx, "SELECT ENGINE, XA FROM information_schema.ENGINES")
	if err != nil {
		return drivers.Check{}, err
	}
	for rows.Next() {
		var e, x sql.NullString
		if err := rows.Scan(&e, &x); err != nil {
			rows.Close()
			return drivers.Check{}, err
		}
		xa[strings.ToLower(e.String)] = strings.EqualFold(x.String, "YES")
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return drivers.Check{}, err
	}
	var bad []tableEngine
	if db.Valid {
		rows, err := conn.QueryContext(ctx, `SELECT TABLE_NAME, COALESCE(ENGINE, '') FROM information_schema.TABLES
			WHERE TABLE_SCHEMA = DATABASE() AND TABLE_TYPE = 'BASE TABLE' ORDER BY TABLE_NAME`)
		if err != nil {
			return drivers.Check{}, err
		}
		defer rows.Close()
		for rows.Next() {
			var t tableEngine
			if err := rows.Scan(&t.table, &t.engine); err != nil {
				return drivers.Check{}, err
			}
			if !xa[strings.ToLower(t.engine)] {
				bad = append(bad, t)
			}
		}
		if err := rows.Err(); err != nil {
			return drivers.Check{}, err
		}
	}
	return engineCheck(def.String, xa[strings.ToLower(def.String)], db.String, db.Valid, bad), nil
}

// maxListed bounds how many names a detail lists.
const maxListed = 5

// engineCheck judges the storage engines: a table whose engine has no XA
// support (MyISAM, Aria, MEMORY, ...) silently stays out of the global
// transaction: its writes commit at once and are never rolled back.
func engineCheck(def string, defXA bool, db string, hasDB bool, bad []tableEngine) drivers.Check {
	c := drivers.Check{Name: "storage_engine", Status: drivers.CheckOK}
	var parts, fixes []string
	if defXA {
		parts = append(parts, "default storage engine "+drivers.DisplayID(def))
	} else {
		parts = append(parts, "default storage engine "+drivers.DisplayID(def)+" does not support XA: tables created without ENGINE= stay out of global transactions (their writes commit at once and are never rolled back)")
		fixes = append(fixes, "set default_storage_engine = InnoDB in the server config")
	}
	switch {
	case !hasDB:
		parts = append(parts, "no database in the URL, so no tables were checked")
	case len(bad) == 0:
		parts = append(parts, "every table in database "+drivers.DisplayID(db)+" supports XA")
	default:
		var names []string
		for i, t := range bad {
			if i == maxListed {
				names = append(names, fmt.Sprintf("and %d more", len(bad)-maxListed))
				break
			}
			names = append(names, drivers.DisplayID(t.table)+" ("+drivers.DisplayID(t.engine)+")")
		}
		parts = append(parts, fmt.Sprintf("%d table(s) in database %s use engines without XA, so writes to them stay out of global transactions: %s",
			len(bad), drivers.DisplayID(db), strings.Join(names, ", ")))
		fixes = append(fixes, "ALTER TABLE ... ENGINE = InnoDB for each of them")
	}
	c.Detail = strings.Join(parts, "; ")
	if len(fixes) > 0 {
		c.Status = drivers.CheckWarn
		c.Fix = strings.Join(fixes, "; ")
	}
	return c
}

// isolationOf reads the session's isolation level: transaction_isolation
// on MySQL 5.7.20+ and MariaDB 11.1+, tx_isolation before.
func isolationOf(ctx context.Context, conn *sql.Conn) (string, error) {
	var level string
	err := conn.QueryRowContext(ctx, "SELECT @@SESSION.transaction_isolation").Scan(&level)
	if isNumber(err, erUnknownSystemVariable) {
		err = conn.QueryRowContext(ctx, "SELECT @@SESSION.tx_isolation").Scan(&level)
	}
	return level, err
}

// isolationCheck judges the session's isolation level. Atomicity does not
// depend on it. MariaDB's manual says XA needs at least REPEATABLE READ,
// but MariaDB 10.11 runs XA at every level: at READ COMMITTED and READ
// UNCOMMITTED a branch prepares, survives its session's disconnect and
// commits from another session (TestXAAtEveryIsolationLevel shows it).
// READ UNCOMMITTED is reported because a branch then reads changes that
// are not committed, among them prepared branches recovery may roll back.
func isolationCheck(level string, mariaDB bool) drivers.Check {
	c := drivers.Check{Name: "isolation", Status: drivers.CheckOK}
	norm := strings.ToUpper(strings.ReplaceAll(strings.TrimSpace(level), " ", "-"))
	fix := "set transaction_isolation (MariaDB before 11.1: tx_isolation) to REPEATABLE-READ or READ-COMMITTED, in the server config or as a URL parameter"
	switch norm {
	case "REPEATABLE-READ", "SERIALIZABLE":
		c.Detail = norm
	case "READ-COMMITTED":
		c.Detail = norm + ": XA works at this level and atomicity does not depend on it"
		if mariaDB {
			c.Detail += " (MariaDB's manual names REPEATABLE READ as the minimum for XA, but the server prepares, recovers and commits XA branches at READ COMMITTED)"
		}
	case "READ-UNCOMMITTED":
		c.Status = drivers.CheckWarn
		c.Detail = norm + ": XA works, but branches read uncommitted changes, including prepared branches that may still be rolled back"
		c.Fix = fix
	default:
		c.Status = drivers.CheckWarn
		c.Detail = "unknown isolation level " + drivers.DisplayID(level)
		c.Fix = fix
	}
	return c
}

// recoverRows runs XA RECOVER on conn.
func recoverRows(ctx context.Context, conn *sql.Conn) ([]recoverRow, error) {
	rows, err := conn.QueryContext(ctx, "XA RECOVER")
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var out []recoverRow
	for rows.Next() {
		rec, err := scanRecover(rows)
		if err != nil {
			return nil, err
		}
		out = append(out, rec)
	}
	return out, rows.Err()
}

// xaRecoverCheck reports whether the user may run XA RECOVER, which
// recovery needs to see prepared branches (MySQL 8: XA_RECOVER_ADMIN).
func (r *Resource) xaRecoverCheck(ctx context.Context, conn *sql.Conn, fl *flavour, n int, rerr error) drivers.Check {
	var who sql.NullString
	if err := conn.QueryRowContext(ctx, "SELECT CURRENT_USER()").Scan(&who); err != nil {
		who.String = "the current user"
	}
	return xaRecoverVerdict(who.String, fl.mariaDB, n, rerr)
}

// xaRecoverVerdict judges XA RECOVER's answer for the account who
// (CURRENT_USER()) that listed n branches or failed with rerr.
func xaRecoverVerdict(who string, mariaDB bool, n int, rerr error) drivers.Check {
	c := drivers.Check{Name: "xa_recover", Status: drivers.CheckOK}
	if rerr != nil {
		c.Status = drivers.CheckFail
		if isNumber(rerr, erAccessDenied) {
			user, host := splitAccount(who)
			c.Detail = fmt.Sprintf("XA RECOVER is refused for %s: MySQL 8 lets only users with XA_RECOVER_ADMIN list prepared branches, so recovery cannot find the ones left behind (%v)",
				drivers.DisplayID(who), rerr)
			c.Fix = "GRANT XA_RECOVER_ADMIN ON *.* TO " + sqlString(user) + "@" + sqlString(host) + ";"
		} else {
			c.Detail = "XA RECOVER failed: " + rerr.Error()
			c.Fix = "check the connection and the user's privileges, then run doctor again"
		}
		return c
	}
	c.Detail = fmt.Sprintf("XA RECOVER works for %s (%d prepared branch(es) on the server)", drivers.DisplayID(who), n)
	if mariaDB {
		c.Detail += "; MariaDB lets every user list and finish every XA branch"
	}
	return c
}

// splitAccount splits CURRENT_USER()'s "user@host" at its last '@'.
func splitAccount(s string) (user, host string) {
	i := strings.LastIndexByte(s, '@')
	if i < 0 {
		return s, "%"
	}
	return s[:i], s[i+1:]
}

// sqlString quotes s as a MySQL string literal for a statement the operator
// copies: quotes and backslashes doubled, control characters escaped.
func sqlString(s string) string {
	var b strings.Builder
	b.WriteByte('\'')
	for _, c := range []byte(s) {
		switch c {
		case '\'':
			b.WriteString("''")
		case '\\':
			b.WriteString(`\\`)
		case 0:
			b.WriteString(`\0`)
		case '\n':
			b.WriteString(`\n`)
		case '\r':
			b.WriteString(`\r`)
		case 0x1a:
			b.WriteString(`\Z`)
		default:
			b.WriteByte(c)
		}
	}
	b.WriteByte('\'')
	return b.String()
}

// preparedCheck reports branches of xabridge prepared longer than maxAge,
// by the begin time in their XID read with this host's clock (XA RECOVER
// tells nothing about when a branch was prepared).
func preparedCheck(recs []recoverRow, maxAge time.Duration, now time.Time) drivers.Check {
	c := drivers.Check{Name: "prepared", Status: drivers.CheckOK}
	type aged struct {
		xid drivers.XID
		age time.Duration
	}
	var old []aged
	ours := 0
	for _, rec := range recs {
		x, ok := drivers.ParseMySQLXID(rec.formatID, rec.gtridLen, rec.bqualLen, rec.data)
		if !ok {
			continue
		}
		ours++
		if age := now.Sub(x.Global.Begin()); age > maxAge {
			old = append(old, aged{x, age})
		}
	}
	others := len(recs) - ours
	if len(old) == 0 {
		c.Detail = fmt.Sprintf("no branch of xabridge prepared longer than %s (%d prepared: %d xabridge's, %d others' whose age XA RECOVER does not tell)",
			drivers.FormatAge(maxAge), len(recs), ours, others)
		return c
	}
	sort.Slice(old, func(i, j int) bool {
		if old[i].age != old[j].age {
			return old[i].age > old[j].age
		}
		return old[i].xid.GID() < old[j].xid.GID()
	})
	o := old[0]
	c.Status = drivers.CheckWarn
	c.Detail = fmt.Sprintf("%d branch(es) of xabridge prepared longer than %s: they hold their row locks until finished (waiters fail after innodb_lock_wait_timeout). Oldest: %s (node %s), age %s",
		len(old), drivers.FormatAge(maxAge), o.xid.GID(), o.xid.Global.Node(), drivers.FormatAge(o.age))
	c.Fix = "run `xabridge list` and `xabridge recover` with the node id and decision log of the node that owns them"
	return c
}
