package metrics

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// DefaultAddr is where the CLI serves /metrics unless told otherwise: the
// loopback interface only.
const DefaultAddr = "127.0.0.1:9464"

// Server serves a registry's metrics over HTTP at /metrics. Close stops it.
type Server struct {
	srv  *http.Server
	ln   net.Listener
	done chan struct{}
	err  error // from Serve, read after done is closed
}

// Listen binds addr and serves g's metrics at /metrics on a goroutine the
// Server owns. addr is host:port; an empty host means 127.0.0.1 (metrics
// stay on loopback unless a host such as 0.0.0.0 is named) and port 0
// picks a free port (see Addr).
func Listen(addr string, g prometheus.Gatherer) (*Server, error) {
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return nil, fmt.Errorf("metrics address %q: want host:port, e.g. %s: %w", addr, DefaultAddr, err)
	}
	if host == "" {
		host = "127.0.0.1"
	}
	ln, err := net.Listen("tcp", net.JoinHostPort(host, port))
	if err != nil {
		return nil, fmt.Errorf("metrics: %w", err)
	}
	mux := http.NewServeMux()
	mux.Handle("/metrics", promhttp.HandlerFor(g, promhttp.HandlerOpts{}))
	s := &Server{
		srv:  &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second},
		ln:   ln,
		done: make(chan struct{}),
	}
	go func() {
		defer close(s.done)
		if err := s.srv.Serve(ln); !errors.Is(err, http.ErrServerClosed) {
			s.err = err
		}
	}()
	return s, nil
}

// Addr returns the address the server listens on (host:port).
func (s *Server) Addr() string { return s.ln.Addr().String() }

// Close stops the server: it stops accepting, gives scrapes in progress a
// moment to finish, and waits for the serving goroutine.
func (s *Server) Close() error {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	err := s.srv.Shutdown(ctx)
	if err != nil {
		err = errors.Join(err, s.srv.Close())
	}
	<-s.done
	return errors.Join(err, s.err)
}
