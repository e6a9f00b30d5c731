//go:build unix

package crashcheck

import "syscall"

// StopSelf stops the whole process with SIGSTOP; it returns once the
// process got SIGCONT.
func StopSelf() {
	_ = syscall.Kill(syscall.Getpid(), syscall.SIGSTOP)
}
