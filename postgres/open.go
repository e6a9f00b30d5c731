package postgres

import (
	"context"
	"fmt"
	"io"
	"net/url"
	"strings"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/xabridge/xabridge/drivers"
)

func init() {
	drivers.Register("postgres", open)
	drivers.Register("postgresql", open)
}

// open is the drivers.Opener for postgres:// and postgresql:// URLs.
func open(ctx context.Context, name, rawURL string) (drivers.Resource, io.Closer, error) {
	pool, err := NewPool(ctx, rawURL)
	if err != nil {
		return nil, nil, fmt.Errorf("resource %s: %w", name, err)
	}
	return New(name, pool), closerFunc(pool.Close), nil
}

type closerFunc func()

func (f closerFunc) Close() error { f(); return nil }

// NewPool makes a pgxpool.Pool from a postgres:// or postgresql:// URL (or a
// keyword/value connection string), with pgx's pool settings in the query
// string (pool_max_conns, ...). It does not connect: the first use does.
// Errors never contain the password.
func NewPool(ctx context.Context, rawURL string) (*pgxpool.Pool, error) {
	cfg, err := pgxpool.ParseConfig(rawURL)
	if err != nil {
		return nil, fmt.Errorf("postgres: invalid connection URL %s: %s", drivers.RedactURL(rawURL), scrub(err.Error(), rawURL))
	}
	pool, err := pgxpool.NewWithConfig(ctx, cfg)
	if err != nil {
		return nil, fmt.Errorf("postgres: %s: %s", drivers.RedactURL(rawURL), scrub(err.Error(), rawURL))
	}
	return pool, nil
}

// scrub removes the URL's password from a driver message. pgx redacts
// passwords from its parse errors only on a best-effort basis, so the
// message is cleaned again here, and dropped entirely if the password
// cannot be located (then it might appear in any form).
func scrub(msg, rawURL string) string {
	pw, ok := passwordOf(rawURL)
	if !ok {
		return "the connection string could not be parsed (details withheld because it may contain a password)"
	}
	if pw != "" {
		msg = strings.ReplaceAll(msg, pw, "xxxxx")
		if esc := url.QueryEscape(pw); esc != pw {
			msg = strings.ReplaceAll(msg, esc, "xxxxx")
		}
		if esc := url.PathEscape(pw); esc != pw {
			msg = strings.ReplaceAll(msg, esc, "xxxxx")
		}
	}
	return msg
}

// passwordOf returns the password in a URL's user info or password query
// parameter ("" when there is none); ok is false when rawURL is not a URL
// that can be taken apart reliably.
func passwordOf(rawURL string) (pw string, ok bool) {
	if !strings.Contains(rawURL, "://") {
		// A keyword/value string: pgx parsed it, and a password in it
		// would be after "password=".
		if strings.Contains(strings.ToLower(rawURL), "password") {
			return "", false
		}
		return "", true
	}
	u, err := url.Parse(rawURL)
	if err != nil {
		return "", false
	}
	if u.User != nil {
		if p, has := u.User.Password(); has {
			pw = p
		}
	}
	for k, vs := range u.Query() {
		if strings.EqualFold(k, "password") || strings.EqualFold(k, "passwd") {
			if len(vs) > 0 && vs[0] != "" {
				if pw != "" && pw != vs[0] {
					return "", false // two passwords: too clever to scrub reliably
				}
				pw = vs[0]
			}
		}
	}
	return pw, true
}
