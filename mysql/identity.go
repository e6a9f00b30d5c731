package mysql

import (
	"context"
	"database/sql"
	"fmt"

	"github.com/xabridge/xabridge/drivers"
)

var _ drivers.Identifier = (*Resource)(nil)

// Identity returns the server and database r reaches. XA branches are
// server-wide on MySQL and MariaDB, so the server is what matters; the
// database is recorded too, to tell a resource pointed at another database
// of the same server.
//
// MySQL has @@server_uuid, generated once per data directory. MariaDB has no
// server_uuid; its @@server_uid (present on the 10.11 we test; older
// releases may lack it) is a hash of the host's hardware address and the
// port, stable across restarts and different for
// two servers on one host or on two hosts, but the same for another server
// started later on the same host and port, so the data directory is added.
// Without either, the host name, port and data directory stand in.
// @@server_id is not used: it is 1 on every server nobody configured for
// replication. Nothing is written to the server: a participant never gets
// a table it did not agree to.
//
// Limits: moving the data directory, or (MariaDB) moving the server to
// another host or port, changes the identity; recovery then refuses the
// decisions recorded before, and the operator finishes their branches by
// hand (xabridge resolve --force after checking the server).
func (r *Resource) Identity(ctx context.Context) (drivers.Identity, error) {
	return r.ident.Get(ctx, r.readIdentity)
}

// CachedIdentity returns the cached Identity, or starts reading it in the
// background and returns false (see drivers.Identifier).
func (r *Resource) CachedIdentity() (drivers.Identity, bool) {
	return r.ident.Peek(r.readIdentity)
}

func (r *Resource) readIdentity(ctx context.Context) (drivers.Identity, error) {
	rows, err := r.db.QueryContext(ctx,
		"SHOW VARIABLES WHERE Variable_name IN ('server_uuid', 'server_uid', 'datadir', 'hostname', 'port')")
	if err != nil {
		return drivers.Identity{}, r.errorf("identity", drivers.XID{}, classifyPlain(err), err)
	}
	v := map[string]string{}
	for rows.Next() {
		var name, val string
		if err := rows.Scan(&name, &val); err != nil {
			_ = rows.Close()
			return drivers.Identity{}, r.errorf("identity", drivers.XID{}, drivers.ErrFailed, err)
		}
		v[name] = val
	}
	if err := rows.Err(); err != nil {
		return drivers.Identity{}, r.errorf("identity", drivers.XID{}, classifyPlain(err), err)
	}
	var db sql.NullString
	if err := r.db.QueryRowContext(ctx, "SELECT DATABASE()").Scan(&db); err != nil {
		return drivers.Identity{}, r.errorf("identity", drivers.XID{}, classifyPlain(err), err)
	}
	id := drivers.Identity{Engine: "mysql", Database: db.String}
	switch {
	case v["server_uuid"] != "":
		id.Server = v["server_uuid"]
	case v["server_uid"] != "":
		id.Server = fmt.Sprintf("uid %s datadir %s", v["server_uid"], v["datadir"])
	default:
		id.Server = fmt.Sprintf("host %s:%s datadir %s", v["hostname"], v["port"], v["datadir"])
	}
	return id, nil
}
