//go:build !(linux && (amd64 || arm64))

package decisionlog

import "os"

// dropCache is a no-op where fadvise is not wired.
func dropCache(*os.File) {}
