package main

import (
	"fmt"
	"io"
	"log/slog"
	"net"
	"strings"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"

	"github.com/xabridge/xabridge/metrics"
)

// observer is the Prometheus side of a long-running command: a registry
// with the process's own collectors, xabridge's metrics labelled with the
// node id, and the HTTP server of /metrics once started.
type observer struct {
	reg     *prometheus.Registry
	labeled prometheus.Registerer // adds node="<id>" to xabridge's metrics
	m       *metrics.Metrics
	srv     *metrics.Server
}

func newObserver(node string) (*observer, error) {
	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	labeled := prometheus.WrapRegistererWith(prometheus.Labels{"node": node}, reg)
	m, err := metrics.New(labeled)
	if err != nil {
		return nil, err
	}
	return &observer{reg: reg, labeled: labeled, m: m}, nil
}

// serve starts /metrics on addr and says where on w.
func (o *observer) serve(addr string, w io.Writer) error {
	srv, err := metrics.Listen(addr, o.reg)
	if err != nil {
		return fmt.Errorf("%w (choose another address with --metrics-addr, or --metrics-addr '' for none)", err)
	}
	o.srv = srv
	fmt.Fprintf(w, "xabridge: serving metrics at http://%s/metrics\n", srv.Addr())
	return nil
}

func (o *observer) close() {
	if o != nil && o.srv != nil {
		_ = o.srv.Close()
	}
}

// checkMetricsAddr validates a --metrics-addr before anything is opened.
func checkMetricsAddr(addr string) error {
	if addr == "" {
		return nil
	}
	if _, port, err := net.SplitHostPort(addr); err != nil || port == "" {
		return usagef("--metrics-addr %q: want host:port, e.g. %s (an empty host means 127.0.0.1)", addr, metrics.DefaultAddr)
	}
	return nil
}

// parseLogLevel turns --log-level into a slog level.
func parseLogLevel(s string) (slog.Level, error) {
	var l slog.Level
	if err := l.UnmarshalText([]byte(s)); err != nil {
		return 0, usagef("--log-level %q: want debug, info, warn or error", s)
	}
	return l, nil
}

// newLogger writes structured logs (logfmt-like text) to w at level.
func newLogger(w io.Writer, level slog.Level) *slog.Logger {
	return slog.New(slog.NewTextHandler(w, &slog.HandlerOptions{Level: level}))
}

// logLevelHelp documents --log-level.
var logLevelHelp = "log level of the structured events on stderr: " + strings.Join([]string{"debug", "info", "warn", "error"}, ", ")
