package plugin_test

// Updates without needless outages (issue 25): an installed plugin of the
// service is disabled only when something about it changes.

import (
	"context"
	"errors"
	"fmt"
	"syscall"
	"testing"

	"github.com/docker/docker/api/types/swarm/runtime"
	"github.com/moby/swarmkit/v2/agent/exec"
	"github.com/opencontainers/go-digest"
	"gotest.tools/v3/assert"
	is "gotest.tools/v3/assert/cmp"

	plugin "github.com/seed-e85c93d5/plugin"
	"github.com/seed-e85c93d5/plugin/plugintest"
)

// outage counts what took the plugin out of service after the setup.
func outage(b *plugintest.Backend) (disables, enables, upgrades int) {
	return countCalls(b, "Disable"), countCalls(b, "Enable"), countCalls(b, "Upgrade")
}

// A new task of an unchanged spec (a forced update, a worker marked down
// during its restart) on a tag remote whose manifest did not move: nothing
// is disabled, upgraded or set.
func TestUnchangedSpecDisablesNothing(t *testing.T) {
	ctx := context.Background()
	b := plugintest.NewBackend()
	b.AddRemote(remote, plugintest.Remote{Env: []string{"VERSION=1"}})
	s := spec(remote, false)
	s.Env = []string{"VERSION=1"}
	started(t, ctx, b, "task-1", s)
	b.ResetCalls()
	for i := 2; i <= 4; i++ {
		started(t, ctx, b, fmt.Sprintf("task-%d", i), s)
	}
	d, e, u := outage(b)
	assert.Check(t, is.Equal(d+e+u, 0), "disables %d, enables %d, upgrades %d", d, e, u)
	assert.Check(t, is.Equal(countCalls(b, "ResolveManifest"), 3), "one manifest request per task")
}

// A tag whose manifest moved is upgraded, as before.
func TestMovedTagUpgrades(t *testing.T) {
	ctx := context.Background()
	b := plugintest.NewBackend()
	b.AddRemote(remote, plugintest.Remote{})
	started(t, ctx, b, "task-1", spec(remote, false))
	b.AddRemote(remote, plugintest.Remote{Digest: digest.FromString("v1.0, pushed again")})
	b.ResetCalls()
	started(t, ctx, b, "task-2", spec(remote, false))
	d, e, u := outage(b)
	assert.Check(t, is.Equal(d, 1))
	assert.Check(t, is.Equal(u, 1))
	assert.Check(t, is.Equal(e, 1))
}

// While the registry cannot be reached, the installed plugin of the
// spec's remote stays enabled and the task runs on it: no disable on any
// retry, so nothing flaps.
func TestRegistryDownKeepsThePluginInService(t *testing.T) {
	ctx := context.Background()
	b := plugintest.NewBackend()
	b.AddRemote(remote, plugintest.Remote{})
	started(t, ctx, b, "task-1", spec(remote, false))
	b.ResetCalls()
	for range 5 {
		b.FailNext("ResolveManifest", &netOpError{syscall.ECONNREFUSED})
	}
	for i := range 5 {
		c := newController(t, b, fmt.Sprintf("retry-%d", i), spec(remote, false))
		assert.NilError(t, c.Prepare(ctx))
		assert.NilError(t, c.Start(ctx))
	}
	d, e, u := outage(b)
	assert.Check(t, is.Equal(d+e+u, 0), "5 tasks while the registry is down: disables %d, enables %d, upgrades %d", d, e, u)
	p, _, _ := state(t, b, name)
	assert.Check(t, p.Enabled)
}

// A new remote while the registry cannot be reached: a temporary error,
// and the installed version stays in service meanwhile.
func TestRegistryDownWithANewRemoteWaits(t *testing.T) {
	ctx := context.Background()
	b := plugintest.NewBackend()
	started(t, ctx, b, "task-1", spec(remote, false))
	b.ResetCalls()
	b.FailNext("ResolveManifest", &netOpError{syscall.ECONNREFUSED})
	err := newController(t, b, "task-2", spec(remote2, false)).Prepare(ctx)
	assert.Check(t, exec.IsTemporary(err), "%v", err)
	assert.Check(t, is.ErrorContains(err, "the installed version stays in service"))
	d, e, u := outage(b)
	assert.Check(t, is.Equal(d+e+u, 0))
}

// A repeated key: the last value wins, as at install, so later tasks of
// the same spec neither disable the plugin nor flip its env.
func TestRepeatedEnvKeyNeverFlips(t *testing.T) {
	ctx := context.Background()
	b := plugintest.NewBackend()
	b.AddRemote(remote, plugintest.Remote{Env: []string{"DEBUG=0"}})
	s := spec(remote, false)
	s.Env = []string{"DEBUG=1", "DEBUG=2"}
	started(t, ctx, b, "task-1", s)
	b.ResetCalls()
	for i := 2; i <= 4; i++ {
		started(t, ctx, b, fmt.Sprintf("task-%d", i), s)
	}
	p, _, _ := state(t, b, name)
	assert.Check(t, is.Contains(p.Settings.Env, "DEBUG=2"))
	assert.Check(t, is.Equal(countCalls(b, "Set"), 0))
	d, e, u := outage(b)
	assert.Check(t, is.Equal(d+e+u, 0), "disables %d, enables %d, upgrades %d", d, e, u)
}

// An env-only change on an unmoved tag: disable, set, enable, no upgrade.
func TestEnvOnlyChangeDoesNotUpgrade(t *testing.T) {
	ctx := context.Background()
	b := plugintest.NewBackend()
	b.AddRemote(remote, plugintest.Remote{Env: []string{"VERSION=1"}})
	started(t, ctx, b, "task-1", spec(remote, false))
	b.ResetCalls()
	s := spec(remote, false)
	s.Env = []string{"VERSION=7"}
	started(t, ctx, b, "task-2", s)
	assert.Check(t, is.DeepEqual(methods(b), []string{"Get", "ResolveManifest", "Disable", "Set", "Enable", "Get", "ProbePlugin"}))
	p, _, _ := state(t, b, name)
	assert.Check(t, is.Contains(p.Settings.Env, "VERSION=7"))
}

// A Backend that cannot resolve manifests (a hand-written fake, as
// upstream's tests have) keeps upstream's rule: a tag is upgraded by every
// new task.
func TestWithoutAResolverATagIsUpgradedAsUpstream(t *testing.T) {
	ctx := context.Background()
	fake := plugintest.NewBackend()
	b := noPrivileger{noSetter{fake}}
	started(t, ctx, b, "task-1", runtime.PluginSpec{Name: name, Remote: remote})
	fake.ResetCalls()
	started(t, ctx, b, "task-2", runtime.PluginSpec{Name: name, Remote: remote})
	assert.Check(t, is.Equal(countCalls(fake, "Upgrade"), 1))
	var _ plugin.ManifestResolver = fake
}

// A change to an enabled plugin whose spec wants it enabled is enabled
// again inside Prepare, so that the outage is the Backend's own work and
// not also swarmkit's round trip between Prepare and Start; Start then
// only checks that it answers. A plugin the spec wants disabled, or one
// that was disabled, is left for Start, as before.
func TestPrepareEnablesAChangedPluginAtOnce(t *testing.T) {
	ctx := context.Background()
	for _, tc := range []struct {
		name        string
		before, now runtime.PluginSpec
		enabled     bool // after Prepare
	}{
		{"env only", spec(remote, false), withEnv(spec(remote, false), "VERSION=7"), true},
		{"new remote", spec(remote, false), spec(remote2, false), true},
		{"new remote, spec says Disabled", spec(remote, false), spec(remote2, true), false},
		{"disabled before, env only", spec(remote, true), withEnv(spec(remote, false), "VERSION=7"), false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			b := plugintest.NewBackend()
			b.AddRemote(remote, plugintest.Remote{Env: []string{"VERSION=1"}})
			b.AddRemote(remote2, plugintest.Remote{Env: []string{"VERSION=1"}})
			started(t, ctx, b, "task-1", tc.before)
			b.ResetCalls()
			c := newController(t, b, "task-2", tc.now)
			assert.NilError(t, c.Prepare(ctx))
			p, _, _ := state(t, b, name)
			assert.Check(t, is.Equal(p.Enabled, tc.enabled))
			enablesInPrepare := countCalls(b, "Enable")
			assert.NilError(t, c.Start(ctx))
			p, _, _ = state(t, b, name)
			assert.Check(t, is.Equal(p.Enabled, !tc.now.Disabled))
			if tc.enabled {
				assert.Check(t, is.Equal(enablesInPrepare, 1))
				assert.Check(t, is.Equal(countCalls(b, "Enable"), 1), "Start enables nothing more")
			}
		})
	}
}

// The old task's Wait ends at the change's disable, as before the early
// enable: the enable that follows at once does not hide it.
func TestOldTaskWaitSeesTheChangesDisable(t *testing.T) {
	ctx := context.Background()
	b := plugintest.NewBackend()
	b.AddRemote(remote, plugintest.Remote{Env: []string{"VERSION=1"}})
	old := started(t, ctx, b, "task-1", spec(remote, false), plugin.WithHealthCheck(plugin.HealthCheck{}))
	done := waitAsync(t, b, old, ctx)
	c := newController(t, b, "task-2", withEnv(spec(remote, false), "VERSION=7"))
	assert.NilError(t, c.Prepare(ctx))
	assert.Check(t, is.ErrorIs(result(t, done), plugin.ErrPluginDisabled))
	assert.NilError(t, c.Start(ctx))
}

// A failure in Start after the early enable is Start's, as before: a
// plugin that does not answer its readiness probe gives a temporary
// ErrPluginNotAnswering, stays enabled, and is not enabled twice.
func TestStartAfterTheEarlyEnableStillWaitsForAnAnswer(t *testing.T) {
	ctx := context.Background()
	b := plugintest.NewBackend()
	b.AddRemote(remote, plugintest.Remote{Env: []string{"VERSION=1"}})
	started(t, ctx, b, "task-1", spec(remote, false))
	c := newController(t, b, "task-2", withEnv(spec(remote, false), "VERSION=7"))
	assert.NilError(t, c.Prepare(ctx))
	assert.NilError(t, b.SetHealth(name, plugintest.Health{ReadyAfter: 1}))
	b.ResetCalls()
	err := c.Start(ctx)
	assert.Check(t, is.ErrorIs(err, plugin.ErrPluginNotAnswering))
	assert.Check(t, exec.IsTemporary(err), "%v", err)
	assert.NilError(t, c.Start(ctx))
	assert.Check(t, is.Equal(countCalls(b, "Enable"), 0))
}

// An early enable that fails is left to Start, which enables the plugin
// or reports the error, as it did before.
func TestAFailedEarlyEnableIsLeftToStart(t *testing.T) {
	ctx := context.Background()
	b := plugintest.NewBackend()
	b.AddRemote(remote, plugintest.Remote{Env: []string{"VERSION=1"}})
	started(t, ctx, b, "task-1", spec(remote, false))
	c := newController(t, b, "task-2", withEnv(spec(remote, false), "VERSION=7"))
	b.FailNext("Enable", errors.New("enable: the socket is not there yet"))
	assert.NilError(t, c.Prepare(ctx))
	p, _, _ := state(t, b, name)
	assert.Check(t, !p.Enabled)
	assert.NilError(t, c.Start(ctx))
	p, _, _ = state(t, b, name)
	assert.Check(t, p.Enabled)
	assert.Check(t, is.Contains(p.Settings.Env, "VERSION=7"))
}

func withEnv(s runtime.PluginSpec, env ...string) runtime.PluginSpec {
	s.Env = env
	return s
}
