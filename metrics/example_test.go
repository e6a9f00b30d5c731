package metrics_test

import (
	"context"
	"log"
	"net/http"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/xabridge/xabridge/decisionlog"
	"github.com/xabridge/xabridge/drivers"
	"github.com/xabridge/xabridge/metrics"
	"github.com/xabridge/xabridge/recovery"
	"github.com/xabridge/xabridge/xa"
)

// A coordinator, its decision log and a recovery loop next to it, all
// feeding one registry that an HTTP handler serves.
func ExampleNew() {
	ctx, cancel := context.WithCancel(context.Background())
	var resources []drivers.Resource // postgres.New(...), mysql.New(...)

	reg := prometheus.NewRegistry()
	m, err := metrics.New(reg)
	if err != nil {
		log.Fatal(err)
	}
	coord, err := xa.New(ctx, xa.Config{NodeID: "payments-1", LogDir: "/var/lib/xabridge", Resources: resources, Hook: m.Hook})
	if err != nil {
		log.Fatal(err)
	}
	defer coord.Close()
	reg.MustRegister(metrics.NewFileLogCollector(coord.Log().(*decisionlog.FileLog)))

	rec, err := recovery.New(recovery.Config{NodeID: "payments-1", Log: coord.Log(), Resources: resources,
		Active: coord.Active, OnReport: m.ObserveReport})
	if err != nil {
		log.Fatal(err)
	}
	var wg sync.WaitGroup
	wg.Go(func() { _ = rec.Loop(ctx, 30*time.Second, nil) })
	defer func() { cancel(); wg.Wait() }() // before coord.Close: the loop uses its log

	http.Handle("/metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{}))
}
