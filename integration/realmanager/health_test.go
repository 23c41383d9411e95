// Not under -race: see main_test.go.

//go:build linux && !race

package realmanager_test

// Readiness and liveness (issue 28) against moby's real *plugin.Manager:
// the fixture's fake plugin processes start slowly, never answer, or hang
// on the test's signal (rm.Behaviour, (*rm.Manager).Hang), and count
// their starts, stops and answers ((*rm.Manager).Process), so that each
// test sees what the Controller asked of the plugin and what the Manager
// did to its process.
//
// Each fails without the behaviour it covers (checked by changing the
// controller and running them): with Start returning as soon as the
// plugin is enabled, as upstream, the three slow-start and never-answers
// tests fail; with no liveness check in Wait, as upstream, the hang,
// recovered and healthy tests fail (no check ever reaches the plugin);
// with no restart in Start, the hang test fails; with a restart that does
// not probe first, the recovered test fails; with the protocol call held
// to a 200 as Plugin.Activate is (the fixture answers
// VolumeDriver.Capabilities 404), the healthy test fails, as every test
// that needs the plugin to be found answering.

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/distribution/reference"
	"github.com/docker/docker/api/types/backend"
	registrytypes "github.com/docker/docker/api/types/registry"
	"github.com/moby/swarmkit/v2/agent/exec"
	"github.com/moby/swarmkit/v2/api"
	"github.com/opencontainers/go-digest"
	"gotest.tools/v3/assert"
	is "gotest.tools/v3/assert/cmp"

	plugin "github.com/seed-e85c93d5/plugin"
	rm "github.com/seed-e85c93d5/plugin/internal/realmanager"
	"github.com/seed-e85c93d5/plugin/remotedigest"
)

// fastCheck is the health check of these tests: a probe every 50 ms, each
// given 200 ms, and a task fails after 3 misses in a row.
var fastCheck = plugin.HealthCheck{Interval: 50 * time.Millisecond, Timeout: 200 * time.Millisecond, Threshold: 3}

// probed is what the Controller's probe asks, as its errors say.
const probed = "Plugin.Activate, VolumeDriver.Capabilities"

// healthController returns a Controller for tk on the scenario's node with
// the health check h and the options opts. Its Backend resolves a tag's
// manifest as the Controller does for the daemon's *plugin.Manager (see
// resolvingBackend), so that a new task of an unchanged spec upgrades
// nothing: any restart the tests see is the health check's.
func (e *env) healthController(tk *api.Task, h plugin.HealthCheck, opts ...plugin.Option) *plugin.Controller {
	e.t.Helper()
	c, err := plugin.New(resolvingBackend{e.b}, tk, append([]plugin.Option{plugin.WithHealthCheck(h)}, opts...)...)
	assert.NilError(e.t, err)
	return c
}

// resolvingBackend is the scenario's signallingBackend (the real Manager)
// with the optional plugin.ManifestResolver, answered as the Controller
// answers it itself for a *plugin.Manager (one manifest request, plain
// HTTP for loopback). Through the signallingBackend alone every new task
// would upgrade a tag remote, disabling and enabling the plugin (see
// updates_test.go).
type resolvingBackend struct{ *signallingBackend }

func (resolvingBackend) ResolveManifest(ctx context.Context, ref reference.Named, auth *registrytypes.AuthConfig) (digest.Digest, error) {
	return remotedigest.Resolve(ctx, ref, auth, nil)
}

// preparedWith runs a new task of svc-a to READY (the plugin pulled, not
// enabled) and gives the plugin the Behaviour b, which its first process
// start (the Start step's Enable) takes.
func (e *env) preparedWith(id string, b rm.Behaviour, opts ...plugin.Option) (*api.Task, *plugin.Controller, string) {
	e.t.Helper()
	tk := newTask(e.t, id, "svc-a", pluginSpec(v1))
	c := e.healthController(tk, fastCheck, opts...)
	e.runTo(tk, c, api.TaskStateReady)
	pl := e.get(pluginName)
	assert.Check(e.t, !pl.IsEnabled())
	assert.NilError(e.t, e.m.SetBehaviour(pl.GetID(), b))
	return tk, c, pl.GetID()
}

// starting is one Start step that did not reach RUNNING.
type starting struct {
	err       error
	statusErr string
	stats     rm.ProcessStats // after the step
}

// startUntilRunning drives tk from READY with exec.Do as the agent does
// (it retries a temporary error; here at once, without the agent's 1 s
// pause) until the task leaves STARTING, and returns the steps that kept
// it in STARTING. Every one of them must be a retry.
func (e *env) startUntilRunning(tk *api.Task, c exec.Controller, id string) []starting {
	e.t.Helper()
	assert.NilError(e.t, e.do(tk, c))
	assert.Equal(e.t, tk.Status.State, api.TaskStateStarting)
	var retries []starting
	for deadline := time.Now().Add(patience); ; {
		err := e.do(tk, c)
		if tk.Status.State != api.TaskStateStarting {
			assert.NilError(e.t, err, "the step that left STARTING")
			return retries
		}
		retries = append(retries, starting{err: err, statusErr: tk.Status.Err, stats: e.m.Process(id)})
		assert.Assert(e.t, errors.Is(err, exec.ErrTaskRetry), "a step in STARTING that is not a retry: %v (status %q)", err, tk.Status.Err)
		assert.Assert(e.t, time.Now().Before(deadline), "still STARTING after %v: %q", patience, tk.Status.Err)
	}
}

// waitProcess polls the plugin's process counts until cond holds.
func (e *env) waitProcess(id, what string, cond func(rm.ProcessStats) bool) rm.ProcessStats {
	e.t.Helper()
	tick := time.NewTicker(5 * time.Millisecond)
	defer tick.Stop()
	deadline := time.After(patience)
	for {
		st := e.m.Process(id)
		if cond(st) {
			return st
		}
		select {
		case <-tick.C:
		case <-deadline:
			e.t.Fatalf("waiting %v for %s: process counts %+v", patience, what, st)
		}
	}
}

// assertContainerID checks that the task's runtime status names the plugin
// (exec.ContainerStatuser), as "docker inspect TASK" shows it.
func assertContainerID(t *testing.T, tk *api.Task, id string) {
	t.Helper()
	cs := tk.Status.GetContainer()
	if assert.Check(t, cs != nil, "the task's status has no ContainerStatus") {
		assert.Check(t, is.Equal(cs.ContainerID, id), "the task's ContainerStatus")
	}
}

// A plugin whose first three activations answer 503 (it serves its socket
// before it is ready): each Start step is a retry whose status says which
// probe is awaited and what the plugin answered, the plugin is enabled
// once and never restarted, and the task is RUNNING only with the step
// that got the plugin's first 200. Then its Wait sees it healthy.
func TestHealthSlowStartFailedActivations(t *testing.T) {
	e := newEnv(t)
	tk, c, id := e.preparedWith("task-1", rm.Behaviour{FailActivations: 3})

	retries := e.startUntilRunning(tk, c, id)
	assert.Assert(t, is.Len(retries, 3), "one retry per refused activation")
	for i, r := range retries {
		assert.Check(t, is.Contains(r.statusErr, "waiting for "+pluginName+" to answer "+probed), "retry %d", i)
		assert.Check(t, is.Contains(r.statusErr, "503 Service Unavailable"), "retry %d", i)
		assert.Check(t, is.Contains(r.statusErr, fmt.Sprintf("activation %d of 3 refused", i+1)), "retry %d", i)
		assert.Check(t, is.Equal(r.stats.Activations, 0), "retry %d: the plugin had answered", i)
		assert.Check(t, is.Equal(r.stats.Starts, 1), "retry %d", i)
	}
	st := e.m.Process(id)
	t.Logf("RUNNING after %d retries; process %+v", len(retries), st)
	assert.Check(t, is.Equal(tk.Status.State, api.TaskStateRunning))
	assert.Check(t, is.Equal(tk.Status.Err, ""))
	assert.Check(t, is.Equal(st.Activations, 1), "RUNNING with the first answer")
	assert.Check(t, is.Equal(st.Refused, 3))
	assert.Check(t, is.Equal(st.Starts, 1), "enabled once")
	assert.Check(t, is.Equal(st.Stops, 0), "never restarted while it started")
	assertContainerID(t, tk, id)
	e.assertRunning(e.get(pluginName))

	// Its Wait probes it and keeps waiting.
	w := e.wait(tk, c)
	e.waitProcess(id, "5 health checks", func(st rm.ProcessStats) bool { return st.Activations >= 7 })
	w.cancel()
	assert.Check(t, is.ErrorIs(e.result(tk, w), exec.ErrTaskRetry))
	assert.Check(t, is.Equal(tk.Status.State, api.TaskStateRunning))
	st = e.m.Process(id)
	assert.Check(t, is.Equal(st.Starts, 1))
	assert.Check(t, is.Equal(st.Stops, 0))
	e.retire(c)
	e.assertGone(pluginName, id)
}

// A plugin that holds every request for its first second (busy
// initialising): each Start step's probe times out (200 ms) and is a
// retry, and the task is RUNNING only once the plugin answers, a second
// or more after its start, enabled once.
func TestHealthSlowStartBusy(t *testing.T) {
	e := newEnv(t)
	const busy = time.Second
	tk, c, id := e.preparedWith("task-1", rm.Behaviour{BusyFor: busy})

	before := time.Now()
	retries := e.startUntilRunning(tk, c, id)
	took := time.Since(before)
	st := e.m.Process(id)
	t.Logf("RUNNING after %v and %d retries; process %+v", took.Round(time.Millisecond), len(retries), st)
	assert.Assert(t, len(retries) > 0, "RUNNING before the plugin answered")
	for i, r := range retries {
		assert.Check(t, is.Contains(r.statusErr, "waiting for "+pluginName+" to answer "+probed+": Plugin.Activate: "), "retry %d", i)
		assert.Check(t, is.Equal(r.stats.Activations, 0), "retry %d: the plugin had answered", i)
	}
	assert.Check(t, took >= busy, "RUNNING %v after the first Start, before the plugin's %v of start-up", took, busy)
	assert.Check(t, is.Equal(tk.Status.State, api.TaskStateRunning))
	assert.Check(t, st.Activations >= 1)
	assert.Check(t, st.Held >= 1 && st.Dropped >= 1, "the probes were held and given up: %+v", st)
	assert.Check(t, is.Equal(st.Starts, 1))
	assert.Check(t, is.Equal(st.Stops, 0))
	e.assertRunning(e.get(pluginName))
	e.retire(c)
	e.assertGone(pluginName, id)
}

// A plugin that never answers: Start retries until the enable timeout
// (1 s here) since it first found the plugin not answering, then fails the
// task for good, naming the probe and its last answer. Nothing restarts
// the plugin meanwhile; the task's Remove removes it.
func TestHealthNeverAnswersFailsAtTheEnableTimeout(t *testing.T) {
	e := newEnv(t)
	const timeout = time.Second
	tk, c, id := e.preparedWith("task-1", rm.Behaviour{Hung: true}, plugin.WithEnableTimeout(timeout))

	assert.NilError(t, e.do(tk, c))
	assert.Equal(t, tk.Status.State, api.TaskStateStarting)
	start := time.Now()
	retries := 0
	for tk.Status.State == api.TaskStateStarting {
		err := e.do(tk, c)
		if tk.Status.State != api.TaskStateStarting {
			assert.NilError(t, err)
			break
		}
		retries++
		assert.Assert(t, errors.Is(err, exec.ErrTaskRetry), "%v", err)
		assert.Check(t, is.Contains(tk.Status.Err, "waiting for "+pluginName+" to answer "+probed))
		assert.Assert(t, time.Since(start) < patience, "still STARTING: %q", tk.Status.Err)
	}
	took := time.Since(start)
	st := e.m.Process(id)
	t.Logf("FAILED %v after the first Start, %d retries: %q; process %+v", took.Round(time.Millisecond), retries, tk.Status.Err, st)
	assert.Check(t, is.Equal(tk.Status.State, api.TaskStateFailed))
	assert.Check(t, is.Contains(tk.Status.Err, "did not answer "+probed+" within the enable timeout (1s); last answer: Plugin.Activate: "))
	assert.Check(t, took >= timeout)
	assert.Check(t, retries >= 2)
	assert.Check(t, is.Equal(st.Activations, 0))
	e.waitProcess(id, "every request held and given up", func(st rm.ProcessStats) bool { return st.Dropped == st.Requests && st.Held == st.Requests })
	assert.Check(t, is.Equal(st.Starts, 1), "enabled once")
	assert.Check(t, is.Equal(st.Stops, 0), "not restarted")
	assert.Check(t, e.get(pluginName).IsEnabled(), "Start leaves it enabled")
	e.retire(c)
	e.assertGone(pluginName, id)
	assert.Check(t, is.Equal(e.m.Process(id).Stops, 1), "stopped by the removal")
}

// A plugin that hangs while its task waits: Wait fails the task after 3
// missed checks in a row, naming them and the last answer, and restarts
// nothing itself. The next task's Start probes it, finds it still hung,
// restarts it (force disable, enable: one stop, one start, the same
// plugin ID), and runs once the new process answers; the plugin is then
// healthy through many checks, with no further restart. The failed task's
// Remove keeps the plugin the new task holds.
func TestHealthHangDetectedByWaitAndRestartedByTheNextTask(t *testing.T) {
	e := newEnv(t)
	tk := newTask(t, "task-1", "svc-a", pluginSpec(v1))
	c := e.healthController(tk, fastCheck)
	e.runTo(tk, c, api.TaskStateRunning)
	p := e.get(pluginName)
	id := p.GetID()
	assertContainerID(t, tk, id)

	w := e.wait(tk, c)
	e.waitProcess(id, "a health check", func(st rm.ProcessStats) bool { return st.Activations >= 2 })
	hung := time.Now()
	assert.NilError(t, e.m.Hang(id))
	assert.NilError(t, e.result(tk, w))
	took := time.Since(hung)
	st := e.m.Process(id)
	t.Logf("FAILED %v after the hang: %q; process %+v", took.Round(time.Millisecond), tk.Status.Err, st)
	assert.Check(t, is.Equal(tk.Status.State, api.TaskStateFailed))
	assert.Check(t, is.Contains(tk.Status.Err, pluginName+" missed 3 health checks in a row ("+probed+"); last answer: Plugin.Activate: "))
	assert.Check(t, took >= 3*fastCheck.Interval, "failed after %v, before 3 intervals", took)
	e.waitProcess(id, "3 probes held and given up", func(st rm.ProcessStats) bool { return st.Dropped >= 3 })
	assert.Check(t, is.Equal(st.Starts, 1), "Wait restarts nothing")
	assert.Check(t, is.Equal(st.Stops, 0), "Wait restarts nothing")
	assert.Check(t, p.IsEnabled(), "Wait leaves the plugin enabled")
	_, err := rm.Activate(shortCtx(t), p.Addr().String())
	assert.Check(t, err != nil, "the hung plugin answered")

	// swarmkit replaces the failed task.
	next := newTask(t, "task-2", "svc-a", pluginSpec(v1))
	nc := e.healthController(next, fastCheck)
	e.runTo(next, nc, api.TaskStateReady)
	st = e.m.Process(id)
	assert.Check(t, is.Equal(st.Starts, 1), "the next task's Prepare (an unchanged spec) restarted the plugin")
	assert.Check(t, is.Equal(st.Stops, 0), "the next task's Prepare (an unchanged spec) restarted the plugin")
	e.runTo(next, nc, api.TaskStateRunning)
	st = e.m.Process(id)
	t.Logf("the next task RUNNING; process %+v", st)
	assert.Check(t, is.Equal(st.Stops, 1), "restarted once")
	assert.Check(t, is.Equal(st.Starts, 2), "restarted once")
	restarted := e.get(pluginName)
	assert.Check(t, is.Equal(restarted.GetID(), id), "the same plugin, restarted")
	e.assertRunning(restarted) // the new process answers
	assertContainerID(t, next, id)

	// The failed task leaves; the plugin stays with the new task's
	// reference.
	e.retire(c)
	e.assertRunning(e.get(pluginName))

	w = e.wait(next, nc)
	before := e.m.Process(id)
	e.waitProcess(id, "20 health checks of the new process", func(st rm.ProcessStats) bool { return st.Activations >= before.Activations+20 })
	w.cancel()
	assert.Check(t, is.ErrorIs(e.result(next, w), exec.ErrTaskRetry), "the new task kept waiting")
	st = e.m.Process(id)
	assert.Check(t, is.Equal(st.Starts, 2), "no restart after the new process answered")
	assert.Check(t, is.Equal(st.Stops, 1))
	e.retire(nc)
	e.assertGone(pluginName, id)
}

// A plugin that hung long enough to fail its task but answers again by the
// time the next task starts is not restarted.
func TestHealthRecoveredPluginIsNotRestarted(t *testing.T) {
	e := newEnv(t)
	tk := newTask(t, "task-1", "svc-a", pluginSpec(v1))
	c := e.healthController(tk, fastCheck)
	e.runTo(tk, c, api.TaskStateRunning)
	id := e.get(pluginName).GetID()

	w := e.wait(tk, c)
	assert.NilError(t, e.m.Hang(id))
	assert.NilError(t, e.result(tk, w))
	assert.Check(t, is.Equal(tk.Status.State, api.TaskStateFailed))
	assert.Check(t, is.Contains(tk.Status.Err, "missed 3 health checks in a row"))
	assert.NilError(t, e.m.Unhang(id))

	next := newTask(t, "task-2", "svc-a", pluginSpec(v1))
	nc := e.healthController(next, fastCheck)
	e.runTo(next, nc, api.TaskStateRunning)
	st := e.m.Process(id)
	assert.Check(t, is.Equal(st.Starts, 1), "restarted although it answered: %+v", st)
	assert.Check(t, is.Equal(st.Stops, 0), "restarted although it answered: %+v", st)
	e.assertRunning(e.get(pluginName))
	e.retire(c)
	e.retire(nc)
	e.assertGone(pluginName, id)
}

// A healthy plugin is never restarted: its task waits through 200 checks
// (every 5 ms) that all get an answer, and keeps waiting.
func TestHealthHealthyPluginIsNeverRestarted(t *testing.T) {
	e := newEnv(t)
	tk := newTask(t, "task-1", "svc-a", pluginSpec(v1))
	c := e.healthController(tk, plugin.HealthCheck{Interval: 5 * time.Millisecond, Timeout: 200 * time.Millisecond, Threshold: 1})
	e.runTo(tk, c, api.TaskStateRunning)
	id := e.get(pluginName).GetID()

	w := e.wait(tk, c)
	start := time.Now()
	st := e.waitProcess(id, "200 health checks", func(st rm.ProcessStats) bool { return st.Activations >= 201 })
	t.Logf("200 checks in %v; process %+v", time.Since(start).Round(time.Millisecond), st)
	select {
	case r := <-w.res:
		w.res <- r
		t.Fatalf("Wait returned during the checks: %v, status %+v", r.err, r.status)
	default:
	}
	w.cancel()
	assert.Check(t, is.ErrorIs(e.result(tk, w), exec.ErrTaskRetry))
	assert.Check(t, is.Equal(tk.Status.State, api.TaskStateRunning))
	st = e.m.Process(id)
	assert.Check(t, is.Equal(st.Starts, 1))
	assert.Check(t, is.Equal(st.Stops, 0))
	assert.Check(t, is.Equal(st.Dropped, 0))
	assert.Check(t, is.Equal(st.Refused, 0))
	e.retire(c)
	e.assertGone(pluginName, id)
}

// The fixture's behaviours as a client sees them, without a Controller:
// refused activations, a busy start, a hang and its end, and that a
// hang belongs to its process (a restart answers).
func TestHealthFixtureBehaviours(t *testing.T) {
	e := newEnv(t)
	tk := newTask(t, "task-1", "svc-a", pluginSpec(v1))
	c := e.healthController(tk, plugin.HealthCheck{}) // no liveness check
	e.runTo(tk, c, api.TaskStateReady)
	p := e.get(pluginName)
	id := p.GetID()
	assert.NilError(t, e.m.SetBehaviour(pluginName, rm.Behaviour{FailActivations: 1, BusyFor: 300 * time.Millisecond}))
	assert.NilError(t, e.m.Enable(pluginName, &backend.PluginEnableConfig{Timeout: 30}))
	sock := p.Addr().String()

	// The Manager's Enable waits about 500 ms before it dials, so the
	// 300 ms of start-up may be over already; a request within them would
	// be held.
	_, err := rm.Activate(context.Background(), sock)
	assert.Check(t, is.ErrorContains(err, "503 Service Unavailable"), "the first activation is refused")
	assert.Check(t, activates(t, sock))
	st := e.m.Process(id)
	assert.Check(t, is.Equal(st.Refused, 1))
	assert.Check(t, is.Equal(st.Activations, 1))

	assert.NilError(t, e.m.Hang(id))
	_, err = rm.Activate(shortCtx(t), sock)
	assert.Check(t, errors.Is(err, context.DeadlineExceeded), "a hung plugin answered: %v", err)
	held := make(chan error, 1)
	go func() {
		_, err := rm.Activate(context.Background(), sock)
		held <- err
	}()
	e.waitProcess(id, "a held request", func(st rm.ProcessStats) bool { return st.Held-st.Dropped == 1 && st.Requests == 4 })
	assert.NilError(t, e.m.Unhang(id))
	assert.Check(t, <-held, "the held request is answered once the hang ends")

	assert.NilError(t, e.m.Hang(id))
	assert.NilError(t, e.m.SimulateExit(id)) // a crash: the Manager starts it again
	st = e.m.Process(id)
	assert.Check(t, is.Equal(st.Starts, 2))
	assert.Check(t, is.Equal(st.Stops, 1))
	_, err = rm.Activate(context.Background(), sock)
	assert.Check(t, is.ErrorContains(err, "503"), "the new process starts as its Behaviour says")
	assert.Check(t, activates(t, sock), "the new process is not hung")
	assert.Check(t, is.ErrorContains(e.m.Hang(strings.Repeat("0", 64)), "not running"))

	e.retire(c)
	e.assertGone(pluginName, id)
}

// shortCtx is a context for a request that a hung plugin must not answer.
func shortCtx(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	t.Cleanup(cancel)
	return ctx
}
