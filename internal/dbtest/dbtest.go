// Package dbtest finds the real database servers the tests run against.
//
// The URLs come from XABRIDGE_PG and XABRIDGE_MYSQL when set. Otherwise the
// package starts the project's throwaway local servers with `scripts/devdb up`
// (once per test binary; they are left running for the next test binary) and
// uses the URLs `scripts/devdb env` prints. A test that needs a server that
// cannot be had fails; it never skips.
package dbtest

import (
	"bufio"
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
)

var (
	once    sync.Once
	urls    map[string]string
	onceErr error
)

// PG returns the PostgreSQL URL for tests.
func PG(t testing.TB) string { t.Helper(); return get(t, "XABRIDGE_PG") }

// MySQL returns the MySQL/MariaDB URL for tests (mysql://user@host:port/db).
func MySQL(t testing.TB) string { t.Helper(); return get(t, "XABRIDGE_MYSQL") }

func get(t testing.TB, key string) string {
	t.Helper()
	if v := os.Getenv(key); v != "" {
		return v
	}
	once.Do(func() { urls, onceErr = startLocal() })
	if onceErr != nil {
		t.Fatalf("dbtest: %s is not set and the local servers could not be started: %v", key, onceErr)
	}
	v := urls[key]
	if v == "" {
		t.Fatalf("dbtest: %s is not set and scripts/devdb env did not print it", key)
	}
	return v
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
