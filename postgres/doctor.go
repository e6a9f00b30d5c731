package postgres

import (
	"context"
	"fmt"
	"sort"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/xabridge/xabridge/drivers"
	"github.com/xabridge/xabridge/internal/redact"
)

var _ drivers.Doctor = (*Resource)(nil)

// Doctor checks whether the server is ready for two-phase commit through
// this resource: its version, max_prepared_transactions, whether the role
// can finish prepared transactions, prepared transactions older than
// opts.MaxPreparedAge, and the offset between this host's clock and the
// server's. It implements drivers.Doctor and changes nothing on the server.
func (r *Resource) Doctor(ctx context.Context, opts drivers.DoctorOptions) []drivers.Check {
	opts = opts.WithDefaults()
	conn, err := r.pool.Acquire(ctx)
	if err != nil {
		return []drivers.Check{{Name: "connect", Status: drivers.CheckFail,
			Detail: "cannot connect: " + r.scrubPassword(err.Error()),
			Fix:    "check that the server is running and the URL's host, port, database, user and password"}}
	}
	defer conn.Release()

	var s pgSettings
	err = conn.QueryRow(ctx, `
		SELECT current_setting('server_version'),
		       current_setting('max_prepared_transactions')::int,
		       current_setting('max_connections')::int,
		       current_user::text, current_database()::text,
		       current_setting('is_superuser')::bool`).
		Scan(&s.version, &s.maxPrepared, &s.maxConnections, &s.user, &s.database, &s.superuser)
	if err != nil {
		return []drivers.Check{{Name: "settings", Status: drivers.CheckFail,
			Detail: "cannot read the server's settings: " + r.scrubPassword(err.Error()),
			Fix:    "check the connection and the role's rights, then run doctor again"}}
	}

	checks := []drivers.Check{
		{Name: "version", Status: drivers.CheckOK, Detail: "PostgreSQL " + s.version},
	}
	prepared, perr := listPrepared(ctx, conn)
	inUse := len(prepared)
	if perr != nil {
		inUse = -1
	}
	checks = append(checks, maxPreparedCheck(s.maxPrepared, s.maxConnections, inUse), roleCheck(s))
	if perr != nil {
		checks = append(checks, drivers.Check{Name: "prepared", Status: drivers.CheckFail,
			Detail: "cannot read pg_prepared_xacts: " + r.scrubPassword(perr.Error()),
			Fix:    "check the connection and retry"})
	} else {
		checks = append(checks, preparedCheck(prepared, opts.MaxPreparedAge, opts.Now()))
	}
	checks = append(checks, drivers.ClockCheck(ctx, opts.Now, func(ctx context.Context) (time.Time, error) {
		var t time.Time
		err := conn.QueryRow(ctx, "SELECT clock_timestamp()").Scan(&t)
		return t, err
	}))
	return checks
}

// scrubPassword removes the pool's password from a message, should a
// driver or server message ever quote it.
func (r *Resource) scrubPassword(msg string) string {
	return redact.Passwords(r.pool.Config().ConnConfig.Password)(msg)
}

// pgSettings is what Doctor reads in its first query.
type pgSettings struct {
	version        string
	maxPrepared    int
	maxConnections int
	user, database string
	superuser      bool
}

// pgPrepared is one row of pg_prepared_xacts as Doctor sees it.
type pgPrepared struct {
	gid, owner, database string
	serverAge            time.Duration // since PREPARE, by the server's clock
	xidAge               int64         // age(transaction): how far it holds back freezing
}

func listPrepared(ctx context.Context, conn *pgxpool.Conn) ([]pgPrepared, error) {
	rows, err := conn.Query(ctx, `
		SELECT gid, owner::text, database::text,
		       EXTRACT(EPOCH FROM clock_timestamp() - prepared)::float8,
		       age(transaction)::bigint
		  FROM pg_prepared_xacts`)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var out []pgPrepared
	for rows.Next() {
		var p pgPrepared
		var secs float64
		if err := rows.Scan(&p.gid, &p.owner, &p.database, &secs, &p.xidAge); err != nil {
			return nil, err
		}
		p.serverAge = time.Duration(secs * float64(time.Second))
		out = append(out, p)
	}
	return out, rows.Err()
}

// maxPreparedCheck judges max_prepared_transactions. inUse is how many
// transactions are prepared now (-1 if unknown).
func maxPreparedCheck(maxPrepared, maxConnections, inUse int) drivers.Check {
	c := drivers.Check{Name: "max_prepared_transactions", Status: drivers.CheckOK}
	used := ""
	if inUse >= 0 {
		used = fmt.Sprintf(", %d in use", inUse)
	}
	restart := fmt.Sprintf("set max_prepared_transactions = %d (at least max_connections) in postgresql.conf and restart the server", max(maxConnections, 1))
	switch {
	case maxPrepared <= 0:
		c.Status = drivers.CheckFail
		c.Detail = "max_prepared_transactions = 0: prepared transactions are disabled, so PREPARE TRANSACTION fails and every global transaction with a branch here aborts"
		c.Fix = restart
	case maxPrepared < maxConnections:
		c.Status = drivers.CheckWarn
		c.Detail = fmt.Sprintf("max_prepared_transactions = %d, below max_connections = %d%s: once that many transactions are prepared at once, PREPARE TRANSACTION fails and the global transaction aborts",
			maxPrepared, maxConnections, used)
		c.Fix = restart
	case inUse >= 0 && inUse*10 >= maxPrepared*9:
		c.Status = drivers.CheckWarn
		c.Detail = fmt.Sprintf("max_prepared_transactions = %d (max_connections %d)%s: nearly full, further PREPARE TRANSACTIONs will fail", maxPrepared, maxConnections, used)
		c.Fix = "finish the prepared transactions left behind (xabridge list --all, xabridge recover), or raise max_prepared_transactions and restart"
	default:
		c.Detail = fmt.Sprintf("max_prepared_transactions = %d (max_connections %d)%s", maxPrepared, maxConnections, used)
	}
	return c
}

// roleCheck explains the same-role rule of COMMIT PREPARED for the role
// the resource connects as.
func roleCheck(s pgSettings) drivers.Check {
	c := drivers.Check{Name: "role", Status: drivers.CheckOK}
	if s.superuser {
		c.Detail = fmt.Sprintf("connected as %s, a superuser, to database %s: it can finish any prepared transaction of this database",
			drivers.DisplayID(s.user), drivers.DisplayID(s.database))
		return c
	}
	c.Status = drivers.CheckWarn
	c.Detail = fmt.Sprintf("connected as %s (not a superuser) to database %s: COMMIT PREPARED and ROLLBACK PREPARED must run as the role that prepared the transaction (or a superuser), in the same database, so recovery must connect exactly like this",
		drivers.DisplayID(s.user), drivers.DisplayID(s.database))
	c.Fix = "give recovery (xabridge recover/resolve) the same role and database as the coordinator, or a superuser"
	return c
}

// preparedCheck reports prepared transactions older than maxAge. A gid of
// xabridge ages from its XID's begin time, read with this host's clock as
// `xabridge list` does; any other from its PREPARE, by the server's clock.
func preparedCheck(ps []pgPrepared, maxAge time.Duration, now time.Time) drivers.Check {
	c := drivers.Check{Name: "prepared", Status: drivers.CheckOK}
	type aged struct {
		p    pgPrepared
		age  time.Duration
		ours bool
	}
	var old []aged
	ours := 0
	for _, p := range ps {
		a := aged{p: p, age: p.serverAge}
		if x, ok := drivers.ParseGID(p.gid); ok {
			a.ours, a.age = true, now.Sub(x.Global.Begin())
			ours++
		}
		if a.age > maxAge {
			old = append(old, a)
		}
	}
	if len(old) == 0 {
		c.Detail = fmt.Sprintf("none prepared longer than %s (%d prepared on the server, %d of them xabridge's)", drivers.FormatAge(maxAge), len(ps), ours)
		return c
	}
	sort.Slice(old, func(i, j int) bool {
		if old[i].age != old[j].age {
			return old[i].age > old[j].age
		}
		return old[i].p.gid < old[j].p.gid
	})
	o := old[0]
	whose := "not xabridge's"
	if o.ours {
		whose = "xabridge's"
	}
	c.Status = drivers.CheckWarn
	c.Detail = fmt.Sprintf("%d of %d prepared transactions are older than %s: they hold their locks and block VACUUM from removing or freezing rows (xid wraparound risk). Oldest: gid %s (%s), owner %s, database %s, age %s, xid age %d",
		len(old), len(ps), drivers.FormatAge(maxAge), drivers.DisplayID(o.p.gid), whose, drivers.DisplayID(o.p.owner), drivers.DisplayID(o.p.database), drivers.FormatAge(o.age), o.p.xidAge)
	c.Fix = "finish them: xabridge's with `xabridge list` and `xabridge recover` (as the node that owns them); others' with COMMIT PREPARED or ROLLBACK PREPARED once their application confirms the outcome"
	return c
}
