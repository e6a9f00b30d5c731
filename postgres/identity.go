package postgres

import (
	"context"
	"fmt"

	"github.com/xabridge/xabridge/drivers"
)

var _ drivers.Identifier = (*Resource)(nil)

// Identity returns the database r reaches: the cluster's system identifier
// (pg_control_system(), which every role may call on PostgreSQL 10 and
// later, unless an administrator revoked it) and the current database.
// Prepared transactions belong to one database of one cluster, so the two
// together name where r's branches live. Where the system identifier cannot
// be read, the server's address and port stand in for it ("addr host:port"),
// a weaker identity that still tells two servers apart but changes when the
// server moves. The answer is cached for r's lifetime.
func (r *Resource) Identity(ctx context.Context) (drivers.Identity, error) {
	return r.ident.Get(ctx, r.readIdentity)
}

// CachedIdentity returns the cached Identity, or starts reading it in the
// background and returns false (see drivers.Identifier).
func (r *Resource) CachedIdentity() (drivers.Identity, bool) {
	return r.ident.Peek(r.readIdentity)
}

func (r *Resource) readIdentity(ctx context.Context) (drivers.Identity, error) {
	id := drivers.Identity{Engine: "postgres"}
	err := r.pool.QueryRow(ctx, `SELECT system_identifier::text, current_database() FROM pg_control_system()`).
		Scan(&id.Server, &id.Database)
	if err == nil {
		return id, nil
	}
	// pg_control_system() revoked: fall back to the address.
	if ferr := r.pool.QueryRow(ctx, `SELECT 'addr ' || coalesce(host(inet_server_addr()), 'local') || ':' || coalesce(inet_server_port(), 0)::text, current_database()`).
		Scan(&id.Server, &id.Database); ferr != nil {
		return drivers.Identity{}, drivers.NewError(r.name, "identity", drivers.XID{}, noEffectKind(ferr),
			fmt.Errorf("reading the server's identity: %w (system identifier: %v)", ferr, err))
	}
	return id, nil
}
