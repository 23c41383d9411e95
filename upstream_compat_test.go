package plugin_test

// The scenarios of upstream's own controller_test.go (moby v28.3.0,
// daemon/cluster/controllers/plugin), ported to this package's public API
// and run against a mock with the observable semantics of upstream's
// mockBackend: Get returns the one plugin or a plain, unclassified error;
// Pull and Upgrade record the reference; Enable, Disable and Remove flip
// the state and publish events that carry no plugin ID, through a
// pubsub.Publisher that delivers every event to every subscriber; every
// task has an empty ServiceID. They prove the promise of the package
// documentation: a test suite written against upstream's controller passes
// unchanged after the import swap.
//
// Upstream's tests set an unexported hook (signalWaitReady) to learn that
// Wait has subscribed; these use the mock's own subscription signal
// instead, and no hook in Controller.

import (
	"context"
	"errors"
	"io"
	"net/http"
	"reflect"
	"strings"
	"sync"
	"testing"

	"github.com/distribution/reference"
	"github.com/docker/docker/api/types"
	"github.com/docker/docker/api/types/backend"
	"github.com/docker/docker/api/types/registry"
	"github.com/docker/docker/api/types/swarm/runtime"
	mobyplugin "github.com/docker/docker/plugin"
	v2 "github.com/docker/docker/plugin/v2"
	"github.com/moby/pubsub"
	"gotest.tools/v3/assert"
	is "gotest.tools/v3/assert/cmp"

	plugin "github.com/seed-e85c93d5/plugin"
	"github.com/seed-e85c93d5/plugin/plugintest"
)

const (
	upstreamName          = "test"
	upstreamRemote        = "testremote"
	upstreamRemoteUpgrade = "testremote2"
)

// upstreamMock is upstream's mockBackend, plus a signal for each
// subscription and a lock around the plugin pointer, which a Wait running
// alongside the test reads.
type upstreamMock struct {
	mu         sync.Mutex // guards p: Wait's Get runs alongside the test
	p          *v2.Plugin
	pub        *pubsub.Publisher
	subscribed chan struct{}    // receives once per SubscribeEvents call
	delivered  chan interface{} // receives each event once a subscriber took it
}

func newUpstreamMock() *upstreamMock {
	return &upstreamMock{pub: pubsub.NewPublisher(0, 0), subscribed: make(chan struct{}, 16), delivered: make(chan interface{}, 64)}
}

func (m *upstreamMock) plugin() *v2.Plugin {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.p
}

func (m *upstreamMock) Disable(name string, config *backend.PluginDisableConfig) error {
	m.plugin().PluginObj.Enabled = false
	m.pub.Publish(mobyplugin.EventDisable{})
	return nil
}

func (m *upstreamMock) Enable(name string, config *backend.PluginEnableConfig) error {
	m.plugin().PluginObj.Enabled = true
	m.pub.Publish(mobyplugin.EventEnable{})
	return nil
}

func (m *upstreamMock) Remove(name string, config *backend.PluginRmConfig) error {
	m.mu.Lock()
	m.p = nil
	m.mu.Unlock()
	m.pub.Publish(mobyplugin.EventRemove{})
	return nil
}

func (m *upstreamMock) Pull(ctx context.Context, ref reference.Named, name string, metaHeaders http.Header, authConfig *registry.AuthConfig, privileges types.PluginPrivileges, outStream io.Writer, opts ...mobyplugin.CreateOpt) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.p = &v2.Plugin{PluginObj: types.Plugin{ID: "1234", Name: name, PluginReference: ref.String()}}
	return nil
}

func (m *upstreamMock) Upgrade(ctx context.Context, ref reference.Named, name string, metaHeaders http.Header, authConfig *registry.AuthConfig, privileges types.PluginPrivileges, outStream io.Writer) error {
	m.plugin().PluginObj.PluginReference = upstreamRemoteUpgrade
	return nil
}

func (m *upstreamMock) Get(name string) (*v2.Plugin, error) {
	if p := m.plugin(); p != nil {
		return p, nil
	}
	return nil, errors.New("not found")
}

// SubscribeEvents subscribes to every event, as upstream's mock does. The
// subscriber reads from an unbuffered relay of the publisher's channel, so
// that the mock can report each event the moment the subscriber takes it
// (delivered). The relay ends when cancel is called.
func (m *upstreamMock) SubscribeEvents(buffer int, events ...mobyplugin.Event) (eventCh <-chan interface{}, cancel func()) {
	ch := m.pub.SubscribeTopicWithBuffer(nil, buffer)
	out, done := make(chan interface{}), make(chan struct{})
	go func() {
		for e := range ch {
			select {
			case out <- e:
				m.delivered <- e
			case <-done:
				return
			}
		}
	}()
	m.subscribed <- struct{}{}
	var once sync.Once
	return out, func() {
		once.Do(func() {
			close(done)
			m.pub.Evict(ch)
		})
	}
}

// awaitDelivered waits until the subscriber took an event of want's type.
// The publisher drops an event that finds its subscriber's buffer full, so
// the tests publish the next event only once the last one was taken.
func (m *upstreamMock) awaitDelivered(t *testing.T, errc <-chan error, want interface{}) {
	t.Helper()
	for {
		select {
		case e := <-m.delivered:
			if reflect.TypeOf(e) == reflect.TypeOf(want) {
				return
			}
		case err := <-errc:
			t.Fatalf("Wait returned before taking %T: %v", want, err)
		}
	}
}

// upstreamTask numbers the tasks of a test: upstream's controllers have no
// task, ours need one, and each gets its own ID; none has a service.
type upstreamTasks int

func (n *upstreamTasks) controller(t *testing.T, b plugin.Backend, disabled bool) *plugin.Controller {
	return n.controllerOf(t, b, disabled, "")
}

func (n *upstreamTasks) controllerOf(t *testing.T, b plugin.Backend, disabled bool, serviceID string) *plugin.Controller {
	t.Helper()
	*n++
	tk := plugintest.NewTask("upstream-task-"+strings.Repeat("i", int(*n)), serviceID,
		runtime.PluginSpec{Name: upstreamName, Remote: upstreamRemote, Disabled: disabled})
	c, err := plugin.NewController(b, tk)
	assert.NilError(t, err)
	t.Cleanup(func() { c.Close() })
	return c
}

// upstreamWaitAsync runs Wait on its own goroutine and returns once Wait
// is in its event loop: it has subscribed (the mock's signal) and has taken
// an event that it ignores, which it reads only after checking the
// plugin's state. So the test's next state change cannot race with that
// check, and must arrive as an event.
func upstreamWaitAsync(t *testing.T, ctx context.Context, b *upstreamMock, c *plugin.Controller) <-chan error {
	t.Helper()
	errc := make(chan error, 1)
	go func() { errc <- c.Wait(ctx) }()
	select {
	case <-b.subscribed:
	case err := <-errc:
		t.Fatalf("Wait returned before subscribing: %v", err)
	}
	b.pub.Publish(mobyplugin.EventCreate{})
	b.awaitDelivered(t, errc, mobyplugin.EventCreate{})
	return errc
}

func TestUpstreamPrepare(t *testing.T) {
	var tasks upstreamTasks
	b := newUpstreamMock()
	ctx := context.Background()

	assert.NilError(t, tasks.controller(t, b, false).Prepare(ctx))
	assert.Assert(t, b.plugin() != nil, "pull not performed")

	assert.NilError(t, tasks.controller(t, b, false).Prepare(ctx))
	assert.Equal(t, b.plugin().PluginObj.PluginReference, upstreamRemoteUpgrade, "upgrade not performed")

	err := tasks.controllerOf(t, b, false, "1").Prepare(ctx)
	assert.ErrorContains(t, err, "plugin already exists")
	assert.ErrorIs(t, err, plugin.ErrPluginExists)
}

func TestUpstreamStart(t *testing.T) {
	var tasks upstreamTasks
	b := newUpstreamMock()
	ctx := context.Background()

	c := tasks.controller(t, b, false)
	assert.NilError(t, c.Prepare(ctx))
	assert.NilError(t, c.Start(ctx))
	assert.Assert(t, b.plugin().IsEnabled(), "expected plugin to be enabled")

	c = tasks.controller(t, b, true)
	assert.NilError(t, c.Prepare(ctx))
	assert.NilError(t, c.Start(ctx))
	assert.Assert(t, !b.plugin().IsEnabled(), "expected plugin to be disabled")

	c = tasks.controller(t, b, false)
	assert.NilError(t, c.Prepare(ctx))
	assert.NilError(t, c.Start(ctx))
	assert.Assert(t, b.plugin().IsEnabled(), "expected plugin to be enabled")
}

func TestUpstreamWaitCancel(t *testing.T) {
	var tasks upstreamTasks
	b := newUpstreamMock()
	ctx := context.Background()
	c := tasks.controller(t, b, true)
	assert.NilError(t, c.Prepare(ctx))
	assert.NilError(t, c.Start(ctx))

	ctxCancel, cancel := context.WithCancel(ctx)
	errc := upstreamWaitAsync(t, ctxCancel, b, c)
	cancel()
	assert.ErrorIs(t, <-errc, context.Canceled)
}

// TestUpstreamWaitDisabled: a task whose spec says disabled. Wait ends on
// an enable; after Start disables again, a confirming disable is ignored,
// and the removal ends Wait.
func TestUpstreamWaitDisabled(t *testing.T) {
	var tasks upstreamTasks
	b := newUpstreamMock()
	ctx := context.Background()
	c := tasks.controller(t, b, true)
	assert.NilError(t, c.Prepare(ctx))
	assert.NilError(t, c.Start(ctx))

	errc := upstreamWaitAsync(t, ctx, b, c)
	assert.NilError(t, b.Enable(upstreamName, nil))
	err := <-errc
	assert.ErrorContains(t, err, "plugin enabled")

	assert.NilError(t, c.Start(ctx))
	assert.Assert(t, !b.plugin().IsEnabled())

	errc = upstreamWaitAsync(t, ctx, b, c)
	// A disable confirms the spec: Wait goes on. Had it returned on this
	// event, the error below would be "plugin disabled", not "removed".
	assert.NilError(t, b.Disable(upstreamName, nil))
	b.awaitDelivered(t, errc, mobyplugin.EventDisable{})
	assert.NilError(t, b.Remove(upstreamName, nil))
	err = <-errc
	assert.ErrorContains(t, err, "removed")
	assert.ErrorIs(t, err, plugin.ErrPluginRemoved)
}

// TestUpstreamWaitEnabled: the same for a task whose spec says enabled.
func TestUpstreamWaitEnabled(t *testing.T) {
	var tasks upstreamTasks
	b := newUpstreamMock()
	ctx := context.Background()
	c := tasks.controller(t, b, false)
	assert.NilError(t, c.Prepare(ctx))
	assert.NilError(t, c.Start(ctx))

	errc := upstreamWaitAsync(t, ctx, b, c)
	assert.NilError(t, b.Disable(upstreamName, nil))
	assert.ErrorContains(t, <-errc, "plugin disabled")

	assert.NilError(t, c.Start(ctx))
	assert.Assert(t, b.plugin().IsEnabled())

	errc = upstreamWaitAsync(t, ctx, b, c)
	assert.NilError(t, b.Enable(upstreamName, nil))
	b.awaitDelivered(t, errc, mobyplugin.EventEnable{})
	assert.NilError(t, b.Remove(upstreamName, nil))
	err := <-errc
	assert.ErrorContains(t, err, "removed")
	assert.ErrorIs(t, err, plugin.ErrPluginRemoved)
}

func TestUpstreamRemove(t *testing.T) {
	var tasks upstreamTasks
	b := newUpstreamMock()
	ctx := context.Background()

	c := tasks.controller(t, b, false)
	assert.NilError(t, c.Prepare(ctx))
	assert.NilError(t, c.Shutdown(ctx))

	c2 := tasks.controller(t, b, false)
	assert.NilError(t, c2.Prepare(ctx))

	assert.NilError(t, c.Remove(ctx))
	assert.Assert(t, b.plugin() != nil, "plugin removed unexpectedly")
	assert.NilError(t, c2.Shutdown(ctx))
	assert.NilError(t, c2.Remove(ctx))
	assert.Assert(t, is.Nil(b.plugin()), "expected plugin to be removed")
}

// Upstream's tests build Controllers without a task; a port through
// NewController naturally gives each the same, empty, task ID. Each such
// Controller still counts once, as upstream's do: one's Remove does not
// remove the plugin the other holds.
func TestTasklessControllersCountOnceEach(t *testing.T) {
	ctx := context.Background()
	b := plugintest.NewBackend()
	c1 := newController(t, b, "", spec(remote, false))
	c2 := newController(t, b, "", spec(remote, false))
	for _, c := range []*plugin.Controller{c1, c2} {
		assert.NilError(t, c.Prepare(ctx))
		assert.NilError(t, c.Start(ctx))
	}
	_, refs, _ := state(t, b, name)
	assert.Equal(t, refs, 2)
	assert.NilError(t, c1.Remove(ctx))
	_, refs, found := state(t, b, name)
	assert.Assert(t, found, "c1's Remove removed the plugin c2 holds")
	assert.Equal(t, refs, 1)
	assert.NilError(t, c2.Remove(ctx))
	_, _, found = state(t, b, name)
	assert.Assert(t, !found)
}
