package xa_test

import (
	"github.com/prometheus/client_golang/prometheus"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/trace/noop"

	"github.com/xabridge/xabridge/metrics"
	"github.com/xabridge/xabridge/tracing"
	"github.com/xabridge/xabridge/xa"
)

// The observability hooks' cost per transaction, measured by
// BenchmarkCoordinatorRun next to the same run without a hook.
func init() {
	xa.RegisterBenchHook("+metrics", func() func(xa.Step, xa.StepInfo) {
		m, err := metrics.New(prometheus.NewRegistry())
		if err != nil {
			panic(err)
		}
		return m.Hook
	})
	xa.RegisterBenchHook("+tracing-noop", func() func(xa.Step, xa.StepInfo) {
		return tracing.New(noop.NewTracerProvider()).Hook
	})
	// An SDK that records every span and exports none: the cost of the
	// spans themselves, without an exporter's.
	xa.RegisterBenchHook("+tracing-sdk", func() func(xa.Step, xa.StepInfo) {
		return tracing.New(sdktrace.NewTracerProvider()).Hook
	})
}
