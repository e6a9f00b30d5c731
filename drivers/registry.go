package drivers

import (
	"context"
	"fmt"
	"io"
	"reflect"
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
	if err := ValidateResourceName(name); err != nil {
		return nil, nil, err
	}
	scheme, _, ok := strings.Cut(rawURL, "://")
	if !ok || scheme == "" {
		// Not echoed: what is not a URL cannot be taken apart, and may
		// be or hold a password.
		return nil, nil, fmt.Errorf("resource %s: the value is not a URL: no scheme:// (want scheme://user@host/db, schemes: %s)",
			name, strings.Join(Schemes(), ", "))
	}
	registryMu.RLock()
	open := registry[strings.ToLower(scheme)]
	registryMu.RUnlock()
	if open == nil {
		return nil, nil, fmt.Errorf("resource %s: unknown scheme %q (known: %s)", name, scheme, strings.Join(Schemes(), ", "))
	}
	return open(ctx, name, rawURL)
}

// IsNil reports whether r is nil, also a nil pointer in a non-nil
// interface (a (*postgres.Resource)(nil)), whose methods would panic.
func IsNil(r Resource) bool {
	if r == nil {
		return true
	}
	v := reflect.ValueOf(r)
	switch v.Kind() {
	case reflect.Pointer, reflect.Map, reflect.Slice, reflect.Func, reflect.Chan, reflect.Interface:
		return v.IsNil()
	}
	return false
}
