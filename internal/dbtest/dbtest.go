// Package dbtest finds the real database servers the tests run against.
//
// The URLs come from XABRIDGE_PG and XABRIDGE_MYSQL when set. Otherwise
// XABRIDGE_TEST_DB decides: "containers" starts containers with
// testcontainers-go (the test binary must import internal/dbtest/containers,
// as the integration tests do, and a Docker engine must answer), "local"
// starts the project's throwaway local servers with `scripts/devdb up` (once
// per test binary; they are left running for the next test binary) and uses
// the URLs `scripts/devdb env` prints, and "auto" (the default) takes
// containers when a starter is registered and Docker answers, the local
// servers otherwise. A test that needs a server that cannot be had fails; it
// never skips.
package dbtest

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"net"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
)

var (
	once    sync.Once
	urls    map[string]string
	source  Source
	onceErr error

	starterMu sync.Mutex
	starter   ContainerStarter
)

// Source is where the test databases come from.
type Source string

// The places test databases come from, in order of preference.
const (
	SourceEnv        Source = "environment"    // XABRIDGE_PG / XABRIDGE_MYSQL
	SourceContainers Source = "testcontainers" // containers on a reachable Docker engine
	SourceLocal      Source = "local"          // scripts/devdb servers on loopback
)

// ContainerStarter starts database containers and returns their URLs by
// environment key (XABRIDGE_PG, XABRIDGE_MYSQL).
type ContainerStarter func(ctx context.Context) (map[string]string, error)

// RegisterContainers makes s the way to start containers in this test
// binary (internal/dbtest/containers registers itself on import).
func RegisterContainers(s ContainerStarter) {
	starterMu.Lock()
	defer starterMu.Unlock()
	starter = s
}

// Mode is XABRIDGE_TEST_DB: "auto" (the default), "containers" or "local".
func Mode() string {
	if m := os.Getenv("XABRIDGE_TEST_DB"); m != "" {
		return m
	}
	return "auto"
}

// Choose decides where a test database comes from: the environment when
// its variable is set, else as mode says (see Mode): containers when
// demanded, or in auto mode when a starter is registered and a Docker engine
// is reachable; else the local servers. Containers demanded but impossible
// is an error, never a silent fallback.
func Choose(envValue, mode string, haveStarter, dockerReachable bool) (Source, error) {
	if envValue != "" {
		return SourceEnv, nil
	}
	switch mode {
	case "local":
		return SourceLocal, nil
	case "containers":
		if !haveStarter {
			return SourceContainers, fmt.Errorf("XABRIDGE_TEST_DB=containers, but this test binary does not import internal/dbtest/containers")
		}
		if !dockerReachable {
			return SourceContainers, fmt.Errorf("XABRIDGE_TEST_DB=containers, but no Docker engine answers")
		}
		return SourceContainers, nil
	case "", "auto":
		if haveStarter && dockerReachable {
			return SourceContainers, nil
		}
		return SourceLocal, nil
	}
	return SourceLocal, fmt.Errorf("XABRIDGE_TEST_DB=%q: want auto, containers or local", mode)
}

// DockerReachable reports whether a Docker engine answers at DOCKER_HOST
// (unix:// or tcp://) or, when that is unset, at /var/run/docker.sock.
func DockerReachable() bool {
	network, addr := "unix", "/var/run/docker.sock"
	if h := os.Getenv("DOCKER_HOST"); h != "" {
		u, err := url.Parse(h)
		if err != nil {
			return false
		}
		switch u.Scheme {
		case "unix":
			addr = u.Path
		case "tcp":
			network, addr = "tcp", u.Host
		default:
			return false
		}
	}
	c, err := net.DialTimeout(network, addr, time.Second)
	if err != nil {
		return false
	}
	_ = c.Close()
	return true
}

// Used reports where the databases of this test binary came from, once a
// test asked for one without its environment variable set.
func Used() Source { return source }

// PG returns the PostgreSQL URL for tests.
func PG(t testing.TB) string { t.Helper(); return get(t, "XABRIDGE_PG") }

// MySQL returns the MySQL/MariaDB URL for tests (mysql://user@host:port/db).
func MySQL(t testing.TB) string { t.Helper(); return get(t, "XABRIDGE_MYSQL") }

// WithDatabase returns rawURL (a test database URL) naming database db
// instead: for tests of a URL pointed at the wrong database.
func WithDatabase(t testing.TB, rawURL, db string) string {
	t.Helper()
	u, err := url.Parse(rawURL)
	if err != nil {
		t.Fatal(err)
	}
	u.Path = "/" + db
	return u.String()
}

func get(t testing.TB, key string) string {
	t.Helper()
	if v := os.Getenv(key); v != "" {
		return v
	}
	once.Do(func() { urls, source, onceErr = startServers() })
	if onceErr != nil {
		t.Fatalf("dbtest: %s is not set and the %s servers could not be started: %v", key, source, onceErr)
	}
	v := urls[key]
	if v == "" {
		t.Fatalf("dbtest: %s is not set and the %s servers did not provide it", key, source)
	}
	return v
}

// startServers starts containers or local servers, as Choose says.
func startServers() (map[string]string, Source, error) {
	starterMu.Lock()
	s := starter
	starterMu.Unlock()
	src, err := Choose("", Mode(), s != nil, DockerReachable())
	if err != nil {
		return nil, src, err
	}
	if src == SourceContainers {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
		defer cancel()
		m, err := s(ctx)
		return m, src, err
	}
	m, err := startLocal()
	return m, SourceLocal, err
}

// RepoRoot returns the directory holding the module's go.mod.
func RepoRoot() (string, error) {
	dir, err := os.Getwd()
	if err != nil {
		return "", err
	}
	for {
		if _, err := os.Stat(filepath.Join(dir, "go.mod")); err == nil {
			return dir, nil
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", fmt.Errorf("no go.mod above the working directory")
		}
		dir = parent
	}
}

func startLocal() (map[string]string, error) {
	root, err := RepoRoot()
	if err != nil {
		return nil, err
	}
	script := filepath.Join(root, "scripts", "devdb")
	var out bytes.Buffer
	up := exec.Command(script, "up")
	up.Stdout, up.Stderr = &out, &out
	if err := up.Run(); err != nil {
		return nil, fmt.Errorf("%s up: %v\n%s", script, err, out.String())
	}
	env, err := exec.Command(script, "env").Output()
	if err != nil {
		return nil, fmt.Errorf("%s env: %v", script, err)
	}
	m := map[string]string{}
	sc := bufio.NewScanner(bytes.NewReader(env))
	for sc.Scan() {
		line := strings.TrimPrefix(sc.Text(), "export ")
		k, v, ok := strings.Cut(line, "=")
		if !ok {
			continue
		}
		m[k] = strings.Trim(v, "'")
	}
	return m, nil
}
