package plugin_test

import (
	"context"
	"os"
	"path/filepath"
	"testing"

	cerrdefs "github.com/containerd/errdefs"
	"gotest.tools/v3/assert"
	is "gotest.tools/v3/assert/cmp"

	plugin "github.com/seed-e85c93d5/plugin"
	"github.com/seed-e85c93d5/plugin/executor"
	"github.com/seed-e85c93d5/plugin/plugintest"
)

// The daemon's three restart-safety entries, from the root API (the
// mechanism's own tests are in internal/restart): a plugin of a
// RestartSafe executor's task outlives the task's Remove after
// ShuttingDown, recorded in dir, and LeftSwarm removes it and the record.
func TestRestartSafeShuttingDownLeftSwarm(t *testing.T) {
	ctx := context.Background()
	b := plugintest.NewBackend()
	dir := t.TempDir()
	e, err := plugin.RestartSafe(executor.New(b), b, dir)
	assert.NilError(t, err)
	ctl, err := e.Controller(task(t, "task-1", service, spec(remote, false)))
	assert.NilError(t, err)
	assert.NilError(t, ctl.Prepare(ctx))
	assert.NilError(t, ctl.Start(ctx))

	plugin.ShuttingDown(dir)
	plugin.ShuttingDown(dir) // more than once is fine
	plugin.ShuttingDown(t.TempDir())
	assert.NilError(t, ctl.Remove(ctx))
	assert.NilError(t, ctl.Close())
	p, refs, found := state(t, b, name)
	assert.Assert(t, found, "the plugin was removed at the shutdown")
	assert.Check(t, p.Enabled)
	assert.Check(t, is.Equal(refs, 0))
	_, err = os.Stat(filepath.Join(dir, "swarm-plugins-kept.json"))
	assert.NilError(t, err, "the kept plugin is recorded")

	assert.NilError(t, plugin.LeftSwarm(b, dir))
	_, _, found = state(t, b, name)
	assert.Check(t, !found, "LeftSwarm left the kept plugin installed")
	_, err = os.Stat(filepath.Join(dir, "swarm-plugins-kept.json"))
	assert.Check(t, os.IsNotExist(err), "the record outlived LeftSwarm: %v", err)
	assert.NilError(t, plugin.LeftSwarm(b, dir), "nothing recorded: nothing to do")
}

// Bad input to the entries is invalid argument, never a panic.
func TestRestartEntriesRefuseBadInput(t *testing.T) {
	b := plugintest.NewBackend()
	var nilBackend *plugintest.Backend
	for name, err := range map[string]error{
		"nil executor":           func() error { _, err := plugin.RestartSafe(nil, b, t.TempDir()); return err }(),
		"nil backend":            func() error { _, err := plugin.RestartSafe(executor.New(b), nil, t.TempDir()); return err }(),
		"typed nil":              func() error { _, err := plugin.RestartSafe(executor.New(b), nilBackend, t.TempDir()); return err }(),
		"no dir":                 func() error { _, err := plugin.RestartSafe(executor.New(b), b, ""); return err }(),
		"LeftSwarm, nil backend": plugin.LeftSwarm(nil, t.TempDir()),
		"LeftSwarm, no dir":      plugin.LeftSwarm(b, ""),
	} {
		assert.Check(t, cerrdefs.IsInvalidArgument(err), "%s: %v", name, err)
	}
}

// WithRegistryHosts is taken; with a ManifestResolver Backend (the fake)
// the hosts are not used.
func TestWithRegistryHostsIsAnOption(t *testing.T) {
	b := plugintest.NewBackend()
	started(t, context.Background(), b, "task-1", spec(remote, false), plugin.WithRegistryHosts(nil))
	started(t, context.Background(), b, "task-2", spec(remote, false), plugin.WithRegistryHosts(nil))
	assert.Check(t, is.Equal(countCalls(b, "Upgrade"), 0))
}
