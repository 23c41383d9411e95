// Not under -race: see main_test.go.

//go:build linux && !race

package realmanager_test

import (
	"context"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"strings"
	"sync"
	"testing"

	mobyplugin "github.com/docker/docker/plugin"
	ggcrregistry "github.com/google/go-containerregistry/pkg/registry"
	"github.com/moby/swarmkit/v2/agent/exec"
	"github.com/moby/swarmkit/v2/api"
	"gotest.tools/v3/assert"
	is "gotest.tools/v3/assert/cmp"

	plugin "github.com/seed-e85c93d5/plugin"
	rm "github.com/seed-e85c93d5/plugin/internal/realmanager"
)

// Updates without needless outages (issue 25), against moby's real
// Manager: a new task of an unchanged spec on a tag takes nothing out of
// service, and neither does any new task while the registry cannot be
// reached.
//
// The tasks under test get Controllers whose Backend is the
// *plugin.Manager itself (daemonController), as a daemon's executor passes
// it: the Controller asks the registry which manifest a tag names only for
// that type (or a Backend implementing plugin.ManifestResolver), and the
// fixture's signallingBackend, which wraps it, is neither, so through it a
// tag is upgraded by every new task, as upstream does.

// A forced update (a new task of the same spec, on a tag whose manifest
// did not move) while the old task's Wait watches the plugin: the new
// task's Prepare and Start disable nothing (the Manager publishes no event
// at all), the old Wait goes on, the plugin keeps its ID, and the registry
// gets one request, for the manifest, and none for a blob.
func TestUpdateOfAnUnchangedSpecDisablesNothing(t *testing.T) {
	e := newEnv(t)
	cr := startCountingRegistry(t)
	d1, _, _ := rm.StandardPlugins()
	assert.NilError(t, rm.Publish(context.Background(), cr.host, d1))
	spec := pluginSpec(d1.Ref(cr.host))
	spec.Env = []string{"DEBUG=1"}

	old := newTask(t, "task-1", "svc-a", spec)
	oldC := e.controller(old)
	e.runTo(old, oldC, api.TaskStateRunning)
	id := e.get(pluginName).GetID()
	w := e.wait(old, oldC)

	evs := e.recordEvents()
	mark := cr.mark()
	upd := newTask(t, "task-2", "svc-a", spec)
	updC := e.daemonController(upd)
	e.runTo(upd, updC, api.TaskStateRunning)
	reqs := cr.since(mark)
	t.Logf("the new task's Prepare and Start made %d registry request(s): %q", len(reqs), reqs)

	assert.Check(t, is.DeepEqual(evs(), []string(nil)), "the Manager's events during the new task's Prepare and Start")
	assert.Check(t, is.Len(reqs, 1), "one manifest request: which manifest the tag names")
	for _, r := range reqs {
		assert.Check(t, strings.Contains(r, "/manifests/"), "a registry request other than a manifest's: %s", r)
	}
	p := e.get(pluginName)
	assert.Check(t, is.Equal(p.GetID(), id), "the plugin was replaced")
	assert.Check(t, is.Equal(p.GetRefCount(), 2), "one reference per task")
	e.assertRunning(p)

	// The update then cancels the old task's Wait: it was still watching,
	// not ended by a disable.
	w.cancel()
	assert.Check(t, is.ErrorIs(e.result(old, w), exec.ErrTaskRetry))
	assert.Check(t, is.Equal(old.Status.State, api.TaskStateRunning), "the old task's Wait ended: %q", old.Status.Err)
	e.shutdown(old, oldC)
	e.retire(oldC)
	e.assertRunning(e.get(pluginName))
	e.retire(updC)
	e.assertGone(pluginName, id)
}

// An env-only update (DEBUG=1 to DEBUG=2, a settable key, the tag's
// manifest unchanged) of an enabled plugin: the new task's Prepare
// disables it, sets the value and enables it again itself, so that the
// outage is the Manager's own work and not also swarmkit's round trip to
// Start. After Prepare alone the plugin is enabled, running, answering,
// with the new value and its ID; the Manager published one disable and
// one enable; the registry got one manifest request and no blob; Start
// then changes nothing.
func TestEnvOnlyUpdateIsEnabledAgainWithinPrepare(t *testing.T) {
	e := newEnv(t)
	cr := startCountingRegistry(t)
	d1, _, _ := rm.StandardPlugins()
	assert.NilError(t, rm.Publish(context.Background(), cr.host, d1))
	spec := pluginSpec(d1.Ref(cr.host))
	spec.Env = []string{"DEBUG=1"}
	old := newTask(t, "task-1", "svc-a", spec)
	oldC := e.controller(old)
	e.runTo(old, oldC, api.TaskStateRunning)
	id := e.get(pluginName).GetID()

	evs := e.recordEvents()
	mark := cr.mark()
	spec.Env = []string{"DEBUG=2"}
	upd := newTask(t, "task-2", "svc-a", spec)
	updC := e.daemonController(upd)
	assert.NilError(t, updC.Prepare(e.ctx))
	p := e.get(pluginName)
	e.assertRunning(p)
	assert.Check(t, is.Contains(p.PluginObj.Settings.Env, "DEBUG=2"))
	assert.Check(t, is.Equal(p.GetID(), id), "the plugin was replaced")
	assert.Check(t, is.DeepEqual(evs(), []string{"disable " + p.Name(), "enable " + p.Name()}), "the Manager's events during the new task's Prepare")
	reqs := cr.since(mark)
	assert.Check(t, is.Len(reqs, 1), "one manifest request: %q", reqs)
	for _, r := range reqs {
		assert.Check(t, strings.Contains(r, "/manifests/"), "a registry request other than a manifest's: %s", r)
	}

	enables := 0
	ch, cancel := e.m.SubscribeEvents(4, mobyplugin.EventEnable{Plugin: p.PluginObj})
	assert.NilError(t, updC.Start(e.ctx))
	cancel()
	for range ch {
		enables++
	}
	assert.Check(t, is.Equal(enables, 0), "Start enabled the plugin again")
	e.assertRunning(e.get(pluginName))

	e.retire(oldC)
	e.retire(updC)
	e.assertGone(pluginName, id)
}

// The registry stops while a task runs; five new tasks of the service
// (swarmkit's retries, a forced update, a worker marked down) are prepared
// and started meanwhile: every Prepare returns nil, the plugin stays
// enabled and running with its ID after every call, and the Manager
// publishes no event: nothing is disabled, nothing flaps.
func TestRegistryDownNewTasksKeepThePluginInService(t *testing.T) {
	e := newEnv(t)
	spec := pluginSpec(v1)
	first := newTask(t, "task-1", "svc-a", spec)
	firstC := e.controller(first)
	e.runTo(first, firstC, api.TaskStateRunning)
	id := e.get(pluginName).GetID()

	evs := e.recordEvents()
	assert.NilError(t, reg.Stop())
	stopped := true
	t.Cleanup(func() { // the registry is shared by the whole test binary
		if stopped {
			assert.Check(t, reg.Restart())
		}
	})
	gets := reg.BlobGets()
	ctrls := []exec.Controller{firstC}
	for i := 2; i <= 6; i++ {
		c := e.daemonController(newTask(t, fmt.Sprintf("task-%d", i), "svc-a", spec))
		ctrls = append(ctrls, c)
		assert.Check(t, c.Prepare(e.ctx), "Prepare of task-%d while the registry is down", i)
		e.assertRunning(e.get(pluginName))
		assert.Check(t, c.Start(e.ctx), "Start of task-%d while the registry is down", i)
		e.assertRunning(e.get(pluginName))
	}
	assert.Check(t, is.DeepEqual(evs(), []string(nil)), "the Manager's events while the registry was down")
	assert.Check(t, is.Equal(reg.BlobGets(), gets))
	p := e.get(pluginName)
	assert.Check(t, is.Equal(p.GetID(), id), "the plugin was replaced")
	assert.Check(t, is.Equal(p.PluginObj.PluginReference, v1))
	assert.Check(t, is.Equal(p.GetRefCount(), len(ctrls)), "one reference per task")

	assert.NilError(t, reg.Restart())
	stopped = false
	for _, c := range ctrls {
		e.retire(c)
	}
	e.assertGone(pluginName, id)
}

// daemonController returns a Controller for tk whose Backend is the
// scenario's *plugin.Manager itself, as the daemon's executor creates it.
func (e *env) daemonController(tk *api.Task) *plugin.Controller {
	e.t.Helper()
	c, err := plugin.New(e.m.Manager, tk)
	assert.NilError(e.t, err)
	return c
}

// recordEvents subscribes to every event of the scenario's Manager and
// returns a function that ends the subscription and returns the events
// received, in order ("disable itest/vol", ...).
func (e *env) recordEvents() func() []string {
	e.t.Helper()
	// The Manager's publisher waits for every subscriber, so the events
	// are received as they come.
	ch, cancel := e.m.SubscribeEvents(16)
	var got []string
	done := make(chan struct{})
	go func() {
		defer close(done)
		for ev := range ch {
			got = append(got, describeEvent(ev))
		}
	}()
	var once sync.Once
	stop := func() []string {
		once.Do(func() {
			cancel()
			<-done
		})
		return got
	}
	e.t.Cleanup(func() { stop() })
	return stop
}

func describeEvent(ev any) string {
	switch ev := ev.(type) {
	case mobyplugin.EventCreate:
		return "create " + ev.Plugin.Name
	case mobyplugin.EventEnable:
		return "enable " + ev.Plugin.Name
	case mobyplugin.EventDisable:
		return "disable " + ev.Plugin.Name
	case mobyplugin.EventRemove:
		return "remove " + ev.Plugin.Name
	}
	return fmt.Sprintf("%T", ev)
}

// countingRegistry is an in-memory registry on a loopback port that logs
// every request it gets ("HEAD /v2/.../manifests/v1").
type countingRegistry struct {
	host   string
	srv    *http.Server
	served chan struct{}

	mu       sync.Mutex
	requests []string
}

// startCountingRegistry starts a countingRegistry, closed when t ends.
func startCountingRegistry(t *testing.T) *countingRegistry {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	assert.NilError(t, err)
	r := &countingRegistry{host: l.Addr().String(), served: make(chan struct{})}
	inner := ggcrregistry.New(ggcrregistry.Logger(log.New(io.Discard, "", 0)))
	r.srv = &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		r.mu.Lock()
		r.requests = append(r.requests, req.Method+" "+req.URL.Path)
		r.mu.Unlock()
		inner.ServeHTTP(w, req)
	})}
	go func() {
		defer close(r.served)
		_ = r.srv.Serve(l) // ErrServerClosed after Close
	}()
	t.Cleanup(func() {
		assert.Check(t, r.srv.Close())
		<-r.served
	})
	return r
}

// mark returns a position in the request log.
func (r *countingRegistry) mark() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return len(r.requests)
}

// since returns the requests after the position mark.
func (r *countingRegistry) since(mark int) []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]string(nil), r.requests[mark:]...)
}
