package plugin_test

// Remove under swarmkit's real calling patterns (issue 24): a leave cancels
// the agent's context before the task managers' Remove calls run, and
// nothing retries them; unrelated plugins share no lock. (The restart
// guard's faults are tested in internal/restart.)

import (
	"context"
	"fmt"
	"testing"

	"github.com/docker/docker/api/types/swarm/runtime"
	"gotest.tools/v3/assert"

	"github.com/seed-e85c93d5/plugin/plugintest"
)

// At a leave, swarmkit calls Remove with the agent's context, which the
// node cancels as soon as the task managers close, and never again: a
// Remove with a done context still removes the plugin, every time.
func TestRemoveWithADoneContextStillRemoves(t *testing.T) {
	done, cancel := context.WithCancel(context.Background())
	cancel()
	left := 0
	for i := range 40 {
		b := plugintest.NewBackend()
		c := started(t, context.Background(), b, fmt.Sprintf("task-%d", i), spec(remote, false))
		if err := c.Remove(done); err != nil {
			t.Logf("Remove: %v", err)
		}
		if _, _, found := state(t, b, name); found {
			left++
		}
	}
	assert.Equal(t, left, 0, "Removes with a done context left the plugin installed")
}

// collider is a plugin name whose lock stripe, in the 64 stripes of
// FNV-1a that the plugin locks used to be, is vol's: unrelated plugins
// shared a lock then.
func collider(t *testing.T) string {
	t.Helper()
	stripe := func(key string) uint32 {
		h := uint32(2166136261)
		for i := 0; i < len(key); i++ {
			h ^= uint32(key[i])
			h *= 16777619
		}
		return h % 64
	}
	for i := range 10000 {
		n := fmt.Sprintf("other%d", i)
		if stripe(n+":latest") == stripe("vol:latest") {
			return n
		}
	}
	t.Fatal("no collider")
	return ""
}

// An unrelated plugin's pull that stalls (a hung registry) holds up neither
// a Remove with a done context nor the removal of a kept plugin.
func TestUnrelatedPluginsShareNoLock(t *testing.T) {
	ctx := context.Background()
	fake := plugintest.NewBackend()
	b := &heldPull{Backend: fake, held: make(chan struct{}), release: make(chan struct{})}
	c := started(t, ctx, fake, "task-1", spec(remote, false))

	other := newController(t, b, "task-2", runtime.PluginSpec{Name: collider(t), Remote: remote2})
	pulled := make(chan error, 1)
	go func() { pulled <- other.Prepare(ctx) }()
	<-b.held
	t.Cleanup(func() {
		close(b.release)
		assert.Check(t, result(t, pulled))
	})

	done, cancel := context.WithCancel(ctx)
	cancel()
	assert.Check(t, c.Remove(done))
	_, _, found := state(t, fake, name)
	assert.Check(t, !found, "the stalled pull of another plugin kept vol installed")
}
