package xa

import (
	"context"
	"fmt"
	"runtime"
	"testing"

	"github.com/xabridge/xabridge/decisionlog"
	"github.com/xabridge/xabridge/drivers"
	"github.com/xabridge/xabridge/internal/fakeres"
)

// benchHook is a Config.Hook BenchmarkCoordinatorRun also runs with.
type benchHook struct {
	name string // appended to the decision store's name; "" for no hook
	make func() func(Step, StepInfo)
}

// benchHooks lists the hooks to measure. Packages built on xa (metrics,
// tracing) add theirs from an external test file, as this package cannot
// import them (see RegisterBenchHook).
var benchHooks = []benchHook{
	{"", func() func(Step, StepInfo) { return nil }},
	{"+hook", func() func(Step, StepInfo) { return func(Step, StepInfo) {} }},
}

// BenchmarkCoordinatorRun measures the coordinator's own cost per global
// transaction (ns/op, allocs/op) with in-memory resources, so that only the
// protocol machinery is timed: two branches, prepare, decision, phase 2.
// The decision goes to an in-memory log, to the file log (real fsyncs, on
// the disk under b.TempDir), or to an in-memory decision keeper. Each runs
// without a hook, with an empty hook (+hook), and with every hook in
// benchHooks (+metrics, +tracing-noop, +tracing-sdk).
func BenchmarkCoordinatorRun(b *testing.B) {
	for _, bc := range []struct {
		name  string
		setup func(b *testing.B, cfg *Config) drivers.Resource // returns the first resource to enlist
	}{
		{"memlog", func(b *testing.B, cfg *Config) drivers.Resource {
			cfg.Log = decisionlog.NewMemLog(nil)
			return fakeres.New("a")
		}},
		{"filelog", func(b *testing.B, cfg *Config) drivers.Resource {
			l, err := decisionlog.OpenFileLog(b.TempDir(), decisionlog.FileLogOptions{})
			if err != nil {
				b.Fatal(err)
			}
			b.Cleanup(func() { l.Close() })
			cfg.Log = l
			return fakeres.New("a")
		}},
		{"keeper", func(b *testing.B, cfg *Config) drivers.Resource {
			cfg.Log = decisionlog.NewMemLog(nil)
			cfg.DecisionResource = "a"
			return fakeres.NewKeeper("a")
		}},
	} {
		for _, hk := range benchHooks {
			for _, par := range []int{1, 32} {
				b.Run(fmt.Sprintf("%s%s/clients-%d", bc.name, hk.name, par), func(b *testing.B) {
					benchRun(b, bc.setup, hk.make(), par)
				})
			}
		}
	}
}

func benchRun(b *testing.B, setup func(b *testing.B, cfg *Config) drivers.Resource, hook func(Step, StepInfo), par int) {
	cfg := Config{NodeID: "bench", Hook: hook}
	a := setup(b, &cfg)
	other := fakeres.New("b")
	cfg.Resources = []drivers.Resource{a, other}
	c, err := New(context.Background(), cfg)
	if err != nil {
		b.Fatal(err)
	}
	defer c.Close()
	fn := func(ctx context.Context, tx *Tx) error {
		if _, err := tx.Enlist(ctx, a); err != nil {
			return err
		}
		_, err := tx.Enlist(ctx, other)
		return err
	}
	ctx := context.Background()
	b.ReportAllocs()
	b.SetParallelism(max(1, par/runtime.GOMAXPROCS(0)))
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			if err := c.Run(ctx, fn); err != nil {
				b.Error(err)
				return
			}
		}
	})
}
