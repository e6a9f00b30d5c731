package xa

// RegisterBenchHook adds a hook for BenchmarkCoordinatorRun to measure;
// external test files of package xa_test call it from init.
func RegisterBenchHook(name string, mk func() func(Step, StepInfo)) {
	benchHooks = append(benchHooks, benchHook{name, mk})
}
