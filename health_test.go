package plugin_test

// Readiness and liveness (issue 28): Start returns once the plugin answers,
// Wait notices a plugin that stops answering, and the next task's Start
// restarts it, and only it.

import (
	"context"
	"errors"
	"testing"
	"time"

	cerrdefs "github.com/containerd/errdefs"
	"github.com/docker/docker/api/types/backend"
	"github.com/moby/swarmkit/v2/agent/exec"
	"gotest.tools/v3/assert"
	is "gotest.tools/v3/assert/cmp"

	plugin "github.com/seed-e85c93d5/plugin"
	"github.com/seed-e85c93d5/plugin/plugintest"
)

// probeSignal tells each ProbePlugin call on probed.
type probeSignal struct {
	*plugintest.Backend
	probed chan error
}

func (b *probeSignal) ProbePlugin(ctx context.Context, id string) error {
	err := b.Backend.ProbePlugin(ctx, id)
	select {
	case b.probed <- err:
	default:
	}
	return err
}

func TestStartWaitsUntilThePluginAnswers(t *testing.T) {
	ctx := context.Background()
	b := plugintest.NewBackend()
	c := newController(t, b, "task-1", spec(remote, false))
	assert.NilError(t, c.Prepare(ctx))
	pl, err := b.Get(name)
	assert.NilError(t, err)
	assert.NilError(t, b.SetHealth(pl.GetID(), plugintest.Health{ReadyAfter: 2}))

	for i := range 2 {
		err := c.Start(ctx)
		assert.Check(t, errors.Is(err, plugin.ErrPluginNotAnswering), "attempt %d: %v", i, err)
		assert.Check(t, exec.IsTemporary(err), "still starting: retry")
		assert.Check(t, cerrdefs.IsUnavailable(err))
		assert.Check(t, is.ErrorContains(err, "waiting for vol to answer"))
		assert.Check(t, is.ErrorContains(err, "still starting"))
	}
	assert.NilError(t, c.Start(ctx))
	assert.Check(t, is.Equal(countCalls(b, "Enable"), 1), "enabled once")
	assert.Check(t, is.Equal(countCalls(b, "ProbePlugin"), 3))
}

func TestStartFailsAfterTheEnableTimeout(t *testing.T) {
	ctx := context.Background()
	b := plugintest.NewBackend()
	c := newController(t, b, "task-1", spec(remote, false), plugin.WithEnableTimeout(time.Nanosecond))
	assert.NilError(t, c.Prepare(ctx))
	pl, err := b.Get(name)
	assert.NilError(t, err)
	assert.NilError(t, b.SetHealth(pl.GetID(), plugintest.Health{Hung: true}))
	assert.NilError(t, b.Enable(pl.GetID(), nil2Enable())) // enabled, then hung
	assert.NilError(t, b.SetHealth(pl.GetID(), plugintest.Health{Hung: true}))

	assert.Check(t, exec.IsTemporary(c.Start(ctx)))
	err = c.Start(ctx)
	assert.Check(t, errors.Is(err, plugin.ErrPluginNotAnswering), "%v", err)
	assert.Check(t, !exec.IsTemporary(err), "past the enable timeout the task fails")
	assert.Check(t, is.ErrorContains(err, "did not answer the Backend's probe within the enable timeout"))
	assert.Check(t, is.ErrorContains(err, "last answer: Plugin.Activate: the plugin does not answer"))
}

func TestWaitNoticesAHungPluginAndTheNextStartRestartsIt(t *testing.T) {
	ctx := context.Background()
	fake := plugintest.NewBackend()
	b := &probeSignal{Backend: fake, probed: make(chan error, 16)}
	check := plugin.WithHealthCheck(plugin.HealthCheck{Interval: time.Millisecond, Timeout: time.Second, Threshold: 3})
	c := started(t, ctx, b, "task-1", spec(remote, false), check)
	pl, err := fake.Get(name)
	assert.NilError(t, err)
	id := pl.GetID()

	assert.NilError(t, fake.SetHealth(id, plugintest.Health{Hung: true}))
	fake.ResetCalls()
	err = c.Wait(ctx)
	assert.Check(t, errors.Is(err, plugin.ErrPluginNotAnswering), "%v", err)
	assert.Check(t, !exec.IsTemporary(err), "the task fails")
	assert.Check(t, is.ErrorContains(err, "missed 3 health checks in a row"))
	assert.Check(t, is.Equal(countCalls(fake, "ProbePlugin"), 3))
	assert.Check(t, is.Equal(countCalls(fake, "Disable"), 0), "Wait itself restarts nothing")

	// swarmkit replaces the failed task; its Start restarts the plugin.
	fake.ResetCalls()
	c2 := started(t, ctx, b, "task-2", spec(remote, false), check)
	assert.Check(t, is.DeepEqual(methods(fake)[1:], []string{"ResolveManifest", "Get", "ProbePlugin", "Disable", "Enable", "ProbePlugin"}))
	p, _, _ := state(t, fake, name)
	assert.Check(t, p.Enabled)
	assert.Check(t, is.Equal(p.ID, id))

	// The mark is spent: a third task restarts nothing.
	fake.ResetCalls()
	started(t, ctx, b, "task-3", spec(remote, false), check)
	assert.Check(t, is.Equal(countCalls(fake, "Disable"), 0))
	assert.NilError(t, c2.Close())
}

// A plugin marked hung that answers again by the next Start is not
// restarted.
func TestAPluginThatAnswersIsNeverRestarted(t *testing.T) {
	ctx := context.Background()
	fake := plugintest.NewBackend()
	check := plugin.WithHealthCheck(plugin.HealthCheck{Interval: time.Millisecond, Timeout: time.Second, Threshold: 1})
	c := started(t, ctx, fake, "task-1", spec(remote, false), check)
	pl, _ := fake.Get(name)
	assert.NilError(t, fake.SetHealth(pl.GetID(), plugintest.Health{Hung: true}))
	assert.Check(t, errors.Is(c.Wait(ctx), plugin.ErrPluginNotAnswering))
	assert.NilError(t, fake.SetHealth(pl.GetID(), plugintest.Health{})) // it recovered by itself
	fake.ResetCalls()
	started(t, ctx, fake, "task-2", spec(remote, false), check)
	assert.Check(t, is.Equal(countCalls(fake, "Disable"), 0))
	assert.Check(t, is.Equal(countCalls(fake, "Enable"), 0))
}

// A healthy plugin keeps its task waiting through any number of checks.
func TestHealthyPluginKeepsWaiting(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	fake := plugintest.NewBackend()
	b := &probeSignal{Backend: fake, probed: make(chan error)}
	c := started(t, ctx, b, "task-1", spec(remote, false), plugin.WithHealthCheck(plugin.HealthCheck{Interval: time.Millisecond, Threshold: 1}))
	done := make(chan error, 1)
	go func() { done <- c.Wait(ctx) }()
	for range 20 {
		assert.NilError(t, <-b.probed)
	}
	cancel()
	assert.Check(t, is.ErrorIs(<-done, context.Canceled))
	assert.Check(t, is.Equal(countCalls(fake, "Disable"), 0))
}

// A zero interval turns the liveness check off.
func TestHealthCheckOff(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	fake := plugintest.NewBackend()
	c := started(t, ctx, fake, "task-1", spec(remote, false), plugin.WithHealthCheck(plugin.HealthCheck{}))
	pl, _ := fake.Get(name)
	assert.NilError(t, fake.SetHealth(pl.GetID(), plugintest.Health{Hung: true}))
	done := waitAsync(t, fake, c, ctx)
	fake.ResetCalls()
	cancel()
	assert.Check(t, is.ErrorIs(result(t, done), context.Canceled))
	assert.Check(t, is.Equal(countCalls(fake, "ProbePlugin"), 0))
}

func nil2Enable() *backend.PluginEnableConfig { return &backend.PluginEnableConfig{} }

// Each task's runtime status names its plugin, as a container task's names
// its container.
func TestContainerStatusNamesThePlugin(t *testing.T) {
	ctx := context.Background()
	b := plugintest.NewBackend()
	c := newController(t, b, "task-1", spec(remote, false))
	var _ exec.ContainerStatuser = c
	st, err := c.ContainerStatus(ctx)
	assert.NilError(t, err)
	assert.Check(t, st == nil, "not bound yet")
	assert.NilError(t, c.Prepare(ctx))
	st, err = c.ContainerStatus(ctx)
	assert.NilError(t, err)
	pl, _ := b.Get(name)
	assert.Check(t, is.Equal(st.ContainerID, pl.GetID()))
}
