package netfault

import (
	"bufio"
	"io"
	"net"
	"strings"
	"testing"
	"time"
)

// echoServer answers every line with "ok <line>" and records the lines it
// received.
func echoServer(t *testing.T) (addr string, got chan string) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	got = make(chan string, 100)
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				sc := bufio.NewScanner(c)
				for sc.Scan() {
					got <- sc.Text()
					if _, err := io.WriteString(c, "ok "+sc.Text()+"\n"); err != nil {
						return
					}
				}
			}()
		}
	}()
	t.Cleanup(func() { ln.Close(); <-done })
	return ln.Addr().String(), got
}

func dial(t *testing.T, p *Proxy) (net.Conn, *bufio.Reader) {
	t.Helper()
	c, err := net.Dial("tcp", p.Addr())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c, bufio.NewReader(c)
}

func newProxy(t *testing.T, upstream string) *Proxy {
	t.Helper()
	p, err := Listen(upstream)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := p.Close(); err != nil {
			t.Error(err)
		}
	})
	return p
}

func TestForwardsBothWays(t *testing.T) {
	addr, _ := echoServer(t)
	p := newProxy(t, addr)
	c, r := dial(t, p)
	for _, msg := range []string{"a", "bb", strings.Repeat("x", 50000)} {
		if _, err := io.WriteString(c, msg+"\n"); err != nil {
			t.Fatal(err)
		}
		line, err := r.ReadString('\n')
		if err != nil || line != "ok "+msg+"\n" {
			t.Fatalf("got %.20q, %v", line, err)
		}
	}
}

func TestCutModes(t *testing.T) {
	for _, tc := range []struct {
		name       string
		mode       CutMode
		serverSees bool
	}{
		{"after send: the server acts, the client hears nothing", CutAfterSend, true},
		{"before send: the server never sees it", CutBeforeSend, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			addr, got := echoServer(t)
			p := newProxy(t, addr)
			cut, err := p.CutOnce("COMMIT", tc.mode, nil)
			if err != nil {
				t.Fatal(err)
			}
			c, r := dial(t, p)
			if _, err := io.WriteString(c, "hello\n"); err != nil {
				t.Fatal(err)
			}
			if line, _ := r.ReadString('\n'); line != "ok hello\n" {
				t.Fatalf("before the cut: %q", line)
			}
			<-got
			_, _ = io.WriteString(c, "XA COMMIT 1\n")
			if line, err := r.ReadString('\n'); err == nil {
				t.Fatalf("the client got an answer through a cut: %q", line)
			}
			<-cut.Fired()
			if !strings.Contains(string(cut.Chunk()), "XA COMMIT 1") {
				t.Fatalf("cut chunk %q", cut.Chunk())
			}
			select {
			case line := <-got:
				if !tc.serverSees || line != "XA COMMIT 1" {
					t.Fatalf("server saw %q (should see it: %v)", line, tc.serverSees)
				}
			case <-time.After(500 * time.Millisecond):
				if tc.serverSees {
					t.Fatal("server never saw the statement")
				}
			}
			// One shot: a new connection works.
			c2, r2 := dial(t, p)
			_, _ = io.WriteString(c2, "XA COMMIT 2\n")
			if line, _ := r2.ReadString('\n'); line != "ok XA COMMIT 2\n" {
				t.Fatalf("after the cut: %q", line)
			}
		})
	}
}

func TestBlackholeHoldsUntilHeal(t *testing.T) {
	addr, _ := echoServer(t)
	p := newProxy(t, addr)
	c, r := dial(t, p)
	p.Blackhole()
	_, _ = io.WriteString(c, "ping\n")
	_ = c.SetReadDeadline(time.Now().Add(300 * time.Millisecond))
	if _, err := r.ReadString('\n'); err == nil {
		t.Fatal("an answer crossed the partition")
	}
	_ = c.SetReadDeadline(time.Time{})
	p.Heal()
	if line, err := r.ReadString('\n'); err != nil || line != "ok ping\n" {
		t.Fatalf("after heal: %q, %v", line, err)
	}
}

func TestLatency(t *testing.T) {
	addr, _ := echoServer(t)
	p := newProxy(t, addr)
	c, r := dial(t, p)
	p.SetLatency(100 * time.Millisecond)
	start := time.Now()
	_, _ = io.WriteString(c, "slow\n")
	if _, err := r.ReadString('\n'); err != nil {
		t.Fatal(err)
	}
	if d := time.Since(start); d < 200*time.Millisecond {
		t.Fatalf("round trip took %s, want at least 200ms (100ms each way)", d)
	}
}

func TestResetAllAndBadInput(t *testing.T) {
	addr, _ := echoServer(t)
	p := newProxy(t, addr)
	c, r := dial(t, p)
	_, _ = io.WriteString(c, "x\n")
	_, _ = r.ReadString('\n')
	p.ResetAll()
	if _, err := r.ReadString('\n'); err == nil {
		t.Fatal("connection survived ResetAll")
	}
	if _, err := p.CutOnce("", CutAfterSend, nil); err == nil {
		t.Fatal("empty pattern accepted")
	}
	if _, err := p.CutOnce("x", CutMode(9), nil); err == nil {
		t.Fatal("bad mode accepted")
	}
}
