// Package crashcheck crashes a coordinator and checks what recovery leaves:
// named crash points armed from Config.Hook that kill the process, the
// bank-transfer workload with a choice of enlist order and a journal of
// outcomes, the child process that runs it, recovery after a kill, and the
// invariant check run after every kill. It is `xabridge selfcheck`'s
// machinery, shared with the crash tests in integration/ and their crash
// app; the fault injection only the tests need is in internal/chaos.
package crashcheck

import (
	"fmt"
	"os"
	"strconv"
	"strings"
	"sync/atomic"

	"github.com/xabridge/xabridge/xa"
)

// Environment variables that arm a crash point in a child process.
const (
	// EnvCrashPoint names the crash point (see ParseCrashPoint).
	EnvCrashPoint = "XABRIDGE_CRASH_POINT"
	// EnvCrashAction, "stop", makes the process stop itself (SIGSTOP)
	// at the crash point instead of dying: it goes on where it stopped
	// when it gets SIGCONT, as a paused process (a frozen VM, a long GC
	// pause, a debugger) would.
	EnvCrashAction = "XABRIDGE_CRASH_ACTION"
	// EnvCrashNth says at which occurrence of the step the process dies
	// (default 1: the first).
	EnvCrashNth = "XABRIDGE_CRASH_NTH"
)

// CrashPoint is a protocol step at which a process kills itself.
type CrashPoint struct {
	Name   string  // as written, e.g. "after-prepare:1"
	Step   xa.Step // the coordinator step that fires it
	Branch int     // the branch number the step must report; -1: any
}

// crashSteps maps crash point names to coordinator steps; per-branch ones
// take ":K".
var crashSteps = map[string]struct {
	step      xa.Step
	perBranch bool
}{
	"after-begin":        {xa.StepBegin, false},
	"after-enlist":       {xa.StepEnlisted, true},
	"after-work":         {xa.StepWorkDone, false},
	"after-prepare":      {xa.StepPrepared, true},
	"after-all-prepared": {xa.StepAllPrepared, false},
	"after-decision":     {xa.StepDecided, false},
	"after-commit":       {xa.StepCommitted, true},
	"before-end":         {xa.StepAllCommitted, false},
	"after-end":          {xa.StepEnded, false},
}

// MatrixPoints are the crash points of the coordinator crash matrix, in
// protocol order: after enlisting branch k, after the work, after preparing
// branch k, after the decision is durable (before phase 2), after
// committing branch k, and once every branch committed but before the end
// record.
func MatrixPoints() []string {
	return []string{
		"after-enlist:0", "after-enlist:1", "after-work",
		"after-prepare:0", "after-prepare:1", "after-decision",
		"after-commit:0", "after-commit:1", "before-end",
	}
}

// ParseCrashPoint parses a crash point name: one of after-begin,
// after-enlist:K, after-work, after-prepare:K, after-all-prepared,
// after-decision, after-commit:K, before-end, after-end (K a branch number).
func ParseCrashPoint(s string) (CrashPoint, error) {
	name, arg, hasArg := strings.Cut(s, ":")
	st, ok := crashSteps[name]
	if !ok {
		return CrashPoint{}, fmt.Errorf("crashcheck: unknown crash point %q (want one of %s)", s, strings.Join(names(), ", "))
	}
	cp := CrashPoint{Name: s, Step: st.step, Branch: -1}
	switch {
	case st.perBranch && !hasArg:
		return CrashPoint{}, fmt.Errorf("crashcheck: crash point %q needs a branch number, e.g. %s:0", s, name)
	case !st.perBranch && hasArg:
		return CrashPoint{}, fmt.Errorf("crashcheck: crash point %q takes no branch number", s)
	case hasArg:
		k, err := strconv.Atoi(arg)
		if err != nil || k < 0 || k > 255 {
			return CrashPoint{}, fmt.Errorf("crashcheck: crash point %q: branch must be a number 0..255", s)
		}
		cp.Branch = k
	}
	return cp, nil
}

func names() []string {
	return []string{"after-begin", "after-enlist:K", "after-work", "after-prepare:K", "after-all-prepared",
		"after-decision", "after-commit:K", "before-end", "after-end"}
}

// Matches reports whether the step event fires the crash point.
func (cp CrashPoint) Matches(s xa.Step, info xa.StepInfo) bool {
	return cp.Step != "" && s == cp.Step && (cp.Branch < 0 || info.Branch == cp.Branch)
}

// Hook returns a Config.Hook that calls fire at the nth event matching cp
// (counting from 1), once. Events arrive from several goroutines.
func (cp CrashPoint) Hook(nth int, fire func(xa.Step, xa.StepInfo)) func(xa.Step, xa.StepInfo) {
	if nth < 1 {
		nth = 1
	}
	var seen atomic.Int64
	return func(s xa.Step, info xa.StepInfo) {
		if cp.Matches(s, info) && seen.Add(1) == int64(nth) {
			fire(s, info)
		}
	}
}

// CrashFromEnv reads the crash point armed by EnvCrashPoint and
// EnvCrashNth; ok is false when none is armed.
func CrashFromEnv() (cp CrashPoint, nth int, ok bool, err error) {
	s := os.Getenv(EnvCrashPoint)
	if s == "" || s == "none" {
		return CrashPoint{}, 0, false, nil
	}
	cp, err = ParseCrashPoint(s)
	if err != nil {
		return CrashPoint{}, 0, false, err
	}
	nth = 1
	if v := os.Getenv(EnvCrashNth); v != "" {
		nth, err = strconv.Atoi(v)
		if err != nil || nth < 1 {
			return CrashPoint{}, 0, false, fmt.Errorf("crashcheck: %s=%q: want a positive number", EnvCrashNth, v)
		}
	}
	return cp, nth, true, nil
}

// CrashStopFromEnv reports whether EnvCrashAction asks for a stop instead
// of a kill.
func CrashStopFromEnv() (bool, error) {
	switch v := os.Getenv(EnvCrashAction); v {
	case "", "kill":
		return false, nil
	case "stop":
		return true, nil
	default:
		return false, fmt.Errorf("crashcheck: %s=%q: want kill or stop", EnvCrashAction, v)
	}
}

// KillSelf ends the process with SIGKILL, a real crash: no deferred
// function, no flush, no goodbye to the databases. It does not return.
func KillSelf() {
	if p, err := os.FindProcess(os.Getpid()); err == nil {
		_ = p.Kill() // SIGKILL on Unix
	}
	// The signal is delivered asynchronously; make sure this goroutine
	// does nothing more meanwhile.
	select {}
}

// Decided reports whether the transaction the crash point kills has a
// durable commit decision by then, so that recovery must commit it
// everywhere; otherwise it must end aborted everywhere.
func (cp CrashPoint) Decided() bool {
	switch cp.Step {
	case xa.StepDecided, xa.StepCommitted, xa.StepAllCommitted, xa.StepEnded:
		return true
	}
	return false
}
