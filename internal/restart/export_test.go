package restart

// WaitSweep waits until the sweep of dir's guard, the removal of the kept
// plugins its last complete set did not claim, has ended: the tests see its
// outcome without polling.
func WaitSweep(dir string) {
	g := guardFor(dir)
	if g == nil {
		return
	}
	g.mu.Lock()
	done := g.sweepDone
	g.mu.Unlock()
	if done != nil {
		<-done
	}
}
