//go:build unix

package decisionlog

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
)

// lockDir takes the exclusive, non-blocking flock on dir/lock that makes one
// writable FileLog per directory. The lock belongs to the open file
// description, so it is released when the returned file is closed (or the
// process dies), and a second open in the same process conflicts too.
func lockDir(dir string) (*os.File, error) {
	path := filepath.Join(dir, lockFileName)
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, fmt.Errorf("decisionlog: decision log lock: %w", err)
	}
	for {
		err = syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB)
		if !errors.Is(err, syscall.EINTR) {
			break
		}
	}
	if err != nil {
		f.Close()
		if errors.Is(err, syscall.EWOULDBLOCK) {
			return nil, fmt.Errorf("decisionlog: decision log in %s: %w%s", dir, ErrLogLocked, lockHolder(path))
		}
		return nil, fmt.Errorf("decisionlog: lock decision log %s: %w", path, err)
	}
	// The pid is only a hint for the error message of the next opener; the
	// flock is what excludes, so failures here are ignored.
	if f.Truncate(0) == nil {
		_, _ = f.WriteAt([]byte(strconv.Itoa(os.Getpid())+"\n"), 0)
	}
	return f, nil
}

// lockHolder describes who holds the lock, from the pid its holder wrote.
func lockHolder(path string) string {
	b, err := os.ReadFile(path)
	if err != nil {
		return ""
	}
	pid := strings.TrimSpace(string(b))
	if _, err := strconv.Atoi(pid); err != nil {
		return ""
	}
	return " (held by pid " + pid + ")"
}
