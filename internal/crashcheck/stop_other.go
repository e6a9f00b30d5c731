//go:build !unix

package crashcheck

// StopSelf is KillSelf where processes cannot be stopped by a signal.
func StopSelf() { KillSelf() }
