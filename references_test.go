package plugin_test

// References: exactly one per task, however many Controllers and whichever
// Backend value; none once Remove has begun; the plugin lock.

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	goreflect "reflect"
	goruntime "runtime"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/distribution/reference"
	"github.com/docker/docker/api/types"
	"github.com/docker/docker/api/types/backend"
	"github.com/docker/docker/api/types/registry"
	"github.com/docker/docker/api/types/swarm/runtime"
	mobyplugin "github.com/docker/docker/plugin"
	v2 "github.com/docker/docker/plugin/v2"
	"github.com/moby/swarmkit/v2/agent/exec"
	"github.com/moby/swarmkit/v2/api"
	"gotest.tools/v3/assert"

	plugin "github.com/seed-e85c93d5/plugin"
	"github.com/seed-e85c93d5/plugin/plugintest"
)

// ---- Restart safety and references --------------------------------------------

func TestResumedTaskBindsByName(t *testing.T) {
	b := plugintest.NewBackend()
	ctx := context.Background()
	started(t, ctx, b, "task-1", spec(remote, false))

	// The agent restarts: a new Controller for the same RUNNING task gets
	// Wait without Prepare.
	c2 := newController(t, b, "task-1", spec(remote, false))
	done := waitAsync(t, b, c2, ctx)
	for _, call := range b.Calls() {
		if call.Method != "SubscribeEvents" && call.Method != "Privileges" {
			assert.Assert(t, call.Name != "", "%s with an empty name", call.Method)
		}
	}
	_, refs, _ := state(t, b, name)
	assert.Equal(t, refs, 1, "the task holds exactly one reference")
	assert.NilError(t, b.Disable(name, &backend.PluginDisableConfig{ForceDisable: true}))
	assert.ErrorIs(t, result(t, done), plugin.ErrPluginDisabled)

	// Remove on the new Controller releases the one reference and removes.
	assert.NilError(t, c2.Remove(ctx))
	_, _, found := state(t, b, name)
	assert.Assert(t, !found)
}

func TestResumedTaskAfterDaemonRestartRemoves(t *testing.T) {
	b := plugintest.NewBackend()
	ctx := context.Background()
	// The plugin survives a daemon restart, its reference counts don't.
	install(t, b, mobyplugin.WithSwarmService(service))

	c := newController(t, b, "task-old", spec(remote, false))
	assert.NilError(t, c.Remove(ctx))
	_, _, found := state(t, b, name)
	assert.Assert(t, !found)
}

func TestResumedTaskNeverActsOnAnotherPlugin(t *testing.T) {
	b := plugintest.NewBackend()
	ctx := context.Background()
	install(t, b)
	assert.NilError(t, b.Enable(name, &backend.PluginEnableConfig{}))

	c := newController(t, b, "task-1", spec(remote, true))
	assert.ErrorIs(t, c.Start(ctx), plugin.ErrPluginExists)
	assert.ErrorIs(t, c.Wait(ctx), plugin.ErrPluginExists)
	assert.NilError(t, c.Remove(ctx))
	p, refs, found := state(t, b, name)
	assert.Assert(t, found && p.Enabled)
	assert.Equal(t, refs, 0)
	assert.Equal(t, countCalls(b, "Disable")+countCalls(b, "Remove"), 0)
}

func TestExactlyOneReferencePerTask(t *testing.T) {
	ctx := context.Background()
	t.Run("retried prepare and repeated remove", func(t *testing.T) {
		b := plugintest.NewBackend()
		c := newController(t, b, "task-1", spec(remote, false))
		assert.NilError(t, c.Prepare(ctx))
		assert.NilError(t, c.Prepare(ctx))
		assert.NilError(t, c.Start(ctx))
		_, refs, _ := state(t, b, name)
		assert.Equal(t, refs, 1)

		other := newController(t, b, "task-2", spec(remote, false))
		assert.NilError(t, other.Prepare(ctx))
		assert.NilError(t, c.Remove(ctx))
		assert.NilError(t, c.Remove(ctx))
		_, refs, found := state(t, b, name)
		assert.Assert(t, found, "a repeated Remove must not release another task's reference")
		assert.Equal(t, refs, 1)
		assert.ErrorIs(t, c.Prepare(ctx), plugin.ErrTaskRemoved)
		assert.NilError(t, other.Remove(ctx))
		_, _, found = state(t, b, name)
		assert.Assert(t, !found)
	})
	t.Run("remove after failed upgrade", func(t *testing.T) {
		b := plugintest.NewBackend()
		c1 := newController(t, b, "task-1", spec(remote, false))
		assert.NilError(t, c1.Prepare(ctx))
		b.FailNext("Upgrade", errors.New("manifest unknown"))
		c2 := newController(t, b, "task-2", spec(remote2, false))
		assert.Assert(t, c2.Prepare(ctx) != nil)
		_, refs, _ := state(t, b, name)
		assert.Equal(t, refs, 2)
		assert.NilError(t, c2.Remove(ctx))
		_, refs, found := state(t, b, name)
		assert.Assert(t, found)
		assert.Equal(t, refs, 1)
		assert.NilError(t, c1.Remove(ctx))
		_, _, found = state(t, b, name)
		assert.Assert(t, !found)
	})
	t.Run("remove after failed pull", func(t *testing.T) {
		b := plugintest.NewBackend()
		b.FailNext("Pull", errors.New("denied"))
		c := newController(t, b, "task-1", spec(remote, false))
		assert.Assert(t, c.Prepare(ctx) != nil)
		assert.NilError(t, c.Remove(ctx))
		assert.Equal(t, countCalls(b, "Remove"), 0)
	})
	t.Run("remove keeps plugin another task prepares", func(t *testing.T) {
		b := plugintest.NewBackend()
		c1 := started(t, ctx, b, "task-1", spec(remote, false))
		c2 := newController(t, b, "task-2", spec(remote2, false))
		b.FailNext("Upgrade", exec.MakeTemporary(errors.New("registry busy")))
		err := c2.Prepare(ctx)
		assert.Assert(t, exec.IsTemporary(err))
		assert.NilError(t, c1.Remove(ctx))
		_, _, found := state(t, b, name)
		assert.Assert(t, found, "task-2 holds it during its retried Prepare")
		assert.NilError(t, c2.Prepare(ctx))
		_, refs, _ := state(t, b, name)
		assert.Equal(t, refs, 1)
	})
}

// ---- No reference once Remove has begun ------------------------------------------------

// heldGet holds its first Get after hold is set until release is closed,
// and closes held once it holds it.
type heldGet struct {
	*plugintest.Backend
	hold    atomic.Bool
	held    chan struct{}
	release chan struct{}
}

func (b *heldGet) Get(n string) (*v2.Plugin, error) {
	if b.hold.CompareAndSwap(true, false) {
		close(b.held)
		<-b.release
	}
	return b.Backend.Get(n)
}

// resumedWait runs a resumed task's Wait. Its name marks the goroutine's
// stack for parkedOnLockOrDone.
func resumedWait(ctx context.Context, c *plugin.Controller) error { return c.Wait(ctx) }

// parkedOnLockOrDone returns once done has a value or the goroutine whose
// stack holds the function fn is inside sync.(*Mutex).Lock called from the
// Controller's method (not from its short state guard, enter). No signal of
// the Controller tells that a step waits for a lock the test cannot see, so
// this reads every goroutine's stack until one shows it; it spins with
// runtime.Gosched, never sleeps.
func parkedOnLockOrDone(t *testing.T, done chan error, fn string) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	buf := make([]byte, 1<<20)
	for len(done) == 0 {
		n := goruntime.Stack(buf, true)
		for _, g := range strings.Split(string(buf[:n]), "\n\n") {
			if !strings.Contains(g, fn) {
				continue
			}
			// Frames alternate with their file lines; the caller of Lock
			// is the frame after it.
			lines := strings.Split(g, "\n")
			for i, l := range lines {
				if strings.HasPrefix(l, "sync.(*Mutex).Lock") && i+2 < len(lines) &&
					strings.Contains(lines[i+2], "plugin.(*Controller).") && !strings.Contains(lines[i+2], ".enter(") {
					return
				}
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s neither returned nor waited for a lock:\n%s", fn, buf[:n])
		}
		goruntime.Gosched()
	}
}

// TestNoReferenceTakenOnceRemoveBegan: swarmkit's worker may Remove a task
// (closeManager) while the task's resumed, unbound Controller starts its
// Wait. Whichever comes first, once Remove has begun Wait takes no
// reference: Remove is held inside the Backend's Get while Wait arrives,
// and the plugin ends with exactly the other task's reference, so that
// task's Remove removes it.
func TestNoReferenceTakenOnceRemoveBegan(t *testing.T) {
	ctx := context.Background()
	fake := plugintest.NewBackend()
	b := &heldGet{Backend: fake, held: make(chan struct{}), release: make(chan struct{})}
	dropped := started(t, ctx, b, "task-1", spec(remote, false)) // before the agent restart
	other := started(t, ctx, b, "task-2", spec(remote, false))
	_, refs, _ := state(t, fake, name)
	assert.Equal(t, refs, 2)

	resumed := newController(t, b, "task-1", spec(remote, false))
	b.hold.Store(true)
	removed := make(chan error, 1)
	go func() { removed <- resumed.Remove(ctx) }()
	<-b.held // Remove has begun and is inside Get

	wctx, cancel := context.WithCancel(ctx)
	defer cancel()
	waited := make(chan error, 1)
	go func() { waited <- resumedWait(wctx, resumed) }()
	// Wait has returned, or it is past its first checks, waiting for the
	// lock Remove holds: from there, the code before the fix bound the
	// task and took a reference as soon as Remove let go.
	parkedOnLockOrDone(t, waited, "resumedWait")
	close(b.release)
	assert.NilError(t, <-removed)
	cancel() // ends a Wait that bound and waits for events
	select {
	case err := <-waited:
		assert.ErrorIs(t, err, plugin.ErrTaskRemoved)
	case <-time.After(10 * time.Second):
		t.Fatal("Wait did not return")
	}

	_, refs, _ = state(t, fake, name)
	assert.Equal(t, refs, 1, "only task-2's reference is left")
	assert.NilError(t, other.Remove(ctx))
	_, _, found := state(t, fake, name)
	assert.Assert(t, !found, "the last task's Remove removes the plugin")
	assert.NilError(t, dropped.Close())
}

// ---- References do not depend on the Backend value ---------------------------------------

// wrapper is a Backend value of its own over a shared Backend, as a daemon
// fork that wraps the Manager for each Controller makes.
type wrapper struct{ *plugintest.Backend }

// TestReferencesDoNotDependOnTheBackendValue: with a Backend value per
// Controller over one Manager, each task holds exactly one reference, the
// service's own tasks are not taken for other users (an upgrade goes ahead
// quietly, a Disabled spec disables the plugin), and a resumed task takes
// no second reference.
func TestReferencesDoNotDependOnTheBackendValue(t *testing.T) {
	ctx := context.Background()
	pinned := "example.com/acme/vol@sha256:" + strings.Repeat("56", 32)
	// setup starts task-1 and task-2 of the service, each Controller with
	// a Backend value of its own, and returns the shared fake and a maker
	// of further Backend values.
	setup := func(t *testing.T, s runtime.PluginSpec) (*plugintest.Backend, func() plugin.Backend, []*plugin.Controller) {
		b := plugintest.NewBackend()
		own := func() plugin.Backend { return &wrapper{b} }
		c1 := started(t, ctx, own(), "task-1", s)
		c2 := newController(t, own(), "task-2", s)
		assert.NilError(t, c2.Prepare(ctx), "the other task's reference is the service's")
		assert.NilError(t, c2.Prepare(ctx))
		assert.NilError(t, c2.Start(ctx))
		_, refs, _ := state(t, b, name)
		assert.Equal(t, refs, 2, "one reference per task")
		return b, own, []*plugin.Controller{c1, c2}
	}
	// removeAll removes the tasks' Controllers; the last removes the plugin.
	removeAll := func(t *testing.T, b *plugintest.Backend, cs ...*plugin.Controller) {
		for _, c := range cs {
			assert.NilError(t, c.Remove(ctx))
		}
		_, _, found := state(t, b, name)
		assert.Assert(t, !found, "the last task's Remove removes the plugin")
	}

	t.Run("upgrade", func(t *testing.T) {
		logCtx, logs := captureLogs()
		b, own, cs := setup(t, spec(remote, false))
		c3 := newController(t, own(), "task-3", spec(remote2, false))
		assert.NilError(t, c3.Prepare(logCtx))
		assert.NilError(t, c3.Start(logCtx))
		p, _, _ := state(t, b, name)
		assert.Assert(t, p.Enabled)
		assert.Equal(t, p.PluginReference, remote2)
		for _, l := range logs.lines {
			assert.Assert(t, !strings.Contains(l, "level=warn"), "no other user to warn about: %s", l)
		}
		removeAll(t, b, append(cs, c3)...)
	})
	t.Run("disabled spec", func(t *testing.T) {
		b, own, cs := setup(t, spec(pinned, false))
		c3 := newController(t, own(), "task-3", spec(pinned, true))
		assert.NilError(t, c3.Prepare(ctx))
		assert.NilError(t, c3.Start(ctx), "the service's own tasks are no other users")
		p, refs, _ := state(t, b, name)
		assert.Assert(t, !p.Enabled)
		assert.Equal(t, refs, 3)
		removeAll(t, b, append(cs, c3)...)
	})
	t.Run("resumed task", func(t *testing.T) {
		b, own, cs := setup(t, spec(pinned, false))
		// task-1 resumed after an agent restart, with a third Backend value.
		resumed := newController(t, own(), "task-1", spec(pinned, false))
		wctx, cancel := context.WithCancel(ctx)
		done := waitAsync(t, b, resumed, wctx)
		_, refs, _ := state(t, b, name)
		assert.Equal(t, refs, 2, "the resumed task took a second reference")
		cancel()
		assert.ErrorIs(t, result(t, done), context.Canceled)
		removeAll(t, b, resumed, cs[1])
		assert.NilError(t, cs[0].Close())
	})
}

// uncomparableBackend is a Backend value that cannot be compared or hashed:
// value receivers (promoted from noSetter) and a slice field.
type uncomparableBackend struct {
	noSetter
	tags []string
}

// embeddingBackend is a comparable type, a struct whose one field is an
// interface, but comparing or hashing a value of it panics when that
// interface holds an uncomparable value.
type embeddingBackend struct{ plugin.Backend }

// noPanic runs a step and fails the test if it panics.
func noPanic(t *testing.T, step string, f func() error) (err error) {
	t.Helper()
	defer func() {
		if r := recover(); r != nil {
			t.Fatalf("%s panicked: %v", step, r)
		}
	}()
	return f()
}

func TestBackendValueThatCannotBeHashed(t *testing.T) {
	ctx := context.Background()
	fake := plugintest.NewBackend()
	b := embeddingBackend{uncomparableBackend{noSetter{fake}, []string{"node-1"}}}
	assert.Assert(t, goreflect.TypeOf(b).Comparable(), "the type alone looks comparable")

	c := newController(t, b, "task-1", spec(remote, false))
	assert.NilError(t, noPanic(t, "Prepare", func() error { return c.Prepare(ctx) }))
	assert.NilError(t, noPanic(t, "Start", func() error { return c.Start(ctx) }))
	p, refs, _ := state(t, fake, name)
	assert.Assert(t, p.Enabled)
	assert.Equal(t, refs, 1)
	assert.NilError(t, noPanic(t, "Remove", func() error { return c.Remove(ctx) }))
	_, _, found := state(t, fake, name)
	assert.Assert(t, !found)
}

// ---- The plugin's lock --------------------------------------------------------------

// heldPull holds its first Pull until release is closed, like a registry
// that stalls, and closes held once it holds it.
type heldPull struct {
	*plugintest.Backend
	first   atomic.Bool
	held    chan struct{}
	release chan struct{}
}

func (b *heldPull) Pull(ctx context.Context, ref reference.Named, n string, h http.Header, a *registry.AuthConfig, p types.PluginPrivileges, w io.Writer, opts ...mobyplugin.CreateOpt) error {
	if b.first.CompareAndSwap(false, true) {
		close(b.held)
		<-b.release
	}
	return b.Backend.Pull(ctx, ref, n, h, a, p, w, opts...)
}

// TestCancelledPrepareStopsWaitingForThePluginLock: while one task's Pull
// stalls, holding the plugin's lock, the Prepare of another task of the
// service for the same plugin waits for that lock, whichever way its spec
// writes the plugin's name ("vol", "vol:latest", "docker.io/library/vol"
// are one plugin to the Manager, so they share the lock and the second
// Prepare touches nothing meanwhile); and once swarmkit cancels it, it
// returns at once with its context's error, which exec.Do retries.
func TestCancelledPrepareStopsWaitingForThePluginLock(t *testing.T) {
	ctx := context.Background()
	fake := plugintest.NewBackend()
	b := &heldPull{Backend: fake, held: make(chan struct{}), release: make(chan struct{})}
	var releaseOnce sync.Once
	release := func() { releaseOnce.Do(func() { close(b.release) }) }
	t.Cleanup(release)

	first := newController(t, b, "task-0", spec(remote, false)) // Name "vol"
	pulled := make(chan error, 1)
	go func() { pulled <- first.Prepare(ctx) }()
	<-b.held

	for i, n := range []string{"vol", "vol:latest", "docker.io/library/vol"} {
		t.Run(n, func(t *testing.T) {
			tk := task(t, fmt.Sprintf("task-%d", i+1), service, runtime.PluginSpec{Name: n, Remote: remote})
			tk.DesiredState = api.TaskStateRunning
			tk.Status.State = api.TaskStatePreparing
			c, err := plugin.NewController(b, tk)
			assert.NilError(t, err)
			fake.ResetCalls()

			stepCtx, cancel := context.WithCancel(ctx)
			type doResult struct {
				st  *api.TaskStatus
				err error
			}
			res := make(chan doResult, 1)
			go func() {
				st, err := exec.Do(stepCtx, tk, c)
				res <- doResult{st, err}
			}()
			cancel()
			select {
			case r := <-res:
				assert.ErrorIs(t, r.err, exec.ErrTaskRetry)
				assert.Equal(t, r.st.State, api.TaskStatePreparing, r.st.Err)
			case <-time.After(10 * time.Second):
				t.Fatal("Prepare still waits for the plugin's lock after its context ended")
			}
			assert.DeepEqual(t, methods(fake), []string(nil))
		})
	}

	release()
	assert.NilError(t, <-pulled)
	_, refs, _ := state(t, fake, name)
	assert.Equal(t, refs, 1, "the cancelled tasks took no reference")
	assert.NilError(t, first.Remove(ctx))
	_, _, found := state(t, fake, name)
	assert.Assert(t, !found)
}
