package plugin_test

// Start's disable under other users' references, and Wait: it cannot spin or
// hang.

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"sync"
	"testing"

	cerrdefs "github.com/containerd/errdefs"
	"github.com/distribution/reference"
	"github.com/docker/docker/api/types"
	"github.com/docker/docker/api/types/backend"
	"github.com/docker/docker/api/types/registry"
	mobyplugin "github.com/docker/docker/plugin"
	"github.com/moby/swarmkit/v2/agent/exec"
	"gotest.tools/v3/assert"

	plugin "github.com/seed-e85c93d5/plugin"
	"github.com/seed-e85c93d5/plugin/plugintest"
)

// ---- Disable, in use -------------------------------------------------------------

func TestStartDisablesPluginItsServiceHolds(t *testing.T) {
	b := plugintest.NewBackend()
	ctx := context.Background()
	started(t, ctx, b, "task-1", spec(remote, false))

	// A plain Disable fails against the Manager's rule: our own references count.
	err := b.Disable(name, &backend.PluginDisableConfig{})
	assert.Assert(t, cerrdefs.IsConflict(err), "%v", err)

	started(t, ctx, b, "task-2", spec(remote, true))
	p, refs, _ := state(t, b, name)
	assert.Assert(t, !p.Enabled)
	assert.Equal(t, refs, 2)
}

func TestStartKeepsPluginOthersUse(t *testing.T) {
	b := plugintest.NewBackend()
	ctx := context.Background()
	c1 := started(t, ctx, b, "task-1", spec(remote, false))
	c2 := newController(t, b, "task-2", spec(remote, true))
	assert.NilError(t, c2.Prepare(ctx))
	assert.NilError(t, c1.Start(ctx)) // enabled again, by the old task

	// A volume starts using the driver.
	pl, err := b.Get(name)
	assert.NilError(t, err)
	pl.Acquire()

	// A disabled spec does not take it away from the volume, neither at
	// Start nor at Prepare, which would otherwise upgrade it on every retry.
	err = c2.Start(ctx)
	assert.ErrorIs(t, err, plugin.ErrPluginInUse)
	assert.Assert(t, cerrdefs.IsConflict(err))
	assert.Assert(t, exec.IsTemporary(err), "retry until the other user lets go")
	c4 := newController(t, b, "task-4", spec(remote2, true))
	err = c4.Prepare(ctx)
	assert.ErrorIs(t, err, plugin.ErrPluginInUse)
	assert.Assert(t, exec.IsTemporary(err))
	p, _, _ := state(t, b, name)
	assert.Assert(t, p.Enabled)
	assert.Equal(t, p.PluginReference, "example.com/acme/vol:1.0", "not upgraded")
	assert.Equal(t, countCalls(b, "Upgrade"), 0, "task-2's remote is unchanged: not upgraded either")

	// An upgrade is what the operator asked for: as stock dockerd, it
	// disables the plugin under the volume, upgrades it, and Start enables
	// it again.
	c3 := newController(t, b, "task-3", spec(remote2, false))
	assert.NilError(t, c3.Prepare(ctx))
	p, _, _ = state(t, b, name)
	assert.Equal(t, p.PluginReference, "example.com/acme/vol:2.0")
	assert.NilError(t, c3.Start(ctx))
	p, _, _ = state(t, b, name)
	assert.Assert(t, p.Enabled)

	pl.Release()
	assert.NilError(t, c2.Start(ctx))
	p, _, _ = state(t, b, name)
	assert.Assert(t, !p.Enabled)
}

// ---- Wait cannot spin or hang --------------------------------------------------------

func TestWaitReturnsWhenEventStreamCloses(t *testing.T) {
	fake := plugintest.NewBackend()
	b := newEventBackend(fake)
	ctx := context.Background()
	c := started(t, ctx, b, "task-1", spec(remote, false))

	done := make(chan error, 1)
	go func() { done <- c.Wait(ctx) }() // ctx never ends
	<-b.subscribed
	close(b.events)
	err := result(t, done)
	assert.Assert(t, exec.IsTemporary(err), "%v", err)
	assert.Assert(t, cerrdefs.IsUnavailable(err), "%v", err)
	assert.Assert(t, !cerrdefs.IsInternal(err), "a closed stream is not an invalid answer: %v", err)
	assert.Error(t, err, "plugin event stream closed by the backend")
}

func TestCloseEndsWaitAndIsFinal(t *testing.T) {
	b := plugintest.NewBackend()
	ctx := context.Background()
	c := started(t, ctx, b, "task-1", spec(remote, false))
	done := waitAsync(t, b, c, ctx)

	assert.NilError(t, c.Close())
	assert.ErrorIs(t, result(t, done), exec.ErrControllerClosed)
	assert.NilError(t, c.Close(), "Close is idempotent")

	for name, call := range map[string]func() error{
		"Update":    func() error { return c.Update(ctx, nil) },
		"Prepare":   func() error { return c.Prepare(ctx) },
		"Start":     func() error { return c.Start(ctx) },
		"Wait":      func() error { return c.Wait(ctx) },
		"Shutdown":  func() error { return c.Shutdown(ctx) },
		"Terminate": func() error { return c.Terminate(ctx) },
		"Remove":    func() error { return c.Remove(ctx) },
	} {
		assert.ErrorIs(t, call(), exec.ErrControllerClosed, name)
	}
}

// blockingPull holds Pull until released, like a slow registry, so that
// Remove and Close overlap a cancelled Prepare as swarmkit's worker does.
type blockingPull struct {
	*plugintest.Backend
	entered chan struct{}
}

func (b *blockingPull) Pull(ctx context.Context, ref reference.Named, n string, h http.Header, a *registry.AuthConfig, p types.PluginPrivileges, w io.Writer, opts ...mobyplugin.CreateOpt) error {
	close(b.entered)
	<-ctx.Done()
	// The registry answered just as the task was cancelled.
	if err := b.Backend.Pull(context.Background(), ref, n, h, a, p, w, opts...); err != nil {
		return err
	}
	return ctx.Err()
}

func TestRemoveAndCloseDuringCancelledPrepare(t *testing.T) {
	fake := plugintest.NewBackend()
	b := &blockingPull{Backend: fake, entered: make(chan struct{})}
	c := newController(t, b, "task-1", spec(remote, false))
	ctx, cancel := context.WithCancel(context.Background())
	prepared := make(chan error, 1)
	go func() { prepared <- c.Prepare(ctx) }()
	<-b.entered

	removed := make(chan error, 1)
	go func() { removed <- c.Remove(context.Background()) }()
	closed := make(chan error, 1)
	go func() { closed <- c.Close() }()
	cancel()

	assert.ErrorIs(t, <-prepared, context.Canceled)
	err := <-removed
	assert.Assert(t, err == nil || errors.Is(err, exec.ErrControllerClosed), "%v", err)
	assert.NilError(t, <-closed)
	// Whatever the interleaving, no reference is left behind.
	if _, refs, found := state(t, fake, name); found {
		assert.Equal(t, refs, 0)
	}
}

func TestConcurrentControllers(t *testing.T) {
	b := plugintest.NewBackend()
	ctx := context.Background()
	const tasks = 16
	var wg sync.WaitGroup
	ctrls := make([]*plugin.Controller, tasks)
	for i := range ctrls {
		ctrls[i] = newController(t, b, fmt.Sprintf("task-%d", i), spec(remote, i%2 == 0))
	}
	errs := make(chan error, tasks*4)
	for _, c := range ctrls {
		wg.Add(1)
		go func(c *plugin.Controller) {
			defer wg.Done()
			for {
				err := c.Prepare(ctx)
				if err == nil {
					break
				}
				if !exec.IsTemporary(err) {
					errs <- err
					return
				}
			}
			wctx, cancel := context.WithCancel(ctx)
			waited := make(chan struct{})
			go func() { defer close(waited); _ = c.Wait(wctx) }()
			if err := c.Start(ctx); err != nil && !exec.IsTemporary(err) {
				errs <- err
			}
			cancel()
			<-waited
			if err := c.Remove(ctx); err != nil {
				errs <- err
			}
			errs <- c.Close()
		}(c)
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		assert.NilError(t, err)
	}
	_, _, found := state(t, b, name)
	assert.Assert(t, !found, "the last Remove removes the plugin")
}
