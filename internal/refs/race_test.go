//go:build race

package refs

// raceEnabled: under the race detector sync.Pool drops some of what it is
// given, so a pooled lock may be allocated again.
const raceEnabled = true
