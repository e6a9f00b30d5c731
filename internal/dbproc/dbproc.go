// Package dbproc owns private PostgreSQL and MariaDB server processes for
// tests that must kill, restart or reconfigure their servers: each Pair is a
// `scripts/devdb` instance with its own base directory and ports, never the
// shared servers other tests use.
package dbproc

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"
)

// Server names one server of a pair.
type Server string

// The two servers of a pair.
const (
	PG Server = "pg"
	My Server = "my"
)

// Pair is a private PostgreSQL + MariaDB pair on loopback.
type Pair struct {
	script         string
	dir            string
	pgPort, myPort int

	mu sync.Mutex // one devdb command at a time (the script also locks)
}

// Start starts a fresh pair with the devdb script at script, in a new
// directory under os.TempDir(), on free ports. Stop removes it.
func Start(ctx context.Context, script string) (*Pair, error) {
	if _, err := os.Stat(script); err != nil {
		return nil, fmt.Errorf("dbproc: devdb script: %w", err)
	}
	dir, err := os.MkdirTemp("", dirPattern)
	if err != nil {
		return nil, fmt.Errorf("dbproc: %w", err)
	}
	// The servers run as their own users (postgres, mysql) when we are
	// root: they must be able to reach their directories.
	if err := os.Chmod(dir, 0o755); err != nil {
		return nil, fmt.Errorf("dbproc: %w", err)
	}
	ports, err := freePorts(2)
	if err != nil {
		_ = os.RemoveAll(dir)
		return nil, err
	}
	p := &Pair{script: script, dir: dir, pgPort: ports[0], myPort: ports[1]}
	// Who owns the pair, so that a later run can stop it if this process
	// dies without Stop (a test binary killed by its timeout).
	if err := os.WriteFile(filepath.Join(dir, ownerFile), []byte(strconv.Itoa(os.Getpid())), 0o644); err != nil {
		_ = os.RemoveAll(dir)
		return nil, fmt.Errorf("dbproc: %w", err)
	}
	if err := p.devdb(ctx, "up"); err != nil {
		_ = p.devdb(context.WithoutCancel(ctx), "down")
		_ = os.RemoveAll(dir)
		return nil, err
	}
	return p, nil
}

const (
	dirPattern = "xab-dbproc-"
	ownerFile  = "owner.pid"
)

// ReapStale stops and removes pairs left behind by processes that died
// without stopping them (their owner pid is gone). Pairs of live processes
// are left alone. It returns how many it removed.
func ReapStale(ctx context.Context, script string) (int, error) {
	dirs, err := filepath.Glob(filepath.Join(os.TempDir(), dirPattern+"*"))
	if err != nil {
		return 0, err
	}
	n := 0
	var errs []error
	for _, dir := range dirs {
		b, err := os.ReadFile(filepath.Join(dir, ownerFile))
		if err != nil {
			continue // starting, or not ours
		}
		pid, err := strconv.Atoi(string(b))
		if err != nil || pid <= 0 || processAlive(pid) {
			continue
		}
		p := &Pair{script: script, dir: dir}
		if err := p.Stop(ctx); err != nil {
			errs = append(errs, err)
			continue
		}
		n++
	}
	return n, errors.Join(errs...)
}

// processAlive reports whether pid is a running (not zombie) process.
func processAlive(pid int) bool {
	b, err := os.ReadFile(filepath.Join("/proc", strconv.Itoa(pid), "stat"))
	if err != nil {
		return false
	}
	// /proc/PID/stat: "pid (comm) S ..."; the state follows the last ')'.
	i := bytes.LastIndexByte(b, ')')
	return i < 0 || i+2 >= len(b) || b[i+2] != 'Z'
}

// freePorts returns n loopback ports that were free a moment ago, chosen
// below the kernel's ephemeral range: a server killed by a test keeps its
// port across the restart, and a port of the ephemeral range can be taken
// meanwhile by any outgoing connection (the tests' own clients, Docker's
// published ports), which then makes the restart fail.
func freePorts(n int) ([]int, error) {
	var ls []net.Listener
	defer func() {
		for _, l := range ls {
			_ = l.Close()
		}
	}()
	lo, hi := listenRange()
	var ports []int
	for tries := 0; len(ports) < n; tries++ {
		if tries == 1000 {
			return nil, fmt.Errorf("dbproc: no free loopback port in %d-%d", lo, hi)
		}
		port := lo + rand.IntN(hi-lo)
		l, err := net.Listen("tcp", net.JoinHostPort("127.0.0.1", strconv.Itoa(port)))
		if err != nil {
			continue // in use
		}
		ls = append(ls, l)
		ports = append(ports, port)
	}
	return ports, nil
}

// listenRange is where freePorts draws from: 10000 up to the start of the
// ephemeral range (/proc/sys/net/ipv4/ip_local_port_range; Linux's default
// 32768 where it cannot be read).
func listenRange() (lo, hi int) {
	lo, hi = 10000, 32768
	b, err := os.ReadFile("/proc/sys/net/ipv4/ip_local_port_range")
	if err != nil {
		return lo, hi
	}
	f := strings.Fields(string(b))
	if len(f) != 2 {
		return lo, hi
	}
	if start, err := strconv.Atoi(f[0]); err == nil && start > lo+1000 {
		hi = start
	}
	return lo, hi
}

func (p *Pair) devdb(ctx context.Context, args ...string) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	cmd := exec.CommandContext(ctx, p.script, args...)
	cmd.Env = append(os.Environ(),
		"XABRIDGE_DEVDB_DIR="+p.dir,
		"XABRIDGE_DEVDB_PG_PORT="+strconv.Itoa(p.pgPort),
		"XABRIDGE_DEVDB_MY_PORT="+strconv.Itoa(p.myPort),
		"XABRIDGE_DEVDB_ONLY=",
	)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	cmd.WaitDelay = 5 * time.Second
	if err := cmd.Run(); err != nil {
		return fmt.Errorf("dbproc: devdb %v (dir %s): %w\n%s", args, p.dir, err, out.String())
	}
	return nil
}

// PGURL is the PostgreSQL URL of the pair.
func (p *Pair) PGURL() string {
	return fmt.Sprintf("postgres://postgres@127.0.0.1:%d/xabridge?sslmode=disable", p.pgPort)
}

// MyURL is the MariaDB URL of the pair.
func (p *Pair) MyURL() string {
	return fmt.Sprintf("mysql://root@127.0.0.1:%d/xabridge", p.myPort)
}

// Addr returns the host:port the server listens on.
func (p *Pair) Addr(s Server) string {
	if s == PG {
		return "127.0.0.1:" + strconv.Itoa(p.pgPort)
	}
	return "127.0.0.1:" + strconv.Itoa(p.myPort)
}

// Dir is the pair's base directory (data, logs).
func (p *Pair) Dir() string { return p.dir }

func checkServer(s Server) error {
	if s != PG && s != My {
		return fmt.Errorf("dbproc: unknown server %q (want pg or my)", s)
	}
	return nil
}

// Kill9 kills the server's main process (the postmaster, mariadbd) with
// SIGKILL: a crash, with no shutdown.
func (p *Pair) Kill9(ctx context.Context, s Server) error {
	if err := checkServer(s); err != nil {
		return err
	}
	return p.devdb(ctx, "kill9", string(s))
}

// StartServer starts a stopped (or killed) server on its existing data
// directory and waits until it accepts connections; crash recovery of the
// database happens here.
func (p *Pair) StartServer(ctx context.Context, s Server) error {
	if err := checkServer(s); err != nil {
		return err
	}
	return p.devdb(ctx, "start", string(s))
}

// Restart stops the server cleanly and starts it again on the same data.
func (p *Pair) Restart(ctx context.Context, s Server) error {
	if err := checkServer(s); err != nil {
		return err
	}
	return p.devdb(ctx, "restart", string(s))
}

// ServerLog returns the path of the server's own log file.
func (p *Pair) ServerLog(s Server) string {
	if s == PG {
		return filepath.Join(p.dir, "pg", "postgres.log")
	}
	return filepath.Join(p.dir, "my", "error.log")
}

// Stop stops both servers and removes the pair's directory.
func (p *Pair) Stop(ctx context.Context) error {
	err := p.devdb(ctx, "down")
	if rerr := os.RemoveAll(p.dir); rerr != nil {
		err = errors.Join(err, rerr)
	}
	return err
}
