// The real Manager can only be tested without the race detector: moby's own
// Pull and Push progress code races (NOTES.md, "Reference count and state"),
// so under -race these tests would fail for reasons outside this repository.

//go:build linux && !race

package realmanager

import (
	"bytes"
	"context"
	"io"
	"net/http"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	cerrdefs "github.com/containerd/errdefs"
	"github.com/containerd/log"
	"github.com/distribution/reference"
	"github.com/docker/docker/api/types/backend"
	"github.com/docker/docker/api/types/events"
	registrytypes "github.com/docker/docker/api/types/registry"
	"github.com/docker/docker/plugin"
	"go.uber.org/goleak"
	"gotest.tools/v3/assert"
	is "gotest.tools/v3/assert/cmp"
)

func TestMain(m *testing.M) {
	// moby logs every registry fallback (https, then http) at info level.
	_ = log.SetLevel("warn")
	// No goroutine of moby's Manager needs ignoring: the "go pm.GC()" that
	// Remove starts (plugin/backend_linux.go) cannot be waited for, but it
	// ends within milliseconds and goleak retries until then.
	goleak.VerifyTestMain(m)
}

// fixture is a registry with the standard plugins published to it.
type fixture struct {
	reg          *Registry
	v1, v2, priv string // references
}

func newFixture(t *testing.T) fixture {
	t.Helper()
	SkipUnsupported(t)
	reg, err := StartRegistry()
	assert.NilError(t, err)
	t.Cleanup(func() { assert.Check(t, reg.Close()) })

	v1, v2, priv := StandardPlugins()
	start := time.Now()
	assert.NilError(t, Publish(context.Background(), reg.Host(), v1, v2, priv))
	t.Logf("published 3 plugins in %v", time.Since(start).Round(time.Millisecond))
	return fixture{reg: reg, v1: v1.Ref(reg.Host()), v2: v2.Ref(reg.Host()), priv: priv.Ref(reg.Host())}
}

func newManager(t *testing.T, opts ...Option) *Manager {
	t.Helper()
	m, err := NewManager(opts...)
	assert.NilError(t, err)
	t.Cleanup(func() { assert.Check(t, m.Close()) })
	return m
}

func named(t *testing.T, ref string) reference.Named {
	t.Helper()
	n, err := reference.ParseNormalizedNamed(ref)
	assert.NilError(t, err)
	return n
}

// eventLog records the Manager's daemon event log.
type eventLog struct {
	mu      sync.Mutex
	actions []events.Action
}

func (l *eventLog) log(_, _ string, a events.Action) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.actions = append(l.actions, a)
}

func (l *eventLog) get() []events.Action {
	l.mu.Lock()
	defer l.mu.Unlock()
	return append([]events.Action(nil), l.actions...)
}

// activate calls the fake plugin's /Plugin.Activate over its unix socket.
func activate(t *testing.T, sock string) ActivateResponse {
	t.Helper()
	ar, err := Activate(context.Background(), sock)
	assert.NilError(t, err)
	return ar
}

func TestManagerLifecycle(t *testing.T) {
	f := newFixture(t)
	var evlog eventLog
	m := newManager(t, WithEventLog(evlog.log))
	ctx := context.Background()
	auth := &registrytypes.AuthConfig{}

	// Pull v1 as a swarm plugin, as the controller does.
	privs, err := m.RequiredPrivileges(ctx, f.v1)
	assert.NilError(t, err)
	assert.Check(t, is.Len(privs, 0))
	gets := f.reg.BlobGets()
	start := time.Now()
	var progress bytes.Buffer
	err = m.Pull(ctx, named(t, f.v1), f.v1, nil, auth, privs, &progress,
		plugin.WithSwarmService("svc1"), plugin.WithEnv([]string{"DEBUG=1"}))
	assert.NilError(t, err)
	t.Logf("pull: %v", time.Since(start).Round(time.Millisecond))
	assert.Check(t, f.reg.BlobGets() > gets, "the pull downloaded no blob")
	assert.Check(t, progress.Len() > 0, "no progress written")

	p, err := m.Get(f.v1)
	assert.NilError(t, err)
	id := p.GetID()
	assert.Check(t, is.Equal(p.Name(), f.v1))
	assert.Check(t, is.Equal(p.SwarmServiceID, "svc1"))
	assert.Check(t, is.DeepEqual(slices.Sorted(slices.Values(p.PluginObj.Settings.Env)), []string{"DEBUG=1", "MODE=ro"}))
	assert.Check(t, is.Equal(p.PluginObj.Config.Description, "realmanager test volume plugin v1"))
	assert.Check(t, !p.IsEnabled())
	assert.Check(t, !m.Running(id))

	// Name resolution: ID prefix; the same name again is a Conflict.
	byPrefix, err := m.Get(id[:12])
	assert.NilError(t, err)
	assert.Check(t, is.Equal(byPrefix.GetID(), id))
	err = m.Pull(ctx, named(t, f.v1), f.v1, nil, auth, privs, nil)
	assert.Check(t, cerrdefs.IsConflict(err), "%v", err)

	// Enable through the fake executor.
	evs, cancel := m.SubscribeEvents(4, plugin.EventEnable{Plugin: p.PluginObj}, plugin.EventDisable{Plugin: p.PluginObj})
	defer cancel()
	start = time.Now()
	assert.NilError(t, m.Enable(f.v1, &backend.PluginEnableConfig{Timeout: 30}))
	t.Logf("enable: %v", time.Since(start).Round(time.Millisecond))
	assert.Check(t, p.IsEnabled())
	assert.Check(t, m.Running(id))
	ev := <-evs
	assert.Check(t, is.Equal(ev.(plugin.EventEnable).Plugin.ID, id))
	assert.Check(t, is.DeepEqual(activate(t, p.Addr().String()).Implements, []string{"VolumeDriver"}))
	assert.Check(t, is.ErrorContains(m.Enable(f.v1, &backend.PluginEnableConfig{}), "already enabled"))

	// A crash: the Manager restarts the plugin by itself.
	assert.NilError(t, m.SimulateExit(id))
	assert.Check(t, m.Running(id))
	assert.Check(t, p.IsEnabled())

	// Upgrading an enabled plugin is refused; disable first.
	err = m.Upgrade(ctx, named(t, f.v2), f.v1, nil, auth, nil, io.Discard)
	assert.Check(t, is.ErrorContains(err, "must be disabled"))
	assert.NilError(t, m.Disable(f.v1, &backend.PluginDisableConfig{}))
	assert.Check(t, !p.IsEnabled())
	assert.Check(t, !m.Running(id))
	ev = <-evs
	assert.Check(t, is.Equal(ev.(plugin.EventDisable).Plugin.ID, id))

	gets = f.reg.BlobGets()
	assert.NilError(t, m.Upgrade(ctx, named(t, f.v2), f.v1, nil, auth, nil, io.Discard))
	assert.Check(t, f.reg.BlobGets() > gets, "the upgrade downloaded no blob")
	up, err := m.Get(f.v1)
	assert.NilError(t, err)
	assert.Check(t, is.Equal(up.GetID(), id), "upgrade changed the plugin ID")
	assert.Check(t, is.Equal(up.Name(), f.v1), "upgrade keeps the name")
	assert.Check(t, is.Equal(up.PluginObj.PluginReference, f.v2))
	assert.Check(t, is.Equal(up.PluginObj.Config.Description, "realmanager test volume plugin v2"))
	assert.Check(t, is.Equal(up.SwarmServiceID, "svc1"))
	assert.NilError(t, m.Set(f.v1, []string{"DEBUG=2"}))
	assert.Check(t, is.DeepEqual(slices.Sorted(slices.Values(up.PluginObj.Settings.Env)), []string{"DEBUG=2", "MODE=ro"}))

	// The privileged plugin: wrong grants are refused, the computed ones work.
	privs, err = m.RequiredPrivileges(ctx, f.priv)
	assert.NilError(t, err)
	assert.Check(t, is.DeepEqual(privs, PrivilegedPrivileges()))
	err = m.Pull(ctx, named(t, f.priv), f.priv, nil, auth, nil, nil)
	assert.Check(t, is.ErrorContains(err, "incorrect privileges"))
	assert.NilError(t, m.Pull(ctx, named(t, f.priv), f.priv, nil, auth, privs, nil))
	assert.NilError(t, m.Enable(f.priv, &backend.PluginEnableConfig{}))

	// Registry down: the pull fails fast; back up: it succeeds.
	assert.NilError(t, f.reg.Stop())
	err = m.Pull(ctx, named(t, f.v2), f.v2, nil, auth, nil, nil)
	assert.Check(t, is.ErrorContains(err, "connection refused"))
	_, err = m.Get(f.v2)
	assert.Check(t, cerrdefs.IsNotFound(err), "%v", err)
	assert.NilError(t, f.reg.Restart())
	assert.Check(t, is.ErrorContains(f.reg.Restart(), "already running"))
	assert.NilError(t, m.Pull(ctx, named(t, f.v2), f.v2, nil, auth, nil, nil))

	// A reference the registry does not have.
	err = m.Pull(ctx, named(t, f.reg.Host()+"/realmanager/missing:v1"), f.reg.Host()+"/realmanager/missing:v1", nil, auth, nil, nil)
	assert.Check(t, is.ErrorContains(err, "not found"))

	// Remove everything; the enabled one needs force.
	err = m.Remove(f.priv, &backend.PluginRmConfig{})
	assert.Check(t, cerrdefs.IsConflict(err), "%v", err)
	assert.NilError(t, m.Remove(f.priv, &backend.PluginRmConfig{ForceRemove: true}))
	assert.NilError(t, m.Remove(f.v1, &backend.PluginRmConfig{}))
	assert.NilError(t, m.Remove(f.v2, &backend.PluginRmConfig{}))
	_, err = m.Get(id)
	assert.Check(t, cerrdefs.IsNotFound(err), "%v", err)

	assert.Check(t, is.DeepEqual(evlog.get(), []events.Action{
		events.ActionPull, events.ActionEnable, // v1; the restart after the crash logs nothing
		events.ActionDisable, events.ActionPull, // the upgrade logs a pull
		events.ActionPull, events.ActionPull, events.ActionEnable, // priv: refused grants are logged as a pull too
		events.ActionPull, // v2 after the restart; failed fetches log nothing
		events.ActionRemove, events.ActionRemove, events.ActionRemove,
	}))
}

func TestRegistryStopRestart(t *testing.T) {
	reg, err := StartRegistry()
	assert.NilError(t, err)
	defer reg.Close()
	get := func() error {
		resp, err := http.Get("http://" + reg.Host() + "/v2/")
		if err == nil {
			resp.Body.Close()
		}
		return err
	}
	assert.NilError(t, get())
	assert.NilError(t, reg.Stop())
	assert.NilError(t, reg.Stop())
	err = get()
	assert.Check(t, err != nil && strings.Contains(err.Error(), "connection refused"), "%v", err)
	assert.NilError(t, reg.Restart())
	assert.NilError(t, get())
	assert.NilError(t, reg.Close())
	assert.Check(t, is.ErrorContains(reg.Restart(), "closed"))
	http.DefaultClient.CloseIdleConnections()
}

func TestSupported(t *testing.T) {
	err := Supported()
	t.Logf("Supported() = %v", err)
}
