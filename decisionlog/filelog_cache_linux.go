//go:build linux && (amd64 || arm64)

package decisionlog

import (
	"os"
	"syscall"
)

// dropCache asks the kernel to drop f's clean cached pages
// (POSIX_FADV_DONTNEED), so that what is read next comes from the disk.
// Best effort: an error only means the cache is trusted as before.
func dropCache(f *os.File) {
	const fadvDontNeed = 4
	_, _, _ = syscall.Syscall6(syscall.SYS_FADVISE64, f.Fd(), 0, 0, fadvDontNeed, 0, 0)
}
