package drivers

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/url"
	"sort"
	"strings"
	"sync"
)

// Opener opens a resource named name from a URL, with a connection pool the
// returned Closer shuts down.
type Opener func(ctx context.Context, name, rawURL string) (Resource, io.Closer, error)

var (
	registryMu sync.RWMutex
	registry   = map[string]Opener{}
)

// Register makes an adapter available to Open under a URL scheme. Adapters
// call it from init, as database/sql drivers do. It panics if the scheme is
// registered twice.
func Register(scheme string, open Opener) {
	registryMu.Lock()
	defer registryMu.Unlock()
	if open == nil {
		panic("drivers: Register opener is nil")
	}
	if _, dup := registry[scheme]; dup {
		panic("drivers: Register called twice for scheme " + scheme)
	}
	registry[scheme] = open
}

// Schemes lists the registered URL schemes, sorted.
func Schemes() []string {
	registryMu.RLock()
	defer registryMu.RUnlock()
	s := make([]string, 0, len(registry))
	for k := range registry {
		s = append(s, k)
	}
	sort.Strings(s)
	return s
}

// Open opens a resource from a URL such as postgres://user@host/db or
// mysql://user@host:3306/db, using the adapter registered for its scheme.
// Errors never contain the URL's password.
func Open(ctx context.Context, name, rawURL string) (Resource, io.Closer, error) {
	if name == "" {
		return nil, nil, errors.New("resource name is empty")
	}
	scheme, _, ok := strings.Cut(rawURL, "://")
	if !ok || scheme == "" {
		return nil, nil, fmt.Errorf("resource %s: %q is not a URL (want scheme://user@host/db, schemes: %s)",
			name, RedactURL(rawURL), strings.Join(Schemes(), ", "))
	}
	registryMu.RLock()
	open := registry[strings.ToLower(scheme)]
	registryMu.RUnlock()
	if open == nil {
		return nil, nil, fmt.Errorf("resource %s: unknown scheme %q (known: %s)", name, scheme, strings.Join(Schemes(), ", "))
	}
	return open(ctx, name, rawURL)
}

// RedactURL returns rawURL with any password replaced by "xxxxx", for logs
// and error messages. A string that does not parse as a URL is replaced
// entirely past its scheme, since it might hold a password in an unknown
// place.
func RedactURL(rawURL string) string {
	u, err := url.Parse(rawURL)
	if err != nil || u.Scheme == "" || u.Opaque != "" || !strings.Contains(rawURL, "://") {
		if scheme, _, ok := strings.Cut(rawURL, "://"); ok && isScheme(scheme) {
			return scheme + "://(unparseable)"
		}
		return "(unparseable)"
	}
	if u.User != nil {
		if _, has := u.User.Password(); has {
			u.User = url.UserPassword(u.User.Username(), "xxxxx")
		}
	}
	q := u.Query()
	changed := false
	for k := range q {
		if strings.EqualFold(k, "password") || strings.EqualFold(k, "passwd") {
			q.Set(k, "xxxxx")
			changed = true
		}
	}
	if changed {
		u.RawQuery = q.Encode()
	}
	return u.Redacted()
}

func isScheme(s string) bool {
	if s == "" {
		return false
	}
	for _, c := range s {
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '+' || c == '-' || c == '.') {
			return false
		}
	}
	return true
}
