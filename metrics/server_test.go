package metrics_test

import (
	"io"
	"net"
	"net/http"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/xabridge/xabridge/metrics"
)

func TestServerServesMetricsOnLoopback(t *testing.T) {
	reg := prometheus.NewRegistry()
	if _, err := metrics.New(reg); err != nil {
		t.Fatal(err)
	}
	// No host: loopback, never every interface.
	srv, err := metrics.Listen(":0", reg)
	if err != nil {
		t.Fatal(err)
	}
	host, _, _ := net.SplitHostPort(srv.Addr())
	if host != "127.0.0.1" {
		t.Errorf("listening on %s, want 127.0.0.1", srv.Addr())
	}
	get := func(path string) (int, string) {
		t.Helper()
		resp, err := http.Get("http://" + srv.Addr() + path)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		body, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(body)
	}
	code, body := get("/metrics")
	if code != http.StatusOK || !strings.Contains(body, "xabridge_transactions_begun_total 0") {
		t.Errorf("GET /metrics: %d\n%s", code, body)
	}
	if code, _ := get("/"); code != http.StatusNotFound {
		t.Errorf("GET /: %d, want 404", code)
	}
	if err := srv.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	if c, err := net.Dial("tcp", srv.Addr()); err == nil {
		c.Close()
		t.Error("still accepting connections after Close")
	}
}

func TestListenBadAddress(t *testing.T) {
	for _, addr := range []string{"9464", "localhost", "127.0.0.1:notaport", "256.0.0.1:0"} {
		if srv, err := metrics.Listen(addr, prometheus.NewRegistry()); err == nil {
			srv.Close()
			t.Errorf("Listen(%q) succeeded", addr)
		} else if !strings.Contains(err.Error(), "metrics") {
			t.Errorf("Listen(%q): %v does not say it is about metrics", addr, err)
		}
	}
}
