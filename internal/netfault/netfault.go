// Package netfault is a TCP proxy for fault-injection tests: it sits between
// a client (the coordinator) and a database server on loopback and can add
// latency, black-hole traffic (a partition), or cut a connection at the
// moment a given statement passes through it.
//
// Cutting at a statement is what a general-purpose proxy such as toxiproxy
// cannot do, and it is what makes "connection lost mid-PREPARE" exact: the
// statement reaches the server, which carries it out, but its answer never
// reaches the client, whose outcome is therefore unknown.
package netfault

import (
	"bytes"
	"errors"
	"fmt"
	"net"
	"sync"
	"sync/atomic"
	"time"
)

// CutMode says what a cut does with the chunk that matched.
type CutMode int

const (
	// CutAfterSend forwards the matching statement to the server, then
	// closes both connections without relaying the answer: the server
	// acts, the client never learns it did.
	CutAfterSend CutMode = iota + 1
	// CutBeforeSend closes both connections without forwarding the
	// statement: the server never sees it.
	CutBeforeSend
)

// Cut is a one-shot rule armed with Proxy.CutOnce.
type Cut struct {
	pattern []byte
	mode    CutMode
	then    func() // run right after the cut (e.g. Blackhole), may be nil
	fired   atomic.Bool
	done    chan struct{}
	chunk   []byte
}

// Fired is closed once the cut has happened.
func (c *Cut) Fired() <-chan struct{} { return c.done }

// Chunk returns the client bytes that matched (after Fired is closed).
func (c *Cut) Chunk() []byte { return c.chunk }

// Proxy forwards TCP connections from its own loopback address to one
// upstream address, with faults on demand. Safe for concurrent use.
type Proxy struct {
	ln       net.Listener
	upstream string

	mu      sync.Mutex
	links   map[*link]struct{}
	latency time.Duration
	holed   bool
	healed  chan struct{} // closed when a black hole ends; replaced when one starts
	cuts    []*Cut
	closed  bool

	wg sync.WaitGroup // the accept loop and every pump
}

// Listen starts a proxy on 127.0.0.1 (a free port) to upstream.
func Listen(upstream string) (*Proxy, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, fmt.Errorf("netfault: %w", err)
	}
	p := &Proxy{ln: ln, upstream: upstream, links: map[*link]struct{}{}, healed: make(chan struct{})}
	close(p.healed)
	p.wg.Add(1)
	go p.accept()
	return p, nil
}

// Addr is the host:port clients connect to.
func (p *Proxy) Addr() string { return p.ln.Addr().String() }

// SetLatency delays every chunk, in both directions, by d (0: none).
func (p *Proxy) SetLatency(d time.Duration) {
	p.mu.Lock()
	p.latency = d
	p.mu.Unlock()
}

// Blackhole starts a partition: bytes are accepted from both sides but not
// delivered, and new connections are accepted but get no answer, until
// Heal. Like a real partition, nothing tells either side.
func (p *Proxy) Blackhole() {
	p.mu.Lock()
	defer p.mu.Unlock()
	if !p.holed {
		p.holed = true
		p.healed = make(chan struct{})
	}
}

// Heal ends a partition: held bytes are delivered, late, on the connections
// that are still open.
func (p *Proxy) Heal() {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.holed {
		p.holed = false
		close(p.healed)
	}
}

// ResetAll closes every open connection, as a network failure would.
func (p *Proxy) ResetAll() {
	p.mu.Lock()
	links := make([]*link, 0, len(p.links))
	for l := range p.links {
		links = append(links, l)
	}
	p.mu.Unlock()
	for _, l := range links {
		l.close()
	}
}

// Conns returns the number of open connections.
func (p *Proxy) Conns() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return len(p.links)
}

// CutOnce arms a one-shot cut: the first client-to-server chunk containing
// pattern cuts its connection as mode says; then, if set, runs on the
// proxy's goroutine (e.g. p.Blackhole to keep the partition up).
func (p *Proxy) CutOnce(pattern string, mode CutMode, then func()) (*Cut, error) {
	if pattern == "" {
		return nil, errors.New("netfault: empty cut pattern")
	}
	if mode != CutAfterSend && mode != CutBeforeSend {
		return nil, fmt.Errorf("netfault: unknown cut mode %d", mode)
	}
	c := &Cut{pattern: []byte(pattern), mode: mode, then: then, done: make(chan struct{})}
	p.mu.Lock()
	p.cuts = append(p.cuts, c)
	p.mu.Unlock()
	return c, nil
}

// Close stops accepting, closes every connection and waits for the proxy's
// goroutines.
func (p *Proxy) Close() error {
	p.mu.Lock()
	if p.closed {
		p.mu.Unlock()
		return nil
	}
	p.closed = true
	if p.holed {
		p.holed = false
		close(p.healed)
	}
	p.mu.Unlock()
	err := p.ln.Close()
	p.ResetAll()
	p.wg.Wait()
	return err
}

func (p *Proxy) accept() {
	defer p.wg.Done()
	for {
		c, err := p.ln.Accept()
		if err != nil {
			return // closed
		}
		s, err := net.DialTimeout("tcp", p.upstream, 5*time.Second)
		if err != nil {
			_ = c.Close()
			continue
		}
		l := &link{p: p, c: c, s: s, dead: make(chan struct{})}
		p.mu.Lock()
		if p.closed {
			p.mu.Unlock()
			l.close()
			return
		}
		p.links[l] = struct{}{}
		p.wg.Add(2)
		p.mu.Unlock()
		go l.pump(c, s, true)
		go l.pump(s, c, false)
	}
}

// link is one proxied connection: client c, server s.
type link struct {
	p    *Proxy
	c, s net.Conn
	once sync.Once
	dead chan struct{} // closed by close
	// muted is set before a cut forwards its statement: from then on
	// nothing more reaches the client, so the answer cannot slip through
	// before the connection is closed.
	muted atomic.Bool
}

// close closes both ends. When one side gives up during a partition the
// other end is closed too, as TCP keepalive would do eventually.
func (l *link) close() {
	l.once.Do(func() {
		close(l.dead)
		_ = l.c.Close()
		_ = l.s.Close()
		l.p.mu.Lock()
		delete(l.p.links, l)
		l.p.mu.Unlock()
	})
}

// hold delays a chunk by the latency and while the proxy is black-holed.
// It returns false if the link died meanwhile.
func (l *link) hold() bool {
	l.p.mu.Lock()
	lat, healed := l.p.latency, l.p.healed
	l.p.mu.Unlock()
	if lat > 0 {
		t := time.NewTimer(lat)
		select {
		case <-t.C:
		case <-l.dead:
			t.Stop()
			return false
		}
	}
	select {
	case <-healed:
		return true
	case <-l.dead:
		return false
	}
}

// pump copies src to dst chunk by chunk, applying faults; up is the
// client-to-server direction, where cuts are matched. It ends when either
// side closes, and then closes the link.
func (l *link) pump(src, dst net.Conn, up bool) {
	defer l.p.wg.Done()
	defer l.close()
	buf := make([]byte, 64<<10)
	var tail []byte // the end of the previous chunk, for patterns split across reads
	for {
		n, err := src.Read(buf)
		if n > 0 {
			chunk := buf[:n]
			if up {
				if c := l.p.match(append(tail, chunk...)); c != nil {
					c.chunk = append([]byte(nil), chunk...)
					l.muted.Store(true)
					if c.mode == CutAfterSend {
						_, _ = dst.Write(chunk)
					}
					l.close()
					if c.then != nil {
						c.then()
					}
					close(c.done)
					return
				}
				tail = keepTail(tail, chunk, l.p.maxPattern())
			}
			if !l.hold() {
				return
			}
			if !up && l.muted.Load() {
				return
			}
			if _, werr := dst.Write(chunk); werr != nil {
				return
			}
		}
		if err != nil {
			return // EOF or a closed connection: the link ends
		}
	}
}

func keepTail(tail, chunk []byte, n int) []byte {
	if n <= 1 {
		return tail[:0]
	}
	joined := append(tail, chunk...)
	if len(joined) > n-1 {
		joined = joined[len(joined)-(n-1):]
	}
	return append([]byte(nil), joined...)
}

func (p *Proxy) maxPattern() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	n := 0
	for _, c := range p.cuts {
		if !c.fired.Load() && len(c.pattern) > n {
			n = len(c.pattern)
		}
	}
	return n
}

// match returns the armed cut whose pattern occurs in data, claiming it.
func (p *Proxy) match(data []byte) *Cut {
	p.mu.Lock()
	defer p.mu.Unlock()
	for i, c := range p.cuts {
		if bytes.Contains(data, c.pattern) && c.fired.CompareAndSwap(false, true) {
			p.cuts = append(p.cuts[:i:i], p.cuts[i+1:]...)
			return c
		}
	}
	return nil
}
