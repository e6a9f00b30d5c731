//go:build unix

package crashcheck

import (
	"os"
	"os/signal"
	"syscall"
)

// StopSelf stops the whole process with SIGSTOP and returns once it got
// SIGCONT. The kernel stops the threads when they next run, which on a
// loaded machine can be milliseconds after kill returns, so the caller
// waits for SIGCONT itself rather than trusting that it is already
// stopped.
func StopSelf() {
	cont := make(chan os.Signal, 1)
	signal.Notify(cont, syscall.SIGCONT)
	defer signal.Stop(cont)
	if err := syscall.Kill(syscall.Getpid(), syscall.SIGSTOP); err != nil {
		return
	}
	<-cont
}
