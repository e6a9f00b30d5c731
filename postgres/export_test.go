package postgres

// SkipGuardForTest turns the statement guard off on h's branch, so that a
// test can send what the guard refuses and show that the second line of
// defence (the session's state, the command tag) still catches it.
func SkipGuardForTest(h *Branch) {
	h.b.mu.Lock()
	h.b.unguarded = true
	h.b.mu.Unlock()
}
