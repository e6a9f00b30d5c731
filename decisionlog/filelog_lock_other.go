//go:build !unix

package decisionlog

import (
	"fmt"
	"os"
	"runtime"
)

// lockDir refuses: without an exclusive lock two coordinators could append to
// the same log and break the fence, so a writable log is not offered here.
func lockDir(dir string) (*os.File, error) {
	return nil, fmt.Errorf("decisionlog: decision log in %s: exclusive locking is not implemented on %s; open it ReadOnly", dir, runtime.GOOS)
}
