package plugin_test

import (
	"bytes"
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
	"syscall"
	"testing"
	"time"

	cerrdefs "github.com/containerd/errdefs"
	"github.com/containerd/log"
	"github.com/distribution/reference"
	"github.com/docker/docker/api/types"
	"github.com/docker/docker/api/types/backend"
	"github.com/docker/docker/api/types/registry"
	"github.com/docker/docker/api/types/swarm/runtime"
	upstream "github.com/docker/docker/daemon/cluster/controllers/plugin"
	dockererrdefs "github.com/docker/docker/errdefs"
	mobyplugin "github.com/docker/docker/plugin"
	v2 "github.com/docker/docker/plugin/v2"
	gogotypes "github.com/gogo/protobuf/types"
	"github.com/moby/swarmkit/v2/agent/exec"
	"github.com/moby/swarmkit/v2/api"
	swarmlog "github.com/moby/swarmkit/v2/log"
	"github.com/sirupsen/logrus"
	"go.uber.org/goleak"
	"gotest.tools/v3/assert"
	is "gotest.tools/v3/assert/cmp"

	plugin "github.com/seed-e85c93d5/plugin"
	"github.com/seed-e85c93d5/plugin/internal/pluginspec"
	"github.com/seed-e85c93d5/plugin/plugintest"
)

// The drop-in contract, checked by the compiler.
var (
	// moby's real manager is a Backend (and a Setter).
	_ plugin.Backend = (*mobyplugin.Manager)(nil)
	_ plugin.Setter  = (*mobyplugin.Manager)(nil)
	// Backend has exactly upstream's method set.
	_ plugin.Backend   = upstream.Backend(nil)
	_ upstream.Backend = plugin.Backend(nil)
	// The constructor keeps upstream's signature.
	_ func(plugin.Backend, *api.Task) (*plugin.Controller, error)     = plugin.NewController
	_ func(upstream.Backend, *api.Task) (*upstream.Controller, error) = upstream.NewController
	// A Controller is a swarmkit task controller.
	_ exec.Controller = (*plugin.Controller)(nil)
	// The fake is a Backend and a Setter.
	_ plugin.Backend = (*plugintest.Backend)(nil)
	_ plugin.Setter  = (*plugintest.Backend)(nil)
)

func TestMain(m *testing.M) {
	// Controllers log through log.G(ctx); keep the test output readable.
	logrus.SetOutput(io.Discard)
	goleak.VerifyTestMain(m)
}

const (
	service = "svc-1"
	remote  = "example.com/acme/vol:1.0"
	remote2 = "example.com/acme/vol:2.0"
	name    = "vol"
)

// task builds a plugin task the way the Docker daemon encodes it.
func task(t testing.TB, id, serviceID string, spec runtime.PluginSpec) *api.Task {
	t.Helper()
	return plugintest.NewTask(id, serviceID, spec)
}

func newController(t testing.TB, b plugin.Backend, id string, spec runtime.PluginSpec, opts ...plugin.Option) *plugin.Controller {
	t.Helper()
	c, err := plugin.New(b, task(t, id, service, spec), opts...)
	assert.NilError(t, err)
	return c
}

func spec(r string, disabled bool) runtime.PluginSpec {
	return runtime.PluginSpec{Name: name, Remote: r, Disabled: disabled}
}

// started makes a Controller for the task and runs its Prepare and Start.
func started(t testing.TB, ctx context.Context, b plugin.Backend, id string, s runtime.PluginSpec, opts ...plugin.Option) *plugin.Controller {
	t.Helper()
	c := newController(t, b, id, s, opts...)
	assert.NilError(t, c.Prepare(ctx))
	assert.NilError(t, c.Start(ctx))
	return c
}

// install pulls remote as name straight into b, with no controller: as a
// person, another service (opts) or the daemon before a restart would.
func install(t testing.TB, b *plugintest.Backend, opts ...mobyplugin.CreateOpt) {
	t.Helper()
	ref, err := reference.ParseNormalizedNamed(remote)
	assert.NilError(t, err)
	assert.NilError(t, b.Pull(context.Background(), ref, name, nil, &registry.AuthConfig{}, nil, io.Discard, opts...))
}

// state returns the plugin's snapshot and reference count; found reports
// whether it exists.
func state(t testing.TB, b *plugintest.Backend, n string) (p types.Plugin, refs int, found bool) {
	t.Helper()
	p, refs, err := b.Plugin(n)
	if cerrdefs.IsNotFound(err) {
		return p, 0, false
	}
	assert.NilError(t, err)
	return p, refs, true
}

// owner returns the service that owns the plugin (set once, at Pull).
func owner(t testing.TB, b *plugintest.Backend, n string) string {
	t.Helper()
	pl, err := b.Get(n)
	assert.NilError(t, err)
	return pl.SwarmServiceID
}

func methods(b *plugintest.Backend) []string {
	var out []string
	for _, c := range b.Calls() {
		out = append(out, c.Method)
	}
	return out
}

// lastCall returns the last recorded call of method.
func lastCall(b *plugintest.Backend, method string) plugintest.Call {
	calls := b.Calls()
	for i := len(calls) - 1; i >= 0; i-- {
		if calls[i].Method == method {
			return calls[i]
		}
	}
	return plugintest.Call{}
}

func countCalls(b *plugintest.Backend, method string) int {
	n := 0
	for _, c := range b.Calls() {
		if c.Method == method {
			n++
		}
	}
	return n
}

// waitAsync runs Wait on its own goroutine and returns its result channel
// once Wait is waiting: subscribed, past its state check, and selecting on
// its events. An out-of-band change made earlier could be reported as
// "mismatched plugin state" instead of by its event.
func waitAsync(t testing.TB, b *plugintest.Backend, c *plugin.Controller, ctx context.Context) <-chan error {
	t.Helper()
	before := b.Subscribers()
	waiting := &selectingCtx{Context: ctx, selecting: make(chan struct{}), subscribed: func() bool { return b.Subscribers() > before }}
	done := make(chan error, 1)
	go func() { done <- c.Wait(waiting) }()
	timeout := time.NewTimer(10 * time.Second)
	defer timeout.Stop()
	select {
	case <-waiting.selecting:
	case err := <-done:
		t.Fatalf("Wait returned before waiting: %v", err)
	case <-timeout.C:
		t.Fatal("Wait did not start waiting")
	}
	assert.Equal(t, b.Subscribers(), before+1, "Wait waits on its own subscription")
	return done
}

// selectingCtx tells when Wait first asks for Done once subscribed, which
// it does only in the select of its event loop. (A resumed, unbound Wait
// also asks for Done before subscribing, while it waits for the plugin's
// lock to bind.)
type selectingCtx struct {
	context.Context
	subscribed func() bool
	once       sync.Once
	selecting  chan struct{}
}

func (c *selectingCtx) Done() <-chan struct{} {
	if c.subscribed() {
		c.once.Do(func() { close(c.selecting) })
	}
	return c.Context.Done()
}

func result(t testing.TB, done <-chan error) error {
	t.Helper()
	select {
	case err := <-done:
		return err
	case <-time.After(10 * time.Second):
		t.Fatal("Wait did not return")
		return nil
	}
}

func assertBlocked(t testing.TB, done <-chan error) {
	t.Helper()
	select {
	case err := <-done:
		t.Fatalf("Wait returned unexpectedly: %v", err)
	default:
	}
}

// ---- Upstream scenarios ----------------------------------------------------

func TestPrepareFreshPull(t *testing.T) {
	b := plugintest.NewBackend()
	b.AddRemote(remote, plugintest.Remote{
		Privileges: types.PluginPrivileges{{Name: "network", Value: []string{"host"}}},
	})
	s := spec(remote, false)
	s.Env = []string{"DEBUG=1"}
	s.Privileges = []*runtime.PluginPrivilege{{Name: "network", Value: []string{"host"}}}
	c := newController(t, b, "task-1", s)

	assert.NilError(t, c.Prepare(context.Background()))

	assert.DeepEqual(t, methods(b), []string{"Get", "Privileges", "Pull", "Get"})
	pull := b.Calls()[2]
	p, refs, found := state(t, b, name)
	assert.Assert(t, found, "pull not performed")
	assert.Equal(t, owner(t, b, name), service)
	assert.Equal(t, p.Name, "vol:latest")
	assert.Assert(t, is.Contains(p.Settings.Env, "DEBUG=1"))
	assert.Assert(t, !p.Enabled)
	assert.Equal(t, refs, 1)
	assert.Equal(t, pull.Ref, "example.com/acme/vol:1.0")
	assert.Assert(t, pull.Auth != nil, "auth must be an empty config, not nil")
	assert.DeepEqual(t, *pull.Auth, registry.AuthConfig{})
}

func TestPrepareUpgradesOwnPlugin(t *testing.T) {
	b := plugintest.NewBackend()
	ctx := context.Background()
	started(t, ctx, b, "task-1", spec(remote, false))
	before, _, _ := state(t, b, name)

	c2 := newController(t, b, "task-2", spec(remote2, false))
	assert.NilError(t, c2.Prepare(ctx))

	after, refs, _ := state(t, b, name)
	assert.Equal(t, after.ID, before.ID, "upgrade must keep the plugin")
	assert.Equal(t, after.PluginReference, "example.com/acme/vol:2.0")
	assert.Assert(t, !after.Enabled, "upgrade needs the plugin disabled")
	assert.Equal(t, refs, 2)
	for _, call := range b.Calls() {
		if call.Method == "Disable" {
			assert.Assert(t, call.Config.(*backend.PluginDisableConfig).ForceDisable)
		}
	}
	assert.Equal(t, countCalls(b, "Upgrade"), 1)

	assert.NilError(t, c2.Start(ctx))
	after, _, _ = state(t, b, name)
	assert.Assert(t, after.Enabled)
}

func TestPrepareRefusesForeignPlugin(t *testing.T) {
	for _, owner := range []string{"", "another-service"} {
		t.Run("owner="+owner, func(t *testing.T) {
			b := plugintest.NewBackend()
			ctx := context.Background()
			var opts []mobyplugin.CreateOpt
			if owner != "" {
				opts = append(opts, mobyplugin.WithSwarmService(owner))
			}
			install(t, b, opts...)
			assert.NilError(t, b.Enable(name, &backend.PluginEnableConfig{}))
			calls := len(b.Calls())

			c := newController(t, b, "task-1", spec(remote2, true))
			err := c.Prepare(ctx)
			assert.ErrorIs(t, err, plugin.ErrPluginExists)
			assert.Assert(t, cerrdefs.IsConflict(err))
			assert.Assert(t, !exec.IsTemporary(err))
			assert.Error(t, err, "plugin already exists: vol")

			// Nothing was done to it, not even by a later Start or Remove.
			assert.ErrorIs(t, c.Start(ctx), plugin.ErrPluginExists)
			assert.NilError(t, c.Remove(ctx))
			assert.DeepEqual(t, methods(b)[calls:], []string{"Get", "Get", "Get"})
			p, refs, found := state(t, b, name)
			assert.Assert(t, found && p.Enabled)
			assert.Equal(t, p.PluginReference, "example.com/acme/vol:1.0")
			assert.Equal(t, refs, 0)
		})
	}
}

func TestStartEnablesAndDisables(t *testing.T) {
	b := plugintest.NewBackend()
	ctx := context.Background()

	c := started(t, ctx, b, "task-1", spec(remote, false))
	p, _, _ := state(t, b, name)
	assert.Assert(t, p.Enabled, "expected plugin to be enabled")
	assert.Equal(t, lastCall(b, "Enable").Config.(*backend.PluginEnableConfig).Timeout, 30)

	// Start again: no change, no call that would fail.
	n := countCalls(b, "Enable")
	assert.NilError(t, c.Start(ctx))
	assert.Equal(t, countCalls(b, "Enable"), n)

	c = newController(t, b, "task-2", spec(remote, true))
	assert.NilError(t, c.Prepare(ctx))
	assert.NilError(t, c.Start(ctx))
	p, _, _ = state(t, b, name)
	assert.Assert(t, !p.Enabled, "expected plugin to be disabled")

	c = newController(t, b, "task-3", spec(remote, false))
	assert.NilError(t, c.Prepare(ctx))
	assert.NilError(t, c.Start(ctx))
	p, _, _ = state(t, b, name)
	assert.Assert(t, p.Enabled, "expected plugin to be enabled")
}

func TestWaitCancelled(t *testing.T) {
	b := plugintest.NewBackend()
	ctx := context.Background()
	c := started(t, ctx, b, "task-1", spec(remote, true))

	wctx, cancel := context.WithCancel(ctx)
	done := waitAsync(t, b, c, wctx)
	assertBlocked(t, done)
	cancel()
	assert.ErrorIs(t, result(t, done), context.Canceled)
	assert.NilError(t, b.WaitSubscribers(ctx, 0), "Wait must cancel its subscription")
}

func TestWaitEndsOnOpposingEvent(t *testing.T) {
	for _, disabled := range []bool{false, true} {
		t.Run(fmt.Sprintf("disabled=%v", disabled), func(t *testing.T) {
			b := plugintest.NewBackend()
			ctx := context.Background()
			c := started(t, ctx, b, "task-1", spec(remote, disabled))

			done := waitAsync(t, b, c, ctx)
			if disabled {
				assert.NilError(t, b.Enable(name, &backend.PluginEnableConfig{}))
				err := result(t, done)
				assert.ErrorIs(t, err, plugin.ErrPluginEnabled)
				assert.Error(t, err, "plugin enabled")
			} else {
				assert.NilError(t, b.Disable(name, &backend.PluginDisableConfig{ForceDisable: true}))
				err := result(t, done)
				assert.ErrorIs(t, err, plugin.ErrPluginDisabled)
				assert.Error(t, err, "plugin disabled")
			}

			// Start restores the spec's state; a new Wait is satisfied.
			assert.NilError(t, c.Start(ctx))
			wctx, cancel := context.WithCancel(ctx)
			done = waitAsync(t, b, c, wctx)
			assertBlocked(t, done)
			cancel()
			assert.ErrorIs(t, result(t, done), context.Canceled)
		})
	}
}

// eventBackend hands Wait a channel the test controls, to deliver events
// the real Manager can only produce in a race (a confirming event queued
// before Wait checked the state) or on shutdown (a closed stream).
type eventBackend struct {
	*plugintest.Backend
	events     chan interface{}
	subscribed chan struct{}
}

func newEventBackend(fake *plugintest.Backend) *eventBackend {
	return &eventBackend{Backend: fake, events: make(chan interface{}), subscribed: make(chan struct{})}
}

func (e *eventBackend) SubscribeEvents(int, ...mobyplugin.Event) (<-chan interface{}, func()) {
	close(e.subscribed)
	return e.events, func() {}
}

func TestWaitIgnoresConfirmingEvent(t *testing.T) {
	fake := plugintest.NewBackend()
	b := newEventBackend(fake)
	ctx := context.Background()
	c := started(t, ctx, b, "task-1", spec(remote, false))
	p, _, _ := state(t, fake, name)

	done := make(chan error, 1)
	go func() { done <- c.Wait(ctx) }()
	<-b.subscribed
	// Unbuffered sends: each completes only when Wait receives it, so the
	// second send proves Wait went on after the confirming event.
	b.events <- mobyplugin.EventEnable{Plugin: p}
	b.events <- mobyplugin.EventRemove{Plugin: p}
	err := result(t, done)
	assert.ErrorIs(t, err, plugin.ErrPluginRemoved)
	assert.Error(t, err, "plugin removed")
}

func TestWaitEndsOnRemoval(t *testing.T) {
	b := plugintest.NewBackend()
	ctx := context.Background()
	c := started(t, ctx, b, "task-1", spec(remote, false))

	done := waitAsync(t, b, c, ctx)
	assert.NilError(t, b.Remove(name, &backend.PluginRmConfig{ForceRemove: true}))
	err := result(t, done)
	assert.ErrorIs(t, err, plugin.ErrPluginRemoved)
	assert.Assert(t, cerrdefs.IsNotFound(err))
	assert.Assert(t, strings.Contains(err.Error(), "removed"))
}

func TestWaitMismatchedState(t *testing.T) {
	b := plugintest.NewBackend()
	c := newController(t, b, "task-1", spec(remote, false))
	ctx := context.Background()
	assert.NilError(t, c.Prepare(ctx)) // pulled disabled, Start not run
	err := c.Wait(ctx)
	assert.ErrorIs(t, err, plugin.ErrMismatchedState)
	assert.Error(t, err, "mismatched plugin state")
	assert.NilError(t, b.WaitSubscribers(ctx, 0))
}

func TestRemoveSharedPlugin(t *testing.T) {
	b := plugintest.NewBackend()
	ctx := context.Background()
	c1 := started(t, ctx, b, "task-1", spec(remote, false))
	assert.NilError(t, c1.Shutdown(ctx))

	c2 := started(t, ctx, b, "task-2", spec(remote, false))

	assert.NilError(t, c1.Remove(ctx))
	p, refs, found := state(t, b, name)
	assert.Assert(t, found, "plugin removed unexpectedly")
	assert.Assert(t, p.Enabled)
	assert.Equal(t, refs, 1)

	assert.NilError(t, c2.Shutdown(ctx))
	assert.NilError(t, c2.Remove(ctx))
	_, _, found = state(t, b, name)
	assert.Assert(t, !found, "expected plugin to be removed")
	assert.Equal(t, countCalls(b, "Remove"), 1)
	rm := b.Calls()[len(b.Calls())-1]
	assert.Equal(t, rm.Method, "Remove")
	assert.Assert(t, rm.Config.(*backend.PluginRmConfig).ForceRemove)
}

func TestLifecycleMethodsWithoutEffect(t *testing.T) {
	b := plugintest.NewBackend()
	ctx := context.Background()
	c := newController(t, b, "task-1", spec(remote, false))
	assert.NilError(t, c.Update(ctx, task(t, "task-1", service, spec(remote2, false))))
	assert.NilError(t, c.Shutdown(ctx))
	assert.NilError(t, c.Terminate(ctx))
	assert.Equal(t, len(b.Calls()), 0)
	assert.NilError(t, c.Close())
}

// ---- Bad input ---------------------------------------------------------------

func TestNewControllerRejectsBadInput(t *testing.T) {
	good := task(t, "t", service, spec(remote, false))
	withSpec := func(set func(*api.TaskSpec)) *api.Task {
		tk := *good
		set(&tk.Spec)
		return &tk
	}
	generic := func(kind string, payload *gogotypes.Any) *api.Task {
		return withSpec(func(s *api.TaskSpec) {
			s.Runtime = &api.TaskSpec_Generic{Generic: &api.GenericRuntimeSpec{Kind: kind, Payload: payload}}
		})
	}
	cases := map[string]*api.Task{
		"nil task":   nil,
		"no runtime": withSpec(func(s *api.TaskSpec) { s.Runtime = nil }),
		"container runtime": withSpec(func(s *api.TaskSpec) {
			s.Runtime = &api.TaskSpec_Container{Container: &api.ContainerSpec{Image: "busybox"}}
		}),
		"attachment runtime": withSpec(func(s *api.TaskSpec) { s.Runtime = &api.TaskSpec_Attachment{Attachment: &api.NetworkAttachmentSpec{}} }),
		"nil generic":        withSpec(func(s *api.TaskSpec) { s.Runtime = &api.TaskSpec_Generic{} }),
		"other kind":         generic("csi", good.Spec.GetGeneric().Payload),
		"no payload":         generic("plugin", nil),
		"garbage payload":    generic("plugin", &gogotypes.Any{Value: []byte{0xff, 0xff, 0xff}}),
		"empty remote":       task(t, "t", service, runtime.PluginSpec{Name: name}),
		"bad remote":         task(t, "t", service, runtime.PluginSpec{Remote: "UPPER/Case::x"}),
	}
	for desc, tk := range cases {
		t.Run(desc, func(t *testing.T) {
			c, err := plugin.NewController(plugintest.NewBackend(), tk)
			assert.Assert(t, c == nil)
			assert.Assert(t, cerrdefs.IsInvalidArgument(err), "%v", err)
			assert.ErrorIs(t, err, plugin.ErrInvalidSpec)
		})
	}
	t.Run("bad remote names it", func(t *testing.T) {
		_, err := plugin.NewController(plugintest.NewBackend(), cases["bad remote"])
		assert.ErrorContains(t, err, `error parsing remote reference "UPPER/Case::x"`)
	})
	t.Run("bad name is refused at Prepare", func(t *testing.T) {
		c, err := plugin.NewController(plugintest.NewBackend(), task(t, "t", service, runtime.PluginSpec{Name: "no spaces allowed", Remote: remote}))
		assert.NilError(t, err)
		err = c.Prepare(context.Background())
		assert.Assert(t, cerrdefs.IsInvalidArgument(err), "%v", err)
		assert.Assert(t, !exec.IsTemporary(err))
	})
	t.Run("nil backend", func(t *testing.T) {
		var typedNil *plugintest.Backend
		for _, b := range []plugin.Backend{nil, typedNil} {
			c, err := plugin.NewController(b, good)
			assert.Assert(t, c == nil)
			assert.Assert(t, cerrdefs.IsInvalidArgument(err))
			assert.Error(t, err, "plugin controller needs a backend, got nil", "the spec is fine; the backend is missing")
		}
	})
}

// FuzzNewController decodes arbitrary payloads: never a panic, every error
// classified invalid argument.
func FuzzNewController(f *testing.F) {
	for _, s := range []runtime.PluginSpec{
		spec(remote, false),
		{Remote: "vol@sha256:" + strings.Repeat("a", 64), Env: []string{"A=B"}, Privileges: []*runtime.PluginPrivilege{{Name: "network", Value: []string{"host"}}}},
	} {
		f.Add(pluginspec.Encode(&s))
	}
	f.Add([]byte{0x0a, 0xff})
	f.Fuzz(func(t *testing.T, payload []byte) {
		tk := &api.Task{ID: "t", ServiceID: service, Spec: api.TaskSpec{Runtime: &api.TaskSpec_Generic{Generic: &api.GenericRuntimeSpec{
			Kind: "plugin", Payload: &gogotypes.Any{Value: payload},
		}}}}
		c, err := plugin.NewController(plugintest.NewBackend(), tk)
		if err != nil {
			if c != nil || !cerrdefs.IsInvalidArgument(err) {
				t.Fatalf("unclassified error %v (controller %v)", err, c)
			}
		}
	})
}

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

// ---- Errors swarmkit can act on ----------------------------------------------------

func TestErrorsAreClassified(t *testing.T) {
	refused := &netOpError{syscall.ECONNREFUSED}
	cases := []struct {
		desc      string
		err       error
		temporary bool
	}{
		{"unavailable", fmt.Errorf("registry: %w", cerrdefs.ErrUnavailable), true},
		{"deadline", dockererrdefs.Deadline(errors.New("registry timed out")), true},
		{"aborted", cerrdefs.ErrAborted, true},
		{"backend temporary", exec.MakeTemporary(errors.New("try later")), true},
		{"connection refused", refused, true},
		{"flattened connection refused", errors.New(`Get "http://127.0.0.1:5000/v2/": dial tcp 127.0.0.1:5000: connect: connection refused`), true},
		{"context deadline", context.DeadlineExceeded, true},
		{"not found in registry", fmt.Errorf("pull: %w", cerrdefs.ErrNotFound), false},
		{"privileges", errors.New("incorrect privileges"), false},
		{"invalid", cerrdefs.ErrInvalidArgument, false},
		{"unknown", errors.New("boom"), false},
	}
	for _, tc := range cases {
		t.Run(tc.desc, func(t *testing.T) {
			b := plugintest.NewBackend()
			b.FailNext("Pull", tc.err)
			c := newController(t, b, "task-1", spec(remote, false))
			err := c.Prepare(context.Background())
			assert.ErrorIs(t, err, tc.err, "the cause stays reachable")
			assert.Equal(t, exec.IsTemporary(err), tc.temporary, "%v", err)
			assert.Assert(t, strings.Contains(err.Error(), tc.err.Error()))
		})
	}
	t.Run("errors.As reaches the cause", func(t *testing.T) {
		b := plugintest.NewBackend()
		b.FailNext("Pull", refused)
		c := newController(t, b, "task-1", spec(remote, false))
		var target *netOpError
		assert.Assert(t, errors.As(c.Prepare(context.Background()), &target))
	})
}

type netOpError struct{ errno syscall.Errno }

func (e *netOpError) Error() string { return "dial tcp 127.0.0.1:5000: " + e.errno.Error() }
func (e *netOpError) Unwrap() error { return e.errno }

// TestExecDoRetriesTemporaryPull drives the controller with swarmkit's own
// state machine: a transient failure retries in place, not REJECTED.
func TestExecDoRetriesTemporaryPull(t *testing.T) {
	b := plugintest.NewBackend()
	b.FailNext("Pull", cerrdefs.ErrUnavailable)
	tk := task(t, "task-1", service, spec(remote, false))
	tk.DesiredState = api.TaskStateRunning
	tk.Status.State = api.TaskStateAccepted
	c, err := plugin.NewController(b, tk)
	assert.NilError(t, err)
	ctx := context.Background()

	st, err := exec.Do(ctx, tk, c) // ACCEPTED -> PREPARING
	assert.NilError(t, err)
	tk.Status = *st
	st, err = exec.Do(ctx, tk, c) // Prepare fails temporarily
	assert.ErrorIs(t, err, exec.ErrTaskRetry)
	assert.Equal(t, st.State, api.TaskStatePreparing)
	tk.Status = *st
	st, err = exec.Do(ctx, tk, c) // retried: READY
	assert.NilError(t, err)
	assert.Equal(t, st.State, api.TaskStateReady)

	b2 := plugintest.NewBackend()
	b2.FailNext("Pull", errors.New("incorrect privileges"))
	tk.Status.State = api.TaskStatePreparing
	c2, err := plugin.NewController(b2, tk)
	assert.NilError(t, err)
	st, _ = exec.Do(ctx, tk, c2)
	assert.Equal(t, st.State, api.TaskStateRejected)
}

// ---- Env, digests, failed upgrades -------------------------------------------------

// noSetter hides plugintest's Set, like a Backend without it.
type noSetter struct{ b *plugintest.Backend }

func (n noSetter) Disable(a string, c *backend.PluginDisableConfig) error { return n.b.Disable(a, c) }
func (n noSetter) Enable(a string, c *backend.PluginEnableConfig) error   { return n.b.Enable(a, c) }
func (n noSetter) Remove(a string, c *backend.PluginRmConfig) error       { return n.b.Remove(a, c) }
func (n noSetter) Pull(ctx context.Context, r reference.Named, a string, h http.Header, au *registry.AuthConfig, p types.PluginPrivileges, w io.Writer, o ...mobyplugin.CreateOpt) error {
	return n.b.Pull(ctx, r, a, h, au, p, w, o...)
}
func (n noSetter) Upgrade(ctx context.Context, r reference.Named, a string, h http.Header, au *registry.AuthConfig, p types.PluginPrivileges, w io.Writer) error {
	return n.b.Upgrade(ctx, r, a, h, au, p, w)
}
func (n noSetter) Get(a string) (*v2.Plugin, error) { return n.b.Get(a) }
func (n noSetter) SubscribeEvents(buf int, ev ...mobyplugin.Event) (<-chan interface{}, func()) {
	return n.b.SubscribeEvents(buf, ev...)
}

func TestEnvUpdateReachesExistingPlugin(t *testing.T) {
	ctx := context.Background()
	b := plugintest.NewBackend()
	b.AddRemote(remote2, plugintest.Remote{Env: []string{"LEVEL=info"}})
	b.AddRemote(remote, plugintest.Remote{Env: []string{"LEVEL=info"}})
	s := spec(remote, false)
	started(t, ctx, b, "task-1", s)

	s2 := spec(remote2, false)
	s2.Env = []string{"LEVEL=debug"}
	c2 := newController(t, b, "task-2", s2)
	assert.NilError(t, c2.Prepare(ctx))
	p, _, _ := state(t, b, name)
	assert.Assert(t, is.Contains(p.Settings.Env, "LEVEL=debug"))
	assert.Equal(t, countCalls(b, "Set"), 1)

	// Without Set the update still succeeds, as upstream.
	b2 := plugintest.NewBackend()
	b2.AddRemote(remote, plugintest.Remote{Env: []string{"LEVEL=info"}})
	b2.AddRemote(remote2, plugintest.Remote{Env: []string{"LEVEL=info"}})
	assert.NilError(t, newController(t, noSetter{b2}, "task-1", s).Prepare(ctx))
	assert.NilError(t, newController(t, noSetter{b2}, "task-2", s2).Prepare(ctx))
	assert.Equal(t, countCalls(b2, "Set"), 0)
}

func TestPinnedDigestAlreadyInstalledIsLeftRunning(t *testing.T) {
	ctx := context.Background()
	b := plugintest.NewBackend()
	pinned := "example.com/acme/vol@sha256:" + strings.Repeat("ab", 32)
	started(t, ctx, b, "task-1", spec(pinned, false))
	calls := len(b.Calls())

	started(t, ctx, b, "task-2", spec(pinned, false))
	for _, m := range methods(b)[calls:] {
		assert.Assert(t, m == "Get" || m == "ProbePlugin", "unexpected %s", m)
	}
	p, _, _ := state(t, b, name)
	assert.Assert(t, p.Enabled)
}

func TestFailedUpgradeReenables(t *testing.T) {
	ctx := context.Background()
	b := plugintest.NewBackend()
	started(t, ctx, b, "task-1", spec(remote, false))

	b.FailNext("Upgrade", fmt.Errorf("pull: %w", cerrdefs.ErrNotFound))
	c2 := newController(t, b, "task-2", spec(remote2, false))
	err := c2.Prepare(ctx)
	assert.Assert(t, cerrdefs.IsNotFound(err))
	assert.Assert(t, !exec.IsTemporary(err))
	p, _, _ := state(t, b, name)
	assert.Assert(t, p.Enabled, "the plugin that was enabled before Prepare runs again")
	assert.Equal(t, p.PluginReference, "example.com/acme/vol:1.0")
}

// ---- Options, logging, credentials ----------------------------------------------

func TestOptions(t *testing.T) {
	ctx := context.Background()
	b := plugintest.NewBackend()
	var progress bytes.Buffer
	var asked []string
	auth := func(_ context.Context, ref reference.Named) (*registry.AuthConfig, error) {
		asked = append(asked, ref.String())
		return &registry.AuthConfig{Username: "u", Password: "p", ServerAddress: reference.Domain(ref)}, nil
	}
	c := newController(t, b, "task-1", spec(remote, false),
		plugin.WithRegistryAuth(auth), plugin.WithEnableTimeout(1500*time.Millisecond), plugin.WithProgress(&progress))
	assert.NilError(t, c.Prepare(ctx))
	assert.NilError(t, c.Start(ctx))
	assert.DeepEqual(t, asked, []string{"example.com/acme/vol:1.0"})
	for _, call := range b.Calls() {
		switch call.Method {
		case "Pull":
			assert.Equal(t, call.Auth.Username, "u")
		case "Enable":
			assert.Equal(t, call.Config.(*backend.PluginEnableConfig).Timeout, 2)
		}
	}

	t.Run("auth error", func(t *testing.T) {
		for _, temporary := range []bool{false, true} {
			cause := errors.New("vault sealed")
			if temporary {
				cause = fmt.Errorf("vault: %w", cerrdefs.ErrUnavailable)
			}
			b := plugintest.NewBackend()
			c := newController(t, b, "task-1", spec(remote, false), plugin.WithRegistryAuth(func(context.Context, reference.Named) (*registry.AuthConfig, error) {
				return nil, cause
			}))
			err := c.Prepare(ctx)
			assert.ErrorIs(t, err, cause)
			assert.ErrorContains(t, err, "registry credentials for example.com")
			assert.Equal(t, exec.IsTemporary(err), temporary)
			assert.Equal(t, countCalls(b, "Pull"), 0)
		}
	})
}

// logCapture records every log line at every level.
type logCapture struct {
	mu    sync.Mutex
	lines []string
}

func (l *logCapture) Levels() []logrus.Level { return logrus.AllLevels }
func (l *logCapture) Fire(e *logrus.Entry) error {
	s, err := e.String()
	if err != nil {
		return err
	}
	l.mu.Lock()
	l.lines = append(l.lines, s)
	l.mu.Unlock()
	return nil
}

func captureLogs() (context.Context, *logCapture) {
	lg := logrus.New()
	lg.SetOutput(io.Discard)
	lg.SetLevel(logrus.TraceLevel)
	capture := &logCapture{}
	lg.AddHook(capture)
	return log.WithLogger(context.Background(), logrus.NewEntry(lg)), capture
}

func TestLogging(t *testing.T) {
	ctx, logs := captureLogs()
	b := plugintest.NewBackend()
	started(t, ctx, b, "task-1", spec(remote, false))
	id := b.Calls()[len(b.Calls())-1].Name

	var infos int
	for _, line := range logs.lines {
		assert.Assert(t, strings.Contains(line, "task=task-1"), line)
		assert.Assert(t, strings.Contains(line, "service=svc-1"), line)
		assert.Assert(t, strings.Contains(line, "plugin=vol"), line)
		if strings.Contains(line, "level=info") {
			infos++
			assert.Assert(t, strings.Contains(line, "plugin.id="+id), line)
		}
		if strings.Contains(line, `msg="plugin pulled"`) {
			assert.Assert(t, strings.Contains(line, `remote="`+remote+`"`), line)
		}
	}
	assert.Equal(t, infos, 2, "pulled and enabled: %v", logs.lines)
}

func TestCredentialsNeverLoggedOrReturned(t *testing.T) {
	const secret = "s3cr3t-Pa55w0rd-7f1e"
	ctx, logs := captureLogs()
	b := plugintest.NewBackend()
	auth := plugin.WithRegistryAuth(func(context.Context, reference.Named) (*registry.AuthConfig, error) {
		return &registry.AuthConfig{Username: "bob", Password: secret, IdentityToken: secret + "-id", RegistryToken: secret + "-reg", Auth: secret + "-auth"}, nil
	})
	var errs []error
	record := func(err error) {
		if err != nil {
			errs = append(errs, err)
		}
	}
	c1 := newController(t, b, "task-1", spec(remote, false), auth)
	record(c1.Prepare(ctx))
	record(c1.Start(ctx))
	b.FailNext("Upgrade", errors.New("unauthorized: authentication required"))
	c2 := newController(t, b, "task-2", spec(remote2, false), auth)
	record(c2.Prepare(ctx))
	record(c2.Prepare(ctx))
	record(c2.Start(ctx))
	wctx, cancel := context.WithCancel(ctx)
	done := waitAsync(t, b, c2, wctx)
	cancel()
	record(<-done)
	record(c1.Remove(ctx))
	record(c2.Remove(ctx))
	record(c2.Close())
	assert.Assert(t, len(errs) >= 2)
	assert.Assert(t, len(logs.lines) > 5)
	for _, line := range logs.lines {
		assert.Assert(t, !strings.Contains(line, secret), line)
	}
	for _, err := range errs {
		assert.Assert(t, !strings.Contains(fmt.Sprintf("%+v", err), secret), err)
	}
}

// ---- Examples -----------------------------------------------------------------

// An executor hands plugin tasks to a Controller; here the Backend is the
// in-memory fake from plugintest instead of the daemon's *plugin.Manager.
func ExampleNew() {
	b := plugintest.NewBackend()
	t := plugintest.NewTask("task-1", "svc-1", runtime.PluginSpec{Name: "vol", Remote: "example.com/acme/vol:1.0", Env: []string{"DEBUG=1"}})

	c, err := plugin.New(b, t, plugin.WithEnableTimeout(10*time.Second))
	if err != nil {
		fmt.Println(err)
		return
	}
	ctx := context.Background()
	_ = c.Prepare(ctx) // pulls the plugin, owned by svc-1
	_ = c.Start(ctx)   // enables it
	p, refs, _ := b.Plugin("vol")
	fmt.Println(p.Name, p.Enabled, refs)

	_ = c.Remove(ctx) // the last task's Remove removes the plugin
	_ = c.Close()
	_, _, err = b.Plugin("vol")
	fmt.Println(cerrdefs.IsNotFound(err))
	// Output:
	// vol:latest true 1
	// true
}

// Errors keep upstream's words and are classified, so callers can tell a
// conflict from a retryable failure.
func ExampleErrPluginExists() {
	b := plugintest.NewBackend()
	ref, _ := reference.ParseNormalizedNamed("vol")
	// Someone installed "vol" by hand.
	_ = b.Pull(context.Background(), ref, "vol", nil, &registry.AuthConfig{}, nil, io.Discard)

	t := plugintest.NewTask("task-1", "svc-1", runtime.PluginSpec{Remote: "vol"})
	c, _ := plugin.NewController(b, t)
	err := c.Prepare(context.Background())
	fmt.Println(err)
	fmt.Println(errors.Is(err, plugin.ErrPluginExists), cerrdefs.IsConflict(err), exec.IsTemporary(err))
	// Output:
	// plugin already exists: docker.io/library/vol
	// true true false
}

// ---- Backends that misbehave, failures mid-step --------------------------------------

// nonsenseBackend answers Get and SubscribeEvents with results no real
// backend gives.
type nonsenseBackend struct {
	*plugintest.Backend
	get       func(name string) (*v2.Plugin, error)
	nilEvents bool
}

func (n *nonsenseBackend) Get(name string) (*v2.Plugin, error) {
	if n.get != nil {
		return n.get(name)
	}
	return n.Backend.Get(name)
}

func (n *nonsenseBackend) SubscribeEvents(buf int, ev ...mobyplugin.Event) (<-chan interface{}, func()) {
	if n.nilEvents {
		return nil, nil
	}
	return n.Backend.SubscribeEvents(buf, ev...)
}

func TestNonsenseFromBackendIsAnInternalError(t *testing.T) {
	ctx := context.Background()
	cases := map[string]func(b *nonsenseBackend) error{
		"nil plugin and nil error in Prepare": func(b *nonsenseBackend) error {
			b.get = func(string) (*v2.Plugin, error) { return nil, nil }
			return newController(t, b, "task-1", spec(remote, false)).Prepare(ctx)
		},
		"nil plugin and nil error right after a pull": func(b *nonsenseBackend) error {
			gets := 0
			b.get = func(name string) (*v2.Plugin, error) {
				if gets++; gets == 1 {
					return b.Backend.Get(name)
				}
				return nil, nil
			}
			return newController(t, b, "task-1", spec(remote, false)).Prepare(ctx)
		},
		"nil plugin and nil error in Remove": func(b *nonsenseBackend) error {
			b.get = func(string) (*v2.Plugin, error) { return nil, nil }
			return newController(t, b, "task-1", spec(remote, false)).Remove(ctx)
		},
		"empty plugin ID": func(b *nonsenseBackend) error {
			b.get = func(string) (*v2.Plugin, error) { return &v2.Plugin{}, nil }
			return newController(t, b, "task-1", spec(remote, false)).Start(ctx)
		},
		"nil event channel": func(b *nonsenseBackend) error {
			b.nilEvents = true
			c := started(t, ctx, b, "task-1", spec(remote, false))
			return c.Wait(ctx)
		},
	}
	for desc, run := range cases {
		t.Run(desc, func(t *testing.T) {
			err := run(&nonsenseBackend{Backend: plugintest.NewBackend()})
			assert.Assert(t, cerrdefs.IsInternal(err), "%v", err)
		})
	}
}

// A Pull that succeeds but leaves nothing to find says so, and is retried.
func TestPluginMissingAfterSuccessfulPull(t *testing.T) {
	b := &nonsenseBackend{Backend: plugintest.NewBackend()}
	b.get = func(name string) (*v2.Plugin, error) {
		return nil, fmt.Errorf("plugin %q not found: %w", name, cerrdefs.ErrNotFound)
	}
	err := newController(t, b, "task-1", spec(remote, false)).Prepare(context.Background())
	assert.Assert(t, exec.IsTemporary(err), "%v", err)
	assert.ErrorContains(t, err, "plugin vol not found right after a successful pull")
	assert.Assert(t, cerrdefs.IsNotFound(err), "%v", err)
}

func TestFailuresMidStep(t *testing.T) {
	ctx := context.Background()
	prepared := func(t *testing.T, disabled bool) (*plugintest.Backend, *plugin.Controller) {
		b := plugintest.NewBackend()
		c := newController(t, b, "task-1", spec(remote, disabled))
		assert.NilError(t, c.Prepare(ctx))
		return b, c
	}
	t.Run("enable", func(t *testing.T) {
		b, c := prepared(t, false)
		b.FailNext("Enable", fmt.Errorf("activate: %w", cerrdefs.ErrUnavailable))
		err := c.Start(ctx)
		assert.Assert(t, exec.IsTemporary(err), "%v", err)
		assert.ErrorContains(t, err, "error enabling plugin vol")
		assert.NilError(t, c.Start(ctx))
	})
	t.Run("disable", func(t *testing.T) {
		b, c := prepared(t, true)
		assert.NilError(t, b.Enable(name, &backend.PluginEnableConfig{}))
		b.FailNext("Disable", errors.New("shim gone"))
		err := c.Start(ctx)
		assert.ErrorContains(t, err, "shim gone")
		assert.Assert(t, !exec.IsTemporary(err))
	})
	t.Run("lookup", func(t *testing.T) {
		b := plugintest.NewBackend()
		b.FailNext("Get", cerrdefs.ErrUnavailable)
		err := newController(t, b, "task-1", spec(remote, false)).Prepare(ctx)
		assert.Assert(t, exec.IsTemporary(err))
	})
	t.Run("set env", func(t *testing.T) {
		b, c := prepared(t, false)
		assert.NilError(t, c.Start(ctx))
		b.AddRemote(remote2, plugintest.Remote{Env: []string{"LEVEL=info"}})
		b.FailNext("Set", fmt.Errorf("disk full: %w", cerrdefs.ErrInvalidArgument))
		s := spec(remote2, false)
		s.Env = []string{"LEVEL=debug"}
		err := newController(t, b, "task-2", s).Prepare(ctx)
		assert.Assert(t, cerrdefs.IsInvalidArgument(err), "%v", err)
		assert.ErrorContains(t, err, "error setting env of plugin vol")
		p, _, _ := state(t, b, name)
		assert.Assert(t, p.Enabled, "re-enabled after the failed set")
	})
	t.Run("re-enable after failed upgrade", func(t *testing.T) {
		b, c := prepared(t, false)
		assert.NilError(t, c.Start(ctx))
		b.FailNext("Upgrade", errors.New("manifest unknown"))
		b.FailNext("Enable", errors.New("activation timed out"))
		err := newController(t, b, "task-2", spec(remote2, false)).Prepare(ctx)
		assert.ErrorContains(t, err, "manifest unknown", "the upgrade's error, not the re-enable's")
	})
	t.Run("remove", func(t *testing.T) {
		b, c := prepared(t, false)
		b.FailNext("Remove", errors.New("device busy"))
		assert.ErrorContains(t, c.Remove(ctx), "device busy")
		_, refs, found := state(t, b, name)
		assert.Assert(t, found)
		assert.Equal(t, refs, 0)
		assert.NilError(t, c.Remove(ctx), "a retried Remove removes without releasing twice")
		_, _, found = state(t, b, name)
		assert.Assert(t, !found)
	})
	t.Run("plugin replaced by someone else's", func(t *testing.T) {
		b, c := prepared(t, false)
		assert.NilError(t, b.Remove(name, &backend.PluginRmConfig{ForceRemove: true}))
		install(t, b)
		assert.NilError(t, c.Remove(ctx))
		_, _, found := state(t, b, name)
		assert.Assert(t, found, "a person's plugin of the same name stays")
	})
}

func TestPinnedDigestEnvChange(t *testing.T) {
	ctx := context.Background()
	b := plugintest.NewBackend()
	pinned := "example.com/acme/vol@sha256:" + strings.Repeat("cd", 32)
	b.AddRemote(pinned, plugintest.Remote{Env: []string{"LEVEL=info"}})
	started(t, ctx, b, "task-1", spec(pinned, false))

	s := spec(pinned, false)
	s.Env = []string{"LEVEL=debug"}
	c2 := newController(t, b, "task-2", s)
	assert.NilError(t, c2.Prepare(ctx))
	assert.Equal(t, countCalls(b, "Upgrade"), 0, "same digest: no upgrade")
	p, _, _ := state(t, b, name)
	assert.Assert(t, is.Contains(p.Settings.Env, "LEVEL=debug"))
	assert.NilError(t, c2.Start(ctx))
}

// swarmkit's agent hands each controller a context whose logger (its own
// log package) carries the task's fields; they reach our lines.
func TestLoggingKeepsAgentFields(t *testing.T) {
	lg := logrus.New()
	lg.SetOutput(io.Discard)
	lg.SetLevel(logrus.DebugLevel)
	capture := &logCapture{}
	lg.AddHook(capture)
	ctx := swarmlog.WithLogger(context.Background(), logrus.NewEntry(lg).WithFields(logrus.Fields{"task.id": "task-1", "module": "node/agent/taskmanager"}))
	c := newController(t, plugintest.NewBackend(), "task-1", spec(remote, false))
	assert.NilError(t, c.Prepare(ctx))
	assert.Assert(t, len(capture.lines) > 0)
	for _, line := range capture.lines {
		assert.Assert(t, strings.Contains(line, "module=node/agent/taskmanager") && strings.Contains(line, "plugin=vol"), line)
		// The agent's task.id is not repeated as task; the service, which
		// this context does not name, is.
		assert.Assert(t, !strings.Contains(line, " task=") && strings.Contains(line, " service="), line)
	}
}

func TestWithLogger(t *testing.T) {
	lg := logrus.New()
	lg.SetOutput(io.Discard)
	lg.SetLevel(logrus.DebugLevel)
	capture := &logCapture{}
	lg.AddHook(capture)
	b := plugintest.NewBackend()
	c := newController(t, b, "task-1", spec(remote, false), plugin.WithLogger(logrus.NewEntry(lg).WithField("node", "n1")))
	assert.NilError(t, c.Prepare(context.Background()))
	assert.Assert(t, len(capture.lines) > 0)
	for _, line := range capture.lines {
		assert.Assert(t, strings.Contains(line, "node=n1") && strings.Contains(line, "task=task-1"), line)
	}
}

// ---- Fuzzing a whole task ----------------------------------------------------------

// classified reports whether a Controller's error carries something a
// caller can act on: an errdefs class, swarmkit's temporary mark, a context
// error or swarmkit's closed-controller error.
func classified(err error) bool {
	if exec.IsTemporary(err) || errors.Is(err, context.Canceled) || errors.Is(err, exec.ErrControllerClosed) {
		return true
	}
	for _, is := range []func(error) bool{
		cerrdefs.IsUnknown, cerrdefs.IsInvalidArgument, cerrdefs.IsNotFound, cerrdefs.IsConflict,
		cerrdefs.IsFailedPrecondition, cerrdefs.IsInternal, cerrdefs.IsUnavailable, cerrdefs.IsAlreadyExists,
		cerrdefs.IsPermissionDenied, cerrdefs.IsDeadlineExceeded, cerrdefs.IsAborted,
	} {
		if is(err) {
			return true
		}
	}
	return false
}

// FuzzLifecycle runs Prepare, Start, Wait and Remove with fuzzed spec fields
// and an injected backend failure: never a panic, every error classified,
// the reference count never negative and zero after Remove.
func FuzzLifecycle(f *testing.F) {
	f.Add("vol", "example.com/acme/vol:1.0", false, "A=B", "", uint8(0), false)
	f.Add("", "vol", true, "", "network", uint8(1), true)
	f.Add("vol", "example.com/acme/vol@sha256:"+strings.Repeat("ab", 32), false, "A=B,C", "", uint8(17), true)
	f.Add("x", "localhost:5000/x:y", true, "=", "host", uint8(42), false)
	failures := []string{"", "Get", "Pull", "Upgrade", "Enable", "Disable", "Remove", "Set"}
	causes := []error{
		errors.New("boom"),
		cerrdefs.ErrUnavailable,
		cerrdefs.ErrNotFound,
		syscall.ECONNREFUSED,
	}
	f.Fuzz(func(t *testing.T, pname, premote string, disabled bool, env, priv string, fail uint8, preinstall bool) {
		ctx := context.Background()
		b := plugintest.NewBackend()
		s := runtime.PluginSpec{Name: pname, Remote: premote, Disabled: disabled}
		if env != "" {
			s.Env = strings.Split(env, ",")
		}
		if priv != "" {
			s.Privileges = []*runtime.PluginPrivilege{{Name: priv, Value: []string{"v"}}}
			if _, err := reference.ParseNormalizedNamed(premote); err == nil && fail%2 == 0 {
				b.AddRemote(premote, plugintest.Remote{Privileges: types.PluginPrivileges{{Name: priv, Value: []string{"v"}}}})
			}
		}
		c, err := plugin.New(b, task(t, "task-1", service, s))
		if err != nil {
			if !cerrdefs.IsInvalidArgument(err) {
				t.Fatalf("NewController: unclassified %v", err)
			}
			return
		}
		check := func(step string, err error) {
			t.Helper()
			if err != nil && !classified(err) {
				t.Fatalf("%s: unclassified error %v", step, err)
			}
			if pl, gerr := b.Get(s.Name); gerr == nil && pl.GetRefCount() < 0 {
				t.Fatalf("%s: reference count %d", step, pl.GetRefCount())
			}
		}
		if preinstall {
			first, err := plugin.New(b, task(t, "task-0", service, s))
			assert.NilError(t, err)
			check("first Prepare", first.Prepare(ctx))
			check("first Start", first.Start(ctx))
			check("first Remove", first.Remove(ctx))
		}
		if m := failures[int(fail)%len(failures)]; m != "" {
			b.FailNext(m, causes[int(fail/8)%len(causes)])
		}
		var perr error
		for attempt := 0; attempt < 3; attempt++ {
			if perr = c.Prepare(ctx); !exec.IsTemporary(perr) {
				break
			}
		}
		check("Prepare", perr)
		check("Start", c.Start(ctx))
		cancelled, cancel := context.WithCancel(ctx)
		cancel()
		check("Wait", c.Wait(cancelled))
		rerr := c.Remove(ctx)
		if rerr != nil {
			rerr = c.Remove(ctx)
		}
		check("Remove", rerr)
		check("Close", c.Close())
		if rerr == nil {
			if pl, err := b.Get(s.Name); err == nil && pl.GetRefCount() != 0 {
				t.Fatalf("reference count %d after the last Remove", pl.GetRefCount())
			}
		}
	})
}

func TestWaitOnPluginRemovedBeforeWait(t *testing.T) {
	for _, disabled := range []bool{false, true} {
		b := plugintest.NewBackend()
		ctx := context.Background()
		c := started(t, ctx, b, "task-1", spec(remote, disabled))
		assert.NilError(t, b.Remove(name, &backend.PluginRmConfig{ForceRemove: true}))
		err := c.Wait(ctx) // ctx never ends: it must not wait on a plugin that is gone
		assert.ErrorIs(t, err, plugin.ErrPluginRemoved)
	}
}

// ---- Steps cut short by their context ------------------------------------------------

// cuttingBackend is the fake, except that the next call of the method armed
// with cut ends the step's context, as swarmkit's agent does when it raises
// a READY task to RUNNING, or shuts a task down, while a step is in flight
// (agent/task.go), and then fails as the Manager would: Pull and Upgrade,
// which take the context, fail with its error wrapped the way moby's fetch
// wraps it; Enable and Remove, which take none, with an unclassified error
// of their own.
type cuttingBackend struct {
	*plugintest.Backend
	mu     sync.Mutex
	method string
	cancel context.CancelFunc
}

// cut arms method: its next call cancels the step's context with cancel.
func (b *cuttingBackend) cut(method string, cancel context.CancelFunc) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.method, b.cancel = method, cancel
}

// cutting reports whether this call of method is the armed one, and if so
// ends the step's context.
func (b *cuttingBackend) cutting(method string) bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.method != method {
		return false
	}
	b.cancel()
	b.method, b.cancel = "", nil
	return true
}

func (b *cuttingBackend) Pull(ctx context.Context, ref reference.Named, n string, h http.Header, a *registry.AuthConfig, p types.PluginPrivileges, w io.Writer, opts ...mobyplugin.CreateOpt) error {
	if b.cutting("Pull") {
		<-ctx.Done()
		return fmt.Errorf("error resolving plugin reference: %w", ctx.Err())
	}
	return b.Backend.Pull(ctx, ref, n, h, a, p, w, opts...)
}

func (b *cuttingBackend) Upgrade(ctx context.Context, ref reference.Named, n string, h http.Header, a *registry.AuthConfig, p types.PluginPrivileges, w io.Writer) error {
	if b.cutting("Upgrade") {
		<-ctx.Done()
		return fmt.Errorf("error resolving plugin reference: %w", ctx.Err())
	}
	return b.Backend.Upgrade(ctx, ref, n, h, a, p, w)
}

func (b *cuttingBackend) Enable(n string, config *backend.PluginEnableConfig) error {
	if b.cutting("Enable") {
		return errors.New("plugin did not activate: interrupted")
	}
	return b.Backend.Enable(n, config)
}

func (b *cuttingBackend) Remove(n string, config *backend.PluginRmConfig) error {
	if b.cutting("Remove") {
		return errors.New("plugin did not stop: interrupted")
	}
	return b.Backend.Remove(n, config)
}

// cause is github.com/pkg/errors.Cause, with which exec.Do decides that an
// error is its context's: it follows Cause methods only, not Unwrap.
func cause(err error) error {
	for {
		c, ok := err.(interface{ Cause() error })
		if !ok {
			return err
		}
		err = c.Cause()
	}
}

// TestStepCutShortByItsContextIsRetried: whatever a Backend wraps around
// the context's error, or returns instead of it, a step whose context ended
// tells exec.Do to retry it, not to reject or fail the task.
func TestStepCutShortByItsContextIsRetried(t *testing.T) {
	ctx := context.Background()
	// cutStep runs one exec.Do step of tk whose context the Backend's next
	// call of method ends, and checks that exec.Do retries it: the task
	// stays in its state, neither REJECTED nor FAILED.
	cutStep := func(t *testing.T, b *cuttingBackend, method string, tk *api.Task, c exec.Controller) {
		t.Helper()
		stepCtx, cancel := context.WithCancel(ctx)
		defer cancel()
		b.cut(method, cancel)
		st, err := exec.Do(stepCtx, tk, c)
		assert.ErrorIs(t, err, exec.ErrTaskRetry)
		assert.Equal(t, st.State, tk.Status.State, "%s", st.Err)
	}
	// resume runs the step again with a context that does not end.
	resume := func(t *testing.T, tk *api.Task, c exec.Controller, want api.TaskState) {
		t.Helper()
		st, err := exec.Do(ctx, tk, c)
		assert.NilError(t, err)
		assert.Equal(t, st.State, want)
	}
	newTask := func(t *testing.T, b plugin.Backend, id string, s runtime.PluginSpec, state api.TaskState) (*api.Task, *plugin.Controller) {
		tk := task(t, id, service, s)
		tk.DesiredState = api.TaskStateRunning
		tk.Status.State = state
		c, err := plugin.NewController(b, tk)
		assert.NilError(t, err)
		return tk, c
	}

	t.Run("Prepare pulling", func(t *testing.T) {
		b := &cuttingBackend{Backend: plugintest.NewBackend()}
		tk, c := newTask(t, b, "task-1", spec(remote, false), api.TaskStatePreparing)
		cutStep(t, b, "Pull", tk, c)
		resume(t, tk, c, api.TaskStateReady)
	})
	t.Run("Prepare upgrading", func(t *testing.T) {
		b := &cuttingBackend{Backend: plugintest.NewBackend()}
		started(t, ctx, b, "task-1", spec(remote, false))
		tk, c := newTask(t, b, "task-2", spec(remote2, false), api.TaskStatePreparing)
		cutStep(t, b, "Upgrade", tk, c)
		p, _, _ := state(t, b.Backend, name)
		assert.Assert(t, p.Enabled, "re-enabled after the cut upgrade")
		assert.Equal(t, p.PluginReference, remote)
		resume(t, tk, c, api.TaskStateReady)
		p, _, _ = state(t, b.Backend, name)
		assert.Equal(t, p.PluginReference, remote2)
	})
	t.Run("Start", func(t *testing.T) {
		b := &cuttingBackend{Backend: plugintest.NewBackend()}
		tk, c := newTask(t, b, "task-1", spec(remote, false), api.TaskStatePreparing)
		resume(t, tk, c, api.TaskStateReady)
		tk.Status.State = api.TaskStateStarting
		cutStep(t, b, "Enable", tk, c)
		resume(t, tk, c, api.TaskStateRunning)
	})
	t.Run("Remove", func(t *testing.T) {
		// The worker calls Remove itself and only logs its error; what
		// matters is that the error says why, as a context error.
		b := &cuttingBackend{Backend: plugintest.NewBackend()}
		c := started(t, ctx, b, "task-1", spec(remote, false))
		stepCtx, cancel := context.WithCancel(ctx)
		defer cancel()
		b.cut("Remove", cancel)
		err := c.Remove(stepCtx)
		assert.Equal(t, cause(err), context.Canceled, "%v", err)
		assert.ErrorIs(t, err, context.Canceled)
		assert.ErrorContains(t, err, "plugin did not stop: interrupted")
		assert.NilError(t, c.Remove(ctx))
		_, _, found := state(t, b.Backend, name)
		assert.Assert(t, !found)
	})
}

// ---- Remotes pinned by digest without a Name -----------------------------------------

// TestPinnedRemoteWithoutName: the default name of a spec whose remote is
// pinned by digest is the remote without the digest, a name the Manager can
// look up, so the plugin installs, runs, is found again by a resumed task
// and is removed with the last task.
func TestPinnedRemoteWithoutName(t *testing.T) {
	ctx := context.Background()
	b := plugintest.NewBackend()
	const defaultName = "example.com/acme/vol:1.0"
	pinned := defaultName + "@sha256:" + strings.Repeat("ef", 32)
	s := runtime.PluginSpec{Remote: pinned}

	c1 := newController(t, b, "task-1", s)
	assert.NilError(t, c1.Prepare(ctx))
	p, refs, found := state(t, b, defaultName)
	assert.Assert(t, found, "installed under %s", defaultName)
	assert.Equal(t, p.Name, defaultName)
	assert.Equal(t, p.PluginReference, pinned)
	assert.Equal(t, refs, 1)
	assert.NilError(t, c1.Start(ctx))
	p, _, _ = state(t, b, defaultName)
	assert.Assert(t, p.Enabled)
	id := p.ID

	// Another task of the service finds it: pinned and installed, nothing
	// to pull or change.
	c2 := started(t, ctx, b, "task-2", s)
	assert.Equal(t, countCalls(b, "Pull"), 1)
	assert.Equal(t, countCalls(b, "Upgrade")+countCalls(b, "Disable"), 0)

	// task-1 resumed after an agent restart: its Wait binds by the name.
	resumed := newController(t, b, "task-1", s)
	wctx, cancel := context.WithCancel(ctx)
	done := waitAsync(t, b, resumed, wctx)
	_, refs, _ = state(t, b, defaultName)
	assert.Equal(t, refs, 2, "one reference per task")
	cancel()
	assert.ErrorIs(t, result(t, done), context.Canceled)

	assert.NilError(t, resumed.Remove(ctx))
	assert.NilError(t, c1.Close())
	_, refs, found = state(t, b, defaultName)
	assert.Assert(t, found)
	assert.Equal(t, refs, 1)
	assert.NilError(t, c2.Remove(ctx))
	for _, n := range []string{defaultName, id} {
		_, _, found := state(t, b, n)
		assert.Assert(t, !found, "%s left behind", n)
	}
	assert.Equal(t, countCalls(b, "Remove"), 1)
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

// ---- Env entries the Manager's Set cannot take --------------------------------------------

// envRemote declares LEVEL settable and MODE fixed, like a config.json
// with a "settable": ["value"] entry and one without.
var envRemote = plugintest.Remote{Env: []string{"LEVEL=info"}, FixedEnv: []string{"MODE=ro"}}

// envWarnings returns the log lines that name skipped env keys.
func envWarnings(logs *logCapture) []string {
	logs.mu.Lock()
	defer logs.mu.Unlock()
	var out []string
	for _, l := range logs.lines {
		if strings.Contains(l, "level=warn") && strings.Contains(l, "env") {
			out = append(out, l)
		}
	}
	return out
}

// TestEnvEntriesSetCannotTakeAreSkipped: moby's own TestServicePlugin env
// ("baz", "foo=bar"), an undeclared key, and a key the config fixes are
// never handed to Set, which would refuse them and leave the plugin
// disabled; the settable change is applied; each task logs the skipped
// keys once, at warn, without their values.
func TestEnvEntriesSetCannotTakeAreSkipped(t *testing.T) {
	ctx, logs := captureLogs()
	b := plugintest.NewBackend()
	b.AddRemote(remote, envRemote)
	b.AddRemote(remote2, envRemote)
	started(t, ctx, b, "task-1", spec(remote, false))

	s := spec(remote2, false)
	s.Env = []string{"baz", "foo=bar", "MODE=rw", "LEVEL=debug"}
	c2 := newController(t, b, "task-2", s)
	assert.NilError(t, c2.Prepare(ctx))
	assert.NilError(t, c2.Prepare(ctx), "retried")
	assert.NilError(t, c2.Start(ctx))

	p, _, _ := state(t, b, name)
	assert.Assert(t, p.Enabled)
	assert.Equal(t, p.PluginReference, remote2)
	assert.Assert(t, is.Contains(p.Settings.Env, "LEVEL=debug"))
	assert.Assert(t, is.Contains(p.Settings.Env, "MODE=ro"))
	for _, c := range b.Calls() {
		if c.Method == "Set" {
			assert.DeepEqual(t, c.Args, []string{"LEVEL=debug"})
			assert.NilError(t, c.Err)
		}
	}
	assert.Equal(t, countCalls(b, "Set"), 1)

	warnings := envWarnings(logs)
	assert.Assert(t, is.Len(warnings, 1), "once per task: %v", warnings)
	w := warnings[0]
	assert.Assert(t, strings.Contains(w, "task=task-2"), w)
	for _, k := range []string{"baz", "foo", "MODE"} {
		assert.Assert(t, strings.Contains(w, k), "key %s not named: %s", k, w)
	}
	for _, v := range []string{"bar", "rw", "LEVEL", "debug"} {
		assert.Assert(t, !strings.Contains(w, v), "%q in %s", v, w)
	}

	// Another task of the same spec logs its own line.
	started(t, ctx, b, "task-3", s)
	assert.Assert(t, is.Len(envWarnings(logs), 2))
}

// pinnedEnvPlugin returns a fake on which task-1 of the service runs the
// envRemote plugin pinned by digest, and that pinned remote.
func pinnedEnvPlugin(t *testing.T) (*plugintest.Backend, string) {
	b := plugintest.NewBackend()
	pinned := "example.com/acme/vol@sha256:" + strings.Repeat("12", 32)
	b.AddRemote(pinned, envRemote)
	started(t, context.Background(), b, "task-1", spec(pinned, false))
	return b, pinned
}

// TestPinnedRemoteWithUnsettableEnvIsLeftAlone: when nothing the plugin
// can take differs, Prepare decides so before disabling anything.
func TestPinnedRemoteWithUnsettableEnvIsLeftAlone(t *testing.T) {
	ctx := context.Background()
	b, pinned := pinnedEnvPlugin(t)
	b.ResetCalls()

	s := spec(pinned, false)
	s.Env = []string{"baz", "foo=bar", "MODE=rw", "LEVEL=info"}
	started(t, ctx, b, "task-2", s)
	for _, m := range methods(b) {
		assert.Check(t, m == "Get" || m == "ProbePlugin", "the plugin must be left alone: %v", methods(b))
	}
	p, _, _ := state(t, b, name)
	assert.Assert(t, p.Enabled)
}

// TestFailedSetReenables: an env change that fails after the disable leaves
// the plugin enabled, as it was.
func TestFailedSetReenables(t *testing.T) {
	ctx := context.Background()
	b, pinned := pinnedEnvPlugin(t)

	b.FailNext("Set", errors.New("disk full"))
	s := spec(pinned, false)
	s.Env = []string{"LEVEL=debug"}
	err := newController(t, b, "task-2", s).Prepare(ctx)
	assert.ErrorContains(t, err, "disk full")
	p, _, _ := state(t, b, name)
	assert.Assert(t, p.Enabled, "re-enabled after the failed Set")
	assert.Assert(t, is.Contains(p.Settings.Env, "LEVEL=info"))
	assert.Equal(t, countCalls(b, "Disable"), 1)
}

// TestOtherUsers: under a reference that is not one of the service's tasks
// (a volume), an upgrade goes ahead as stock dockerd does it (force-disable,
// upgrade, Start enables again, the other users counted in a warn line),
// while a Disabled spec is refused with the temporary ErrPluginInUse at
// Prepare, before any upgrade, and at Start, the reason in the task's
// status.
func TestOtherUsers(t *testing.T) {
	ctx, logs := captureLogs()
	b := plugintest.NewBackend()
	started(t, ctx, b, "task-1", spec(remote, false))
	pl, err := b.Get(name)
	assert.NilError(t, err)
	pl.Acquire() // a volume
	defer pl.Release()

	b.ResetCalls()
	tk := task(t, "task-2", service, spec(remote2, true))
	tk.DesiredState = api.TaskStateRunning
	tk.Status.State = api.TaskStatePreparing
	c2, err := plugin.NewController(b, tk)
	assert.NilError(t, err)
	st, err := exec.Do(ctx, tk, c2)
	assert.ErrorIs(t, err, exec.ErrTaskRetry)
	assert.Equal(t, st.State, api.TaskStatePreparing)
	assert.Assert(t, strings.Contains(st.Err, "plugin is in use"), st.Err)
	assert.ErrorIs(t, c2.Start(ctx), plugin.ErrPluginInUse)
	assert.DeepEqual(t, methods(b), []string{"Get", "Get"})
	p, _, _ := state(t, b, name)
	assert.Assert(t, p.Enabled)
	assert.Equal(t, p.PluginReference, remote)

	c3 := newController(t, b, "task-3", spec(remote2, false))
	assert.NilError(t, c3.Prepare(ctx))
	p, _, _ = state(t, b, name)
	assert.Equal(t, p.PluginReference, remote2)
	assert.NilError(t, c3.Start(ctx))
	p, refs, _ := state(t, b, name)
	assert.Assert(t, p.Enabled)
	assert.Equal(t, refs, 4)
	var warned bool
	for _, l := range logs.lines {
		warned = warned || (strings.Contains(l, "level=warn") && strings.Contains(l, "references=1"))
	}
	assert.Assert(t, warned, "the other users are counted at warn: %v", logs.lines)
}

// TestEnvNeverHandsSetWhatMobyRefuses checks the Controller's choice of env
// entries against moby's own v2.Plugin.Set as the oracle, for config
// entries shaped as config.json allows (no, one or several settable fields,
// a name with a dot) and spec entries of every form: an entry the Manager's
// Set would refuse is never handed to it, so Prepare succeeds and the plugin
// stays in service; an accepted "KEY=VALUE" change is applied.
func TestEnvNeverHandsSetWhatMobyRefuses(t *testing.T) {
	ctx := context.Background()
	value := func(s string) *string { return &s }
	configs := map[string]types.PluginEnv{
		"not settable":       {Name: "K", Value: value("0")},
		"settable value":     {Name: "K", Value: value("0"), Settable: []string{"value"}},
		"settable elsewhere": {Name: "K", Value: value("0"), Settable: []string{"source"}},
		"two settables":      {Name: "K", Value: value("0"), Settable: []string{"value", "source"}},
		"dotted name":        {Name: "K.x", Value: value("0"), Settable: []string{"value"}},
	}
	entries := []string{"K=1", "K", "K.value=1", "K.x=1", "K=0"}
	for desc, declared := range configs {
		for _, entry := range entries {
			t.Run(desc+"/"+entry, func(t *testing.T) {
				// moby's answer for this config and entry.
				probe := &v2.Plugin{PluginObj: types.Plugin{Config: types.PluginConfig{Env: []types.PluginEnv{declared}}}}
				probe.InitEmptySettings()
				mobyErr := probe.Set([]string{entry})

				b, pinned := pinnedEnvPlugin(t)
				pl, err := b.Get(name)
				assert.NilError(t, err)
				// Nothing else runs: give the installed plugin this config.
				pl.PluginObj.Config.Env = []types.PluginEnv{declared}
				pl.PluginObj.Settings.Env = []string{declared.Name + "=0"}
				b.ResetCalls()

				s := spec(pinned, false)
				s.Env = []string{entry}
				started(t, ctx, b, "task-2", s)
				p, _, _ := state(t, b, name)
				assert.Assert(t, p.Enabled)
				for _, c := range b.Calls() {
					if c.Method == "Set" {
						assert.NilError(t, mobyErr, "handed %v to Set, which moby's refuses", c.Args)
						assert.NilError(t, c.Err)
					}
				}
				if k, v, ok := strings.Cut(entry, "="); ok && mobyErr == nil && k == declared.Name && v != "0" {
					assert.Assert(t, is.Contains(p.Settings.Env, entry), "an accepted change is applied")
				}
			})
		}
	}
}
