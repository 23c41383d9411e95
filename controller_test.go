package plugin_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"strings"
	"sync"
	"testing"
	"time"

	cerrdefs "github.com/containerd/errdefs"
	"github.com/distribution/reference"
	"github.com/docker/docker/api/types"
	"github.com/docker/docker/api/types/backend"
	"github.com/docker/docker/api/types/registry"
	"github.com/docker/docker/api/types/swarm/runtime"
	upstream "github.com/docker/docker/daemon/cluster/controllers/plugin"
	mobyplugin "github.com/docker/docker/plugin"
	gogotypes "github.com/gogo/protobuf/types"
	"github.com/moby/swarmkit/v2/agent/exec"
	"github.com/moby/swarmkit/v2/api"
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
	assert.Assert(t, after.Enabled, "an enabled plugin is enabled again as soon as it is upgraded")
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
	// plugin already exists: vol:latest
	// true true false
}
