//go:build race

package decisionlog

// raceEnabled: the race detector slows the byte-by-byte crash cases tenfold.
const raceEnabled = true
