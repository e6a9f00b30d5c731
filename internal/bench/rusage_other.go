//go:build !unix

package bench

import "time"

// processCPU is unknown where getrusage is missing.
func processCPU() time.Duration { return 0 }
