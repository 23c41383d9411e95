package restart_test

import (
	"context"
	"os"
	"path/filepath"
	"testing"
	"time"

	cerrdefs "github.com/containerd/errdefs"
	mobyplugin "github.com/docker/docker/plugin"

	is "gotest.tools/v3/assert/cmp"

	plugin "github.com/seed-e85c93d5/plugin"

	"github.com/docker/docker/api/types/backend"
	"github.com/docker/docker/api/types/swarm/runtime"
	"github.com/moby/swarmkit/v2/agent/exec"
	"github.com/seed-e85c93d5/plugin/internal/keptplugins"
	"github.com/seed-e85c93d5/plugin/internal/restart"
	"github.com/seed-e85c93d5/plugin/plugintest"
	"gotest.tools/v3/assert"
)

// Restart safety under the faults of swarmkit's real calling patterns
// (issue 24): a sweep that must not hold up swarmkit's worker, a node that
// leaves without its agent ever running again, a shutdown in the middle of
// a sweep, an unreadable record.

// blockingRemove holds the Backend's Remove of the plugin until release is
// closed, and closes entered once it holds one.
type blockingRemove struct {
	*plugintest.Backend
	entered chan struct{}
	release chan struct{}
}

func (b *blockingRemove) Remove(n string, c *backend.PluginRmConfig) error {
	close(b.entered)
	<-b.release
	return b.Backend.Remove(n, c)
}

// The first complete set after a restart decides the kept plugins while
// swarmkit's worker waits, under its lock; the removals must not make it
// wait for the Backend (a slow Remove here, a stalled pull holding a lock
// elsewhere).
func TestCompleteSetNeverWaitsForARemoval(t *testing.T) {
	fake := plugintest.NewBackend()
	fake.AddRemote(remote, plugintest.Remote{})
	dir := shutDown(t, fake, "svc-old")
	b := &blockingRemove{Backend: fake, entered: make(chan struct{}), release: make(chan struct{})}
	n := startNode(t, b, dir)

	applied := make(chan struct{})
	go func() {
		defer close(applied)
		n.x.(exec.SecretsProvider).Secrets().Reset()
		n.x.(exec.VolumesProvider).Volumes().Add()
	}()
	<-b.entered // the sweep is removing the kept plugin
	select {
	case <-applied:
	case <-time.After(10 * time.Second):
		t.Fatal("swarmkit's worker waited for the Backend's Remove of a kept plugin")
	}
	close(b.release)
	restart.WaitSweep(dir)
	n.assertPlugin(fake, false, false, "the sweep removed the plugin and its record")
}

// A node that leaves without its agent ever running again (locked, or its
// certificates expired), and a daemon that starts with no swarm state,
// remove what the record lists: LeftSwarm.
func TestLeftSwarmRemovesWhatTheRecordKeeps(t *testing.T) {
	t.Run("a node whose agent never ran", func(t *testing.T) {
		b := plugintest.NewBackend()
		dir := shutDown(t, b, service)
		n := startNode(t, b, dir) // locked: no assignment ever comes
		assert.NilError(t, plugin.LeftSwarm(b, dir))
		n.assertPlugin(b, false, false)
	})
	t.Run("a daemon with no swarm state", func(t *testing.T) {
		b := plugintest.NewBackend()
		dir := shutDown(t, b, service)
		other := t.TempDir() // no RestartSafe for dir in this start
		assert.NilError(t, plugin.LeftSwarm(b, other))
		assert.NilError(t, plugin.LeftSwarm(b, dir))
		_, _, found := state(t, b, name)
		assert.Check(t, !found)
		_, err := os.Stat(filepath.Join(dir, keptplugins.FileName))
		assert.Check(t, os.IsNotExist(err), "the record is deleted")
	})
	t.Run("a person's plugin of the name is left alone", func(t *testing.T) {
		b := plugintest.NewBackend()
		dir := shutDown(t, b, service)
		assert.NilError(t, b.Remove(name, &backend.PluginRmConfig{ForceRemove: true}))
		install(t, b) // a person's, under the same name
		assert.NilError(t, plugin.LeftSwarm(b, dir))
		_, _, found := state(t, b, name)
		assert.Check(t, found)
	})
	t.Run("one in use stays recorded", func(t *testing.T) {
		b := plugintest.NewBackend()
		dir := shutDown(t, b, service)
		pl, err := b.Get(name)
		assert.NilError(t, err)
		pl.Acquire() // a volume on the driver
		err = plugin.LeftSwarm(b, dir)
		assert.Check(t, is.ErrorIs(err, plugin.ErrPluginInUse))
		_, statErr := os.Stat(filepath.Join(dir, keptplugins.FileName))
		assert.Check(t, statErr == nil, "still recorded")
		pl.Release()
		assert.NilError(t, plugin.LeftSwarm(b, dir))
		_, _, found := state(t, b, name)
		assert.Check(t, !found)
	})
	t.Run("bad input", func(t *testing.T) {
		assert.Check(t, cerrdefs.IsInvalidArgument(plugin.LeftSwarm(nil, t.TempDir())))
		assert.Check(t, cerrdefs.IsInvalidArgument(plugin.LeftSwarm(plugintest.NewBackend(), "")))
	})
}

// A shutdown that lands while the sweep is removing one kept plugin never
// drops the record of another, which the resumed task had claimed and
// ShuttingDown records again.
func TestShutdownDuringTheSweepKeepsTheRecord(t *testing.T) {
	ctx := context.Background()
	fake := plugintest.NewBackend()
	fake.AddRemote(remote, plugintest.Remote{})
	fake.AddRemote(remote2, plugintest.Remote{})
	dir := t.TempDir()

	// Before the restart: a kept plugin of each of two services.
	n := startNode(t, fake, dir)
	tOld := task(t, "task-old", "svc-old", runtime.PluginSpec{Name: "gone", Remote: remote2})
	tKeep := task(t, "task-keep", service, spec(remote, false))
	ctrls := n.completeSet(tOld, tKeep)
	for _, c := range ctrls {
		assert.NilError(t, c.Prepare(ctx))
		assert.NilError(t, c.Start(ctx))
	}
	plugin.ShuttingDown(dir)
	n.leave(ctrls...)

	// After it: svc-old's task is gone, so its plugin is being removed
	// (slowly) when the daemon shuts down again.
	b := &blockingRemove{Backend: fake, entered: make(chan struct{}), release: make(chan struct{})}
	n = startNode(t, b, dir)
	n.x.(exec.SecretsProvider).Secrets().Reset() // a complete set, without waiting for its sweep
	resumed := n.controllers(running(task(t, "task-keep", service, spec(remote, false))))[0]
	n.x.(exec.VolumesProvider).Volumes().Add()
	<-b.entered
	shut := make(chan struct{})
	go func() { defer close(shut); plugin.ShuttingDown(dir) }()
	waitForStack(t, "(*Guard).stopSweep")
	close(b.release)
	<-shut
	assert.NilError(t, resumed.Close()) // the daemon exits before the task's Remove

	f := keptplugins.Open(dir)
	kept, err := f.Load()
	assert.NilError(t, err)
	var names []string
	for _, k := range kept {
		names = append(names, k.Name)
	}
	assert.Check(t, is.DeepEqual(names, []string{"vol:latest"}), "the claimed plugin stays recorded; the removed one does not")
}

// A record that cannot be read is never overwritten or deleted: it is set
// aside for a person, and the plugins it lists stay installed.
func TestRestartSetsAnUnreadableRecordAside(t *testing.T) {
	b := plugintest.NewBackend()
	install(t, b, mobyplugin.WithSwarmService("svc-old"))
	dir := t.TempDir()
	damaged := []byte(`{"format": 99, "plugins": [{"id": "x"}]}`)
	assert.NilError(t, os.WriteFile(filepath.Join(dir, keptplugins.FileName), damaged, 0o600))
	assert.NilError(t, os.WriteFile(filepath.Join(dir, keptplugins.FileName+".123"), []byte("{"), 0o600)) // a crashed Save
	n := startNode(t, b, dir)
	n.completeSet()

	aside, err := filepath.Glob(filepath.Join(dir, "swarm-plugins-kept.unreadable-*.json"))
	assert.NilError(t, err)
	assert.Assert(t, is.Len(aside, 1), "set aside")
	got, err := os.ReadFile(aside[0])
	assert.NilError(t, err)
	assert.Check(t, is.Equal(string(got), string(damaged)), "unchanged")
	assert.Check(t, !n.recorded())
	_, err = os.Stat(filepath.Join(dir, keptplugins.FileName+".123"))
	assert.Check(t, os.IsNotExist(err), "the temporary file of a crashed write is gone")
	_, _, found := state(t, b, name)
	assert.Check(t, found, "the plugins it listed stay installed")
}
