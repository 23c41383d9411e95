package restart_test

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sync/atomic"
	"syscall"
	"testing"

	cerrdefs "github.com/containerd/errdefs"

	"github.com/docker/docker/api/types/backend"
	"github.com/docker/docker/api/types/swarm/runtime"
	"github.com/moby/swarmkit/v2/agent/exec"
	"github.com/moby/swarmkit/v2/api"
	plugin "github.com/seed-e85c93d5/plugin"
	"github.com/seed-e85c93d5/plugin/executor"
	"github.com/seed-e85c93d5/plugin/internal/keptplugins"
	"github.com/seed-e85c93d5/plugin/plugintest"
	"gotest.tools/v3/assert"
)

// Restart safety through the public API (plugin.RestartSafe, ShuttingDown,
// LeftSwarm) over the reference executor and the fake, driven in swarmkit
// v2's call order.

// ---- Restart safety (RestartSafe, ShuttingDown) -----------------------------

func running(t *api.Task) *api.Task {
	t.Status.State = api.TaskStateRunning
	t.DesiredState = api.TaskStateRunning
	return t
}

// removing is t as the managers assign it once its service is deleted.
func removing(t *api.Task) *api.Task {
	t.DesiredState = api.TaskStateRemove
	return t
}

func TestRestartSafeRejectsBadInput(t *testing.T) {
	b := plugintest.NewBackend()
	exe := executor.New(b)
	for _, tc := range []struct {
		name    string
		e       exec.Executor
		backend plugin.Backend
		dir     string
		want    string
	}{
		{"nil executor", nil, b, t.TempDir(), "plugin.RestartSafe: needs an executor, got nil"},
		{"typed nil executor", (*executor.Executor)(nil), b, t.TempDir(), "plugin.RestartSafe: needs an executor, got nil"},
		{"nil backend", exe, nil, t.TempDir(), "plugin.RestartSafe: needs a backend, got nil"},
		{"typed nil backend", exe, (*plugintest.Backend)(nil), t.TempDir(), "plugin.RestartSafe: needs a backend, got nil"},
		{"no dir", exe, b, "", `plugin.RestartSafe: needs a directory for its record, got ""`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			x, err := plugin.RestartSafe(tc.e, tc.backend, tc.dir)
			assert.Assert(t, x == nil)
			assert.Error(t, err, tc.want)
			assert.Assert(t, cerrdefs.IsInvalidArgument(err))
		})
	}
}

// A shutdown keeps the plugin, enabled, with its ID; the resumed task takes
// it over without a pull; a leave afterwards removes it.
func TestRestartKeepsThePlugin(t *testing.T) {
	ctx := context.Background()
	b := plugintest.NewBackend()
	b.AddRemote(remote, plugintest.Remote{})
	dir := t.TempDir()

	before := startNode(t, b, dir)
	c := before.completeSet(task(t, "task-1", service, spec(remote, false)))[0]
	assert.NilError(t, c.Prepare(ctx))
	assert.NilError(t, c.Start(ctx))
	pl, err := b.Get(name)
	assert.NilError(t, err)

	plugin.ShuttingDown(dir)
	// Recorded at once: the agent does not wait for its Remove calls, so
	// the daemon may exit before they ran.
	kept, err := keptplugins.Open(dir).Load()
	assert.NilError(t, err)
	assert.Equal(t, len(kept), 1)
	assert.DeepEqual(t, []string{kept[0].ID, kept[0].Name, kept[0].Service, kept[0].Task}, []string{pl.GetID(), "vol:latest", service, "task-1"})
	before.leave(c)
	after, err := b.Get(name)
	assert.NilError(t, err, "the shutdown removed the plugin")
	assert.Equal(t, after, pl)
	assert.Assert(t, after.IsEnabled())
	assert.Equal(t, after.GetRefCount(), 0, "the task's reference is released")
	assert.Assert(t, before.recorded())

	b.ResetCalls()
	restarted := startNode(t, b, dir)
	resumed := restarted.completeSet(running(task(t, "task-1", service, spec(remote, false))))[0]
	assert.Assert(t, !restarted.recorded(), "the resumed task claimed the plugin")
	waitCtx, cancel := context.WithCancel(ctx)
	done := waitAsync(t, b, resumed, waitCtx)
	assert.Equal(t, after.GetRefCount(), 1, "the resumed task holds the reference")
	cancel()
	assert.ErrorIs(t, result(t, done), context.Canceled)
	assert.Equal(t, countCalls(b, "Pull")+countCalls(b, "Upgrade")+countCalls(b, "Disable")+countCalls(b, "Remove"), 0, "calls: %v", methods(b))

	restarted.leave(resumed)
	_, _, found := state(t, b, name)
	assert.Assert(t, !found, "a leave removes the plugin")
	assert.Assert(t, !restarted.recorded())
}

// Without ShuttingDown, stopping the node is a leave: the plugin goes, and
// nothing is recorded.
func TestLeaveRemovesThePlugin(t *testing.T) {
	ctx := context.Background()
	b := plugintest.NewBackend()
	b.AddRemote(remote, plugintest.Remote{})
	n := startNode(t, b, t.TempDir())
	c := n.completeSet(task(t, "task-1", service, spec(remote, false)))[0]
	assert.NilError(t, c.Prepare(ctx))
	assert.NilError(t, c.Start(ctx))

	plugin.ShuttingDown(t.TempDir()) // another node's
	n.leave(c)
	n.assertPlugin(b, false, false)
}

// shutDown starts a node with a running task of service, shuts it down and
// returns its directory.
func shutDown(t *testing.T, b *plugintest.Backend, svc string) string {
	t.Helper()
	ctx := context.Background()
	dir := t.TempDir()
	n := startNode(t, b, dir)
	c := n.completeSet(task(t, "task-"+svc, svc, spec(remote, false)))[0]
	assert.NilError(t, c.Prepare(ctx))
	assert.NilError(t, c.Start(ctx))
	plugin.ShuttingDown(dir)
	n.leave(c)
	n.assertPlugin(b, true, true)
	return dir
}

// The first complete set after the restart decides: a kept plugin no task
// of its service claims is removed then, whatever the set holds (nothing:
// the service was deleted, the node left, or joins a new swarm).
func TestRestartRemovesAPluginNoTaskClaims(t *testing.T) {
	for _, tc := range []struct {
		name  string
		tasks []*api.Task
	}{
		{"service deleted while down", nil},
		{"another service's task", []*api.Task{task(t, "task-x", "svc-x", runtime.PluginSpec{Name: "other", Remote: remote2})}},
		{"the service's task for another plugin", []*api.Task{task(t, "task-y", service, runtime.PluginSpec{Name: "other", Remote: remote2})}},
		{"the service's task, being removed", []*api.Task{removing(running(task(t, "task-"+service, service, spec(remote, false))))}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			b := plugintest.NewBackend()
			b.AddRemote(remote, plugintest.Remote{})
			b.AddRemote(remote2, plugintest.Remote{})
			dir := shutDown(t, b, service)
			n := startNode(t, b, dir)

			ctrls := n.incrementalSet(tc.tasks...)
			n.assertPlugin(b, true, true, "an incremental set does not decide")

			ctrls = append(ctrls, n.completeSet()...)
			n.assertPlugin(b, false, false, "the first complete set removes the plugin")
			for _, c := range ctrls {
				assert.NilError(t, c.Close())
			}
		})
	}
}

// A kept plugin that is no longer its service's when the node comes back,
// or is in use, is left alone, and forgotten.
func TestRestartLeavesAlonePluginsNotToRemove(t *testing.T) {
	for _, tc := range []struct {
		name   string
		change func(t *testing.T, b *plugintest.Backend)
		found  bool
	}{
		{"removed while down", func(t *testing.T, b *plugintest.Backend) {
			assert.NilError(t, b.Remove(name, &backend.PluginRmConfig{ForceRemove: true}))
		}, false},
		{"a person's plugin of the name", func(t *testing.T, b *plugintest.Backend) {
			assert.NilError(t, b.Remove(name, &backend.PluginRmConfig{ForceRemove: true}))
			install(t, b)
		}, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			b := plugintest.NewBackend()
			b.AddRemote(remote, plugintest.Remote{})
			dir := shutDown(t, b, service)
			tc.change(t, b)
			n := startNode(t, b, dir)
			n.completeSet()
			_, _, found := state(t, b, name)
			assert.Equal(t, found, tc.found)
			assert.Assert(t, !n.recorded())
		})
	}
}

// A kept plugin no task claims but something else uses (a volume on the
// driver) stays, as Remove would keep it, and stays recorded: a later
// complete set removes it once it is unused.
func TestRestartRemovesAPluginInUseOnceUnused(t *testing.T) {
	b := plugintest.NewBackend()
	b.AddRemote(remote, plugintest.Remote{})
	dir := shutDown(t, b, service)
	pl, err := b.Get(name)
	assert.NilError(t, err)
	pl.Acquire() // a volume
	n := startNode(t, b, dir)

	n.completeSet()
	n.assertPlugin(b, true, true)

	pl.Release()
	n.completeSet()
	n.assertPlugin(b, false, false)
}

// Until the first complete set, a Prepare of another service's task for a
// kept plugin's name waits, then installs its own plugin: the kept one
// never makes it fail with "plugin already exists".
func TestRestartPrepareOfAnotherServiceWaitsForTheDecision(t *testing.T) {
	b := plugintest.NewBackend()
	b.AddRemote(remote, plugintest.Remote{})
	dir := shutDown(t, b, "svc-old")
	b.ResetCalls()
	n := startNode(t, b, dir)

	// The complete set, cut where the worker has created the Controllers
	// and not yet turned to the volumes.
	n.x.(exec.SecretsProvider).Secrets().Reset()
	c := n.controllers(task(t, "task-new", service, spec(remote, false)))[0]
	prepared := make(chan error, 1)
	go func() { prepared <- c.Prepare(context.Background()) }()
	// Its Prepare is parked on the decision, not on a lock or the Backend.
	waitForStack(t, "(*Guard).settled")
	assert.Equal(t, countCalls(b, "Pull"), 0)
	assert.Equal(t, owner(t, b, name), "svc-old")

	n.x.(exec.VolumesProvider).Volumes()
	assert.NilError(t, result(t, prepared))
	assert.Equal(t, owner(t, b, name), service)
	assert.NilError(t, c.Close())
}

// A Prepare waiting for the decision gives up with its context or on Close.
func TestRestartWaitingPrepareEnds(t *testing.T) {
	b := plugintest.NewBackend()
	b.AddRemote(remote, plugintest.Remote{})
	dir := shutDown(t, b, "svc-old")
	n := startNode(t, b, dir)
	ctrls := n.controllers(task(t, "task-a", service, spec(remote, false)), task(t, "task-b", service, spec(remote, false)))

	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	err := ctrls[0].Prepare(ctx)
	assert.ErrorIs(t, err, context.Canceled)
	assert.Assert(t, exec.IsTemporary(err) || errors.Is(err, context.Canceled))

	prepared := make(chan error, 1)
	go func() { prepared <- ctrls[1].Prepare(context.Background()) }()
	waitForStack(t, "(*Guard).settled")
	assert.NilError(t, ctrls[1].Close())
	assert.ErrorIs(t, result(t, prepared), exec.ErrControllerClosed)
	assert.Equal(t, owner(t, b, name), "svc-old", "nothing decided yet")
	assert.NilError(t, ctrls[0].Close())
}

// failingRemove fails the Backend's Remove while fail is set.
type failingRemove struct {
	*plugintest.Backend
	fail atomic.Bool
}

func (f *failingRemove) Remove(n string, config *backend.PluginRmConfig) error {
	if f.fail.Load() {
		return exec.MakeTemporary(fmt.Errorf("remove %s: %w", n, syscall.EBUSY))
	}
	return f.Backend.Remove(n, config)
}

// A removal that fails is tried again at the next complete set.
func TestRestartRetriesAFailedRemovalAtTheNextCompleteSet(t *testing.T) {
	b := plugintest.NewBackend()
	b.AddRemote(remote, plugintest.Remote{})
	dir := shutDown(t, b, service)
	f := &failingRemove{Backend: b}
	f.fail.Store(true)
	n := startNode(t, f, dir)

	n.completeSet()
	n.assertPlugin(b, true, true, "the failed removal stays recorded")

	f.fail.Store(false)
	n.completeSet()
	n.assertPlugin(b, false, false)
}

// A record that cannot be written means nothing is kept: Remove removes.
func TestShutdownWithoutARecordRemoves(t *testing.T) {
	ctx := context.Background()
	b := plugintest.NewBackend()
	b.AddRemote(remote, plugintest.Remote{})
	file := filepath.Join(t.TempDir(), "file")
	assert.NilError(t, os.WriteFile(file, nil, 0o600))
	dir := filepath.Join(file, "sub") // under a regular file: not writable
	n := startNode(t, b, dir)
	c := n.completeSet(task(t, "task-1", service, spec(remote, false)))[0]
	assert.NilError(t, c.Prepare(ctx))
	assert.NilError(t, c.Start(ctx))

	plugin.ShuttingDown(dir)
	n.leave(c)
	_, _, found := state(t, b, name)
	assert.Assert(t, !found)
}

// The RestartSafe executor hands swarmkit's calls to the executor it wraps,
// its secrets, configs and volumes managers included, and returns the
// Controllers of tasks that are not plugin tasks as they are.
func TestRestartSafePassesEverythingThrough(t *testing.T) {
	b := plugintest.NewBackend()
	inner := &providingExecutor{Executor: executor.New(b, executor.WithHostname("node-7"))}
	x, err := plugin.RestartSafe(inner, b, t.TempDir())
	assert.NilError(t, err)

	desc, err := x.Describe(context.Background())
	assert.NilError(t, err)
	assert.Equal(t, desc.Hostname, "node-7")
	x.(exec.SecretsProvider).Secrets().Reset()
	x.(exec.ConfigsProvider).Configs().Reset()
	x.(exec.VolumesProvider).Volumes().Add()
	assert.DeepEqual(t, inner.calls, []string{"Secrets", "Reset", "Configs", "Reset", "Volumes", "Add"})

	other := &api.Task{ID: "task-c", Spec: api.TaskSpec{Runtime: &api.TaskSpec_Container{Container: &api.ContainerSpec{Image: "busybox"}}}}
	c, err := x.Controller(other)
	assert.Equal(t, c, inner.container)
	assert.NilError(t, err)

	// An executor without these managers gets inert ones.
	x, err = plugin.RestartSafe(executor.New(b), b, t.TempDir())
	assert.NilError(t, err)
	s, err := x.(exec.SecretsProvider).Secrets().Get("x")
	assert.Assert(t, s == nil && err == nil)
	cfg, err := x.(exec.ConfigsProvider).Configs().Get("x")
	assert.Assert(t, cfg == nil && err == nil)
	info, err := x.(exec.VolumesProvider).Volumes().Plugins().NodeInfo(context.Background())
	assert.Assert(t, info == nil && err == nil)
}

// providingExecutor has managers of its own, which record the calls, and a
// controller of its own for container tasks.
type providingExecutor struct {
	*executor.Executor
	calls     []string
	container exec.Controller
}

func (p *providingExecutor) Controller(t *api.Task) (exec.Controller, error) {
	if t.Spec.GetContainer() != nil {
		p.container = &struct{ exec.Controller }{}
		return p.container, nil
	}
	return p.Executor.Controller(t)
}

func (p *providingExecutor) Secrets() exec.SecretsManager {
	p.calls = append(p.calls, "Secrets")
	return recordingManager{p}
}

func (p *providingExecutor) Configs() exec.ConfigsManager {
	p.calls = append(p.calls, "Configs")
	return recordingConfigs{recordingManager{p}}
}

func (p *providingExecutor) Volumes() exec.VolumesManager {
	p.calls = append(p.calls, "Volumes")
	return recordingVolumes{recordingManager{p}}
}

type recordingManager struct{ p *providingExecutor }

func (r recordingManager) Get(string) (*api.Secret, error) { return nil, nil }
func (r recordingManager) Add(...api.Secret)               { r.p.calls = append(r.p.calls, "Add") }
func (r recordingManager) Remove([]string)                 { r.p.calls = append(r.p.calls, "Remove") }
func (r recordingManager) Reset()                          { r.p.calls = append(r.p.calls, "Reset") }

type recordingConfigs struct{ recordingManager }

func (r recordingConfigs) Get(string) (*api.Config, error) { return nil, nil }
func (r recordingConfigs) Add(...api.Config)               { r.p.calls = append(r.p.calls, "Add") }

type recordingVolumes struct{ recordingManager }

func (r recordingVolumes) Get(string) (string, error)                  { return "", nil }
func (r recordingVolumes) Add(...api.VolumeAssignment)                 { r.p.calls = append(r.p.calls, "Add") }
func (r recordingVolumes) Remove([]api.VolumeAssignment, func(string)) {}
func (r recordingVolumes) Plugins() exec.VolumePluginManager           { return nil }
