package mysql

import (
	"bytes"
	"context"
	"database/sql"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	mysqldriver "github.com/go-sql-driver/mysql"

	"github.com/xabridge/xabridge/drivers"
	"github.com/xabridge/xabridge/drivers/drivertest"
	"github.com/xabridge/xabridge/internal/dbtest"
)

// testConfig returns the driver configuration of the test server.
func testConfig(t *testing.T) *mysqldriver.Config {
	t.Helper()
	cfg, err := ParseURL(dbtest.MySQL(t))
	if err != nil {
		t.Fatalf("ParseURL: %v", err)
	}
	return cfg
}

// openDB opens a pool on cfg (closed at the end of the test).
func openDB(t *testing.T, cfg *mysqldriver.Config, maxOpen int) *sql.DB {
	t.Helper()
	conn, err := mysqldriver.NewConnector(cfg)
	if err != nil {
		t.Fatalf("NewConnector: %v", err)
	}
	db := sql.OpenDB(conn)
	db.SetMaxOpenConns(maxOpen)
	t.Cleanup(func() { _ = db.Close() })
	return db
}

// env is one test's databases: the resource under test on its own pool, and
// an admin pool for checks from outside the global transaction.
type env struct {
	t     *testing.T
	cfg   *mysqldriver.Config
	db    *sql.DB // the resource's pool
	admin *sql.DB
	r     *Resource
}

func newEnv(t *testing.T, maxOpen int) *env {
	t.Helper()
	cfg := testConfig(t)
	e := &env{t: t, cfg: cfg, db: openDB(t, cfg, maxOpen), admin: openDB(t, cfg, 4)}
	e.r = New("mysql-test", e.db)
	return e
}

func ctxT(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(t.Context(), 20*time.Second)
	t.Cleanup(cancel)
	return ctx
}

// bg is a bounded context that, unlike t.Context, still works in cleanups.
func bg() (context.Context, context.CancelFunc) {
	return context.WithTimeout(context.Background(), 20*time.Second)
}

// sqlExec runs a statement on the admin pool.
func (e *env) sqlExec(q string) {
	e.t.Helper()
	ctx, cancel := bg()
	defer cancel()
	if _, err := e.admin.ExecContext(ctx, q); err != nil {
		e.t.Fatalf("%s: %v", q, err)
	}
}

func (e *env) queryInt(q string) int64 {
	e.t.Helper()
	var n int64
	ctx, cancel := bg()
	defer cancel()
	if err := e.admin.QueryRowContext(ctx, q).Scan(&n); err != nil {
		e.t.Fatalf("%s: %v", q, err)
	}
	return n
}

// table creates a fresh two-column table with rows 1 and 2 (v = 0).
func (e *env) table(prefix string) string {
	e.t.Helper()
	name := fmt.Sprintf("xab_my_%s_%08x", prefix, rand.Uint32())
	e.sqlExec("CREATE TABLE " + name + " (id BIGINT PRIMARY KEY, v BIGINT NOT NULL) ENGINE=InnoDB")
	e.sqlExec("INSERT INTO " + name + " VALUES (1, 0), (2, 0)")
	e.t.Cleanup(func() {
		_, _ = e.admin.ExecContext(context.Background(), "DROP TABLE IF EXISTS "+name)
	})
	return name
}

// begin starts a branch with a fresh XID; the test's cleanup rolls it back
// if the test left it unfinished.
func (e *env) begin(ctx context.Context) *branch {
	e.t.Helper()
	db, err := e.r.Begin(ctx, drivertest.NewXID())
	if err != nil {
		e.t.Fatalf("Begin: %v", err)
	}
	b := db.(*branch)
	e.t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		_ = b.Close()
		// Roll back whatever is left; retry only "later" answers (a
		// finished branch answers nil or ErrFailed at once).
		for delay := time.Millisecond; ctx.Err() == nil; delay = min(2*delay, 50*time.Millisecond) {
			err := b.Rollback(ctx)
			if !errors.Is(err, drivers.ErrBusy) && !errors.Is(err, drivers.ErrInDoubt) && !errors.Is(err, drivers.ErrRetryable) {
				return
			}
			time.Sleep(delay)
		}
	})
	return b
}

// listed reports whether XA RECOVER lists xid.
func (e *env) listed(xid drivers.XID) bool {
	e.t.Helper()
	ps, err := e.r.Recover(ctxT(e.t))
	if err != nil {
		e.t.Fatalf("Recover: %v", err)
	}
	for _, p := range ps {
		if p.Ours && p.XID == xid {
			return true
		}
	}
	return false
}

// sessionListed reports whether the server's processlist has connection id.
func (e *env) sessionListed(id uint64) bool {
	e.t.Helper()
	return e.queryInt(fmt.Sprintf("SELECT COUNT(*) FROM information_schema.PROCESSLIST WHERE ID = %d", id)) > 0
}

// eventually polls cond with a growing delay (1 ms to 50 ms) until it
// holds, failing the test after timeout. No fixed sleeps.
func eventually(t *testing.T, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	delay := time.Millisecond
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s", timeout, what)
		}
		time.Sleep(delay)
		delay = min(2*delay, 50*time.Millisecond)
	}
}

// connID returns CONNECTION_ID() of conn.
func connID(t *testing.T, conn *sql.Conn) uint64 {
	t.Helper()
	var id uint64
	if err := conn.QueryRowContext(ctxT(t), "SELECT CONNECTION_ID()").Scan(&id); err != nil {
		t.Fatalf("CONNECTION_ID(): %v", err)
	}
	return id
}

// ---------------------------------------------------------------- fault proxy

// proxy is a TCP proxy between the driver and the server that can lose the
// server's reply to one chosen statement: it forwards the statement, waits
// for the reply, drops it and closes both sides. The server has then
// executed the statement but the client can never know: a real in-doubt
// outcome, produced deterministically.
type proxy struct {
	t      *testing.T
	ln     net.Listener
	target string

	mu      sync.Mutex
	trigger []byte   // statement text whose reply is lost (once); nil = none
	cmds    []string // the commands clients sent, in order (see commands)
	cuts    atomic.Int32
	wg      sync.WaitGroup
	conns   []net.Conn
}

func newProxy(t *testing.T, target string) *proxy {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("proxy listen: %v", err)
	}
	p := &proxy{t: t, ln: ln, target: target}
	p.wg.Add(1)
	go p.accept()
	t.Cleanup(p.close)
	return p
}

func (p *proxy) addr() string { return p.ln.Addr().String() }

// record parses the client's whole packets in b into p.cmds and returns
// the incomplete rest; p.mu is held. Each command a client sends is one
// packet with sequence number 0 (the login packets have others), named
// "query: TEXT", "prepare: TEXT", "execute", "close" or "cmd 0xNN". Every
// command but close waits for an answer: one round trip.
func (p *proxy) record(b []byte) []byte {
	for len(b) >= 4 {
		n := int(b[0]) | int(b[1])<<8 | int(b[2])<<16
		if len(b) < 4+n {
			break
		}
		seq, body := b[3], b[4:4+n]
		b = b[4+n:]
		if seq != 0 || len(body) == 0 {
			continue
		}
		switch body[0] {
		case 0x03:
			p.cmds = append(p.cmds, "query: "+string(body[1:]))
		case 0x16:
			p.cmds = append(p.cmds, "prepare: "+string(body[1:]))
		case 0x17:
			p.cmds = append(p.cmds, "execute")
		case 0x19:
			p.cmds = append(p.cmds, "close")
		default:
			p.cmds = append(p.cmds, fmt.Sprintf("cmd 0x%02x", body[0]))
		}
	}
	return b
}

// commands returns the commands clients sent through the proxy since the
// last call.
func (p *proxy) commands() []string {
	p.mu.Lock()
	defer p.mu.Unlock()
	out := p.cmds
	p.cmds = nil
	return out
}

// loseReplyTo arms the proxy: the reply to the next statement containing
// stmt is lost and that connection cut.
func (p *proxy) loseReplyTo(stmt string) {
	p.mu.Lock()
	p.trigger = []byte(stmt)
	p.mu.Unlock()
}

func (p *proxy) close() {
	_ = p.ln.Close()
	p.mu.Lock()
	for _, c := range p.conns {
		_ = c.Close()
	}
	p.mu.Unlock()
	p.wg.Wait()
}

func (p *proxy) accept() {
	defer p.wg.Done()
	for {
		client, err := p.ln.Accept()
		if err != nil {
			return
		}
		server, err := net.Dial("tcp", p.target)
		if err != nil {
			_ = client.Close()
			continue
		}
		p.mu.Lock()
		p.conns = append(p.conns, client, server)
		p.mu.Unlock()
		var cut atomic.Bool // set once the triggering statement has been forwarded
		p.wg.Add(2)
		go func() { // client → server
			defer p.wg.Done()
			buf := make([]byte, 64<<10)
			var pending []byte // client bytes not yet parsed into whole packets
			for {
				n, err := client.Read(buf)
				if n > 0 {
					p.mu.Lock()
					pending = p.record(append(pending, buf[:n]...))
					if p.trigger != nil && bytes.Contains(buf[:n], p.trigger) {
						p.trigger = nil
						cut.Store(true) // before forwarding: the reply cannot precede it
					}
					p.mu.Unlock()
					if _, werr := server.Write(buf[:n]); werr != nil {
						break
					}
				}
				if err != nil {
					break
				}
			}
			_ = server.Close()
		}()
		go func() { // server → client
			defer p.wg.Done()
			buf := make([]byte, 64<<10)
			for {
				n, err := server.Read(buf)
				if n > 0 && cut.Load() {
					// The reply to the trigger: lose it, cut both sides.
					p.cuts.Add(1)
					_ = client.Close()
					_ = server.Close()
					return
				}
				if n > 0 {
					if _, werr := client.Write(buf[:n]); werr != nil {
						break
					}
				}
				if err != nil {
					break
				}
			}
			_ = client.Close()
		}()
	}
}
