package drivers

import (
	"context"
	"errors"
	"fmt"
	"net/url"
	"strings"
	"sync"
	"time"
)

// ErrWrongResource: a resource is not the database a decision names (another
// server, another database, or another engine). Recovery refuses to act on
// it or to end a decision by it.
var ErrWrongResource = errors.New("resource is not the database the decision names")

// Identity names the database a Resource reaches, so that a decision can
// record which database each of its branches lives in and recovery can
// refuse a resource name pointed at another one.
type Identity struct {
	// Engine is the adapter's kind: "postgres" or "mysql" (MySQL and
	// MariaDB alike).
	Engine string
	// Server identifies the server (PostgreSQL: the cluster's system
	// identifier; MySQL: @@server_uuid; MariaDB: @@server_uid and the data
	// directory). It is stable across restarts and differs between two
	// servers.
	Server string
	// Database is the database the resource's sessions use.
	Database string
}

// IsZero reports whether i is unknown.
func (i Identity) IsZero() bool { return i == Identity{} }

// String is i's stored form, engine:server/database with server and
// database path-escaped, as decisions record it (ParseIdentity reads it).
func (i Identity) String() string {
	if i.IsZero() {
		return ""
	}
	return i.Engine + ":" + url.PathEscape(i.Server) + "/" + url.PathEscape(i.Database)
}

// Describe is i for people: "postgres server 7301… db ledger".
func (i Identity) Describe() string {
	db := i.Database
	if db == "" {
		db = "(none)"
	}
	return fmt.Sprintf("%s server %s db %s", i.Engine, i.Server, db)
}

// ParseIdentity reads the stored form of an Identity (Identity.String).
func ParseIdentity(s string) (Identity, error) {
	engine, rest, ok := strings.Cut(s, ":")
	if !ok || engine == "" {
		return Identity{}, fmt.Errorf("resource identity %q: no engine", s)
	}
	server, db, ok := strings.Cut(rest, "/")
	if !ok {
		return Identity{}, fmt.Errorf("resource identity %q: no database part", s)
	}
	var err error
	id := Identity{Engine: engine}
	if id.Server, err = url.PathUnescape(server); err != nil {
		return Identity{}, fmt.Errorf("resource identity %q: %w", s, err)
	}
	if id.Database, err = url.PathUnescape(db); err != nil {
		return Identity{}, fmt.Errorf("resource identity %q: %w", s, err)
	}
	return id, nil
}

// Identifier is an optional interface of a Resource that can say which
// database it reaches. Both adapters implement it; the answer is cached per
// Resource (it costs one query on first use).
type Identifier interface {
	// Identity returns the database the resource reaches.
	Identity(ctx context.Context) (Identity, error)
	// CachedIdentity returns the identity if it was read already, and
	// otherwise starts reading it in the background (one read at a time)
	// and returns false. It never waits: a coordinator deciding a commit
	// while its branches hold pool connections must not wait for another.
	CachedIdentity() (Identity, bool)
}

// IdentityCache remembers a Resource's Identity once it was read. Errors
// are not cached. The zero value is ready to use.
type IdentityCache struct {
	mu      sync.Mutex
	id      Identity
	reading bool // a background read (Peek) is running
}

// identityReadTimeout bounds a background read of an identity.
const identityReadTimeout = 30 * time.Second

// Peek returns the cached identity, or starts one background read with
// read (unless one runs) and returns false.
func (c *IdentityCache) Peek(read func(context.Context) (Identity, error)) (Identity, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if !c.id.IsZero() {
		return c.id, true
	}
	if !c.reading {
		c.reading = true
		go func() {
			ctx, cancel := context.WithTimeout(context.Background(), identityReadTimeout)
			id, err := read(ctx)
			cancel()
			c.mu.Lock()
			defer c.mu.Unlock()
			c.reading = false
			if err == nil {
				c.id = id
			}
		}()
	}
	return Identity{}, false
}

// Get returns the cached identity, reading it with read on first use.
func (c *IdentityCache) Get(ctx context.Context, read func(context.Context) (Identity, error)) (Identity, error) {
	c.mu.Lock()
	id := c.id
	c.mu.Unlock()
	if !id.IsZero() {
		return id, nil
	}
	id, err := read(ctx)
	if err != nil {
		return Identity{}, err
	}
	c.mu.Lock()
	c.id = id
	c.mu.Unlock()
	return id, nil
}

// CheckIdentity compares what a decision recorded for a participant
// (recorded, an Identity's stored form; empty for decisions written before
// identities were recorded) with the identity of the resource named name
// that recovery reaches (got). It returns nil when they match or nothing
// was recorded, and an error wrapping ErrWrongResource otherwise.
func CheckIdentity(name, recorded string, got Identity) error {
	if recorded == "" {
		return nil
	}
	want, err := ParseIdentity(recorded)
	if err != nil {
		return fmt.Errorf("%w: resource %q: the decision's record of it is unreadable: %v", ErrWrongResource, name, err)
	}
	if want == got {
		return nil
	}
	if want.Engine != got.Engine {
		return fmt.Errorf("%w: resource %q is a %s database but the decision names a %s one (%s): is --resource %s pointing at the right server?",
			ErrWrongResource, name, got.Engine, want.Engine, want.Describe(), name)
	}
	return fmt.Errorf("%w: resource %q is %s but the decision names %s: is --resource %s pointing at the right server?",
		ErrWrongResource, name, got.Describe(), want.Describe(), name)
}
