package mysql

import (
	"context"
	"database/sql"
	"fmt"
	"io"
	"net"
	"net/url"
	"strings"

	mysqldriver "github.com/go-sql-driver/mysql"

	"github.com/xabridge/xabridge/drivers"
	"github.com/xabridge/xabridge/internal/redact"
)

func init() {
	drivers.Register("mysql", open)
	drivers.Register("mariadb", open)
}

// ParseURL turns a URL into a go-sql-driver configuration:
//
//	mysql://user:password@host:port/dbname?param=value&...
//	mariadb://user@host/dbname
//	mysql://user@/dbname?socket=/run/mysqld/mysqld.sock
//
// The host defaults to 127.0.0.1 and the port to 3306. User, password and
// database name are percent-decoded. Query parameters are go-sql-driver's
// DSN parameters (tls, timeout, readTimeout, parseTime, loc, charset, ...)
// and pass through unchanged; as in a DSN, an unknown parameter is a
// session system variable set on every connection (innodb_lock_wait_timeout=5).
// The extra parameter socket selects a Unix socket instead of TCP. A
// password or passwd parameter is refused: go-sql-driver would run
// SET password=…, changing the account's password.
//
// Errors never contain the password.
func ParseURL(rawURL string) (*mysqldriver.Config, error) {
	shown := redact.URL(rawURL)
	u, err := url.Parse(rawURL)
	if err != nil {
		// url.Error repeats the whole URL, password included, and its
		// inner error may quote part of it: say only what to check.
		return nil, fmt.Errorf("mysql: cannot parse URL %s (want mysql://user:password@host:port/db?param=value, with user and password percent-encoded)", shown)
	}
	switch strings.ToLower(u.Scheme) {
	case "mysql", "mariadb":
	default:
		return nil, fmt.Errorf("mysql: URL %s: scheme must be mysql:// or mariadb://", shown)
	}
	if u.Opaque != "" {
		return nil, fmt.Errorf("mysql: URL %s: want scheme://user@host/db", shown)
	}
	dbname := strings.TrimPrefix(u.Path, "/")
	if strings.Contains(dbname, "/") {
		return nil, fmt.Errorf("mysql: URL %s: the path must be a single database name", shown)
	}
	q := u.Query()
	for k := range q {
		if strings.EqualFold(k, "password") || strings.EqualFold(k, "passwd") {
			return nil, fmt.Errorf("mysql: URL %s: put the password in the user part (user:password@host), not in a %q parameter", shown, k)
		}
	}
	addr := "tcp(" + hostPort(u) + ")"
	if sock := q.Get("socket"); sock != "" {
		if u.Host != "" {
			return nil, fmt.Errorf("mysql: URL %s: give either a host or a socket, not both", shown)
		}
		addr = "unix(" + sock + ")"
		q.Del("socket")
	}
	// The DSN carries no user or password (they are set on the Config
	// afterwards), so go-sql-driver's errors cannot quote them. Parameters
	// are re-encoded with QueryEscape, the DSN's own convention, which also
	// escapes any '/' (the DSN parser looks for the last '/').
	dsn := addr + "/" + url.PathEscape(dbname)
	if len(q) > 0 {
		dsn += "?" + q.Encode()
	}
	cfg, err := mysqldriver.ParseDSN(dsn)
	if err != nil {
		return nil, fmt.Errorf("mysql: URL %s: %w", shown, err)
	}
	if u.User != nil {
		cfg.User = u.User.Username()
		cfg.Passwd, _ = u.User.Password()
	}
	return cfg, nil
}

// hostPort returns the URL's host:port with the defaults filled in.
func hostPort(u *url.URL) string {
	host, port := u.Hostname(), u.Port()
	if host == "" {
		host = "127.0.0.1"
	}
	if port == "" {
		port = "3306"
	}
	return net.JoinHostPort(host, port)
}

// open is the drivers.Opener for mysql:// and mariadb:// URLs: a new pool
// (closed by the returned Closer), checked with a ping.
func open(ctx context.Context, name, rawURL string) (drivers.Resource, io.Closer, error) {
	cfg, err := ParseURL(rawURL)
	if err != nil {
		return nil, nil, err
	}
	conn, err := mysqldriver.NewConnector(cfg)
	if err != nil {
		return nil, nil, fmt.Errorf("mysql: resource %s (%s): %w", name, redact.URL(rawURL), err)
	}
	db := sql.OpenDB(conn)
	if err := db.PingContext(ctx); err != nil {
		_ = db.Close()
		return nil, nil, fmt.Errorf("mysql: resource %s (%s): %w", name, redact.URL(rawURL), redact.Error(err, redact.Passwords(cfg.Passwd)))
	}
	return New(name, db), db, nil
}
