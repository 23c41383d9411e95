// These tests drive moby's real *plugin.Manager, whose own Pull and Push
// progress code has data races (NOTES.md, "Reference count and state"): under
// -race they would fail for reasons outside this repository, so they are
// excluded from race builds. The plugin.Manager fixture is linux-only.

//go:build linux && !race

// Package realmanager_test runs our Controller against moby's real
// *plugin.Manager and a real OCI registry on loopback, driving swarmkit
// tasks through exec.Do the way the agent does. It holds only tests.
package realmanager_test

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	cerrdefs "github.com/containerd/errdefs"
	"github.com/containerd/log"
	"github.com/docker/docker/api/types/swarm/runtime"
	mobyplugin "github.com/docker/docker/plugin"
	v2 "github.com/docker/docker/plugin/v2"
	"github.com/moby/swarmkit/v2/agent/exec"
	"github.com/moby/swarmkit/v2/api"
	"github.com/sirupsen/logrus"
	"go.uber.org/goleak"
	"gotest.tools/v3/assert"

	plugin "github.com/seed-e85c93d5/plugin"
	rm "github.com/seed-e85c93d5/plugin/internal/realmanager"
	"github.com/seed-e85c93d5/plugin/plugintest"
)

// patience bounds every wait for a signal, so a broken scenario fails
// instead of hanging the test binary.
const patience = 60 * time.Second

// pluginName is the name every scenario's service gives its plugin (the
// service spec's PluginSpec.Name), distinct from the remotes so that an
// upgrade keeps the name.
const pluginName = "itest/vol"

// The registry and the standard plugins, shared by every test of the binary
// and published on first use (see fixture).
var (
	fixtureOnce sync.Once
	fixtureErr  error
	reg         *rm.Registry
	v1, v2ref   string // the standard plugins v1 and v2 of one repository
	priv        string // the standard plugin that requires privileges
	missing     string // a reference the registry does not have
)

// testMain closes the shared registry after the tests and before goleak
// looks for leaked goroutines: closing it also closes the idle keep-alive
// connections of moby's registry clients, whose goroutines then end.
type testMain struct{ m *testing.M }

func (tm testMain) Run() int {
	code := tm.m.Run()
	if reg != nil {
		if err := reg.Close(); err != nil {
			fmt.Fprintln(os.Stderr, "closing the registry:", err)
			code = 1
		}
	}
	return code
}

func TestMain(m *testing.M) {
	// moby logs through the standard logger (registry fallbacks at info
	// level); each test routes its Controller's and exec.Do's logs to t.Log
	// through the context instead (see newEnv).
	_ = log.SetLevel("warn")
	// No ignore needed: every Controller, Wait and event forwarder is
	// joined by the test that started it, each Manager is closed by its
	// test, the "go pm.GC()" that a Remove starts ends within milliseconds
	// (goleak retries), and the registry's Close ends the keep-alive
	// connections.
	goleak.VerifyTestMain(testMain{m})
}

// fixture skips t when the real Manager cannot run here, and otherwise
// starts the shared registry and publishes the standard plugins once.
func fixture(t *testing.T) {
	t.Helper()
	rm.SkipUnsupported(t)
	fixtureOnce.Do(func() {
		r, err := rm.StartRegistry()
		if err != nil {
			fixtureErr = err
			return
		}
		reg = r
		d1, d2, dp := rm.StandardPlugins()
		start := time.Now()
		if err := rm.Publish(context.Background(), reg.Host(), d1, d2, dp); err != nil {
			fixtureErr = fmt.Errorf("publishing the standard plugins: %w", err)
			return
		}
		t.Logf("published the standard plugins to %s in %v", reg.Host(), time.Since(start).Round(time.Millisecond))
		v1, v2ref, priv = d1.Ref(reg.Host()), d2.Ref(reg.Host()), dp.Ref(reg.Host())
		missing = reg.Host() + "/realmanager/missing:v1"
	})
	assert.NilError(t, fixtureErr)
}

// env is one scenario's node: a fresh real Manager and the Backend every
// Controller of the scenario shares (as every Controller of a node shares
// the daemon's Manager).
type env struct {
	t   *testing.T
	ctx context.Context // carries a logger that writes to t.Log
	m   *rm.Manager
	b   *signallingBackend
}

func newEnv(t *testing.T) *env {
	t.Helper()
	fixture(t)
	m, err := rm.NewManager()
	assert.NilError(t, err)
	t.Cleanup(func() { assert.Check(t, m.Close()) })
	b := &signallingBackend{Manager: m, waiting: make(chan string, 16)}
	t.Cleanup(b.forwarders.Wait) // runs before m.Close

	l := logrus.New()
	l.SetOutput(testWriter{t})
	l.SetFormatter(&quietFormatter{})
	l.SetLevel(logrus.DebugLevel)
	return &env{t: t, ctx: log.WithLogger(context.Background(), logrus.NewEntry(l)), m: m, b: b}
}

// testWriter sends each log line to t.Log, so that the logs of a scenario
// show only when it fails or with -v.
type testWriter struct{ t *testing.T }

func (w testWriter) Write(p []byte) (int, error) {
	if line := strings.TrimRight(string(p), "\n"); line != "" {
		w.t.Log(line)
	}
	return len(p), nil
}

// quietFormatter keeps the Controller's debug lines (each Controller step)
// and drops the debug lines of moby's registry client, which log every
// request of a pull.
type quietFormatter struct{ logrus.TextFormatter }

func (f *quietFormatter) Format(e *logrus.Entry) ([]byte, error) {
	if _, ours := e.Data["controller"]; !ours && e.Level > logrus.InfoLevel {
		return nil, nil
	}
	return f.TextFormatter.Format(e)
}

// signallingBackend is the real Manager (every method is its own, promoted
// from the embedded *plugin.Manager, Set included) except that
// SubscribeEvents reports when the subscriber is ready to receive.
//
// A Wait subscribes to the plugin's events, then checks the plugin's state,
// then blocks receiving; a disable that lands between the subscription and
// the check makes Wait fail with "mismatched plugin state" instead of
// "plugin disabled". No signal of the Manager tells when that window has
// passed, so the subscription hands the subscriber a probe first, over an
// unbuffered channel: the probe is taken only once the subscriber receives,
// after its state check. The probe is of a type the Controller does not
// watch, and it ignores it like any event that does not contradict the
// spec. Then each subscription sends one value on waiting.
type signallingBackend struct {
	*rm.Manager
	waiting    chan string // one value per subscriber that started receiving
	forwarders sync.WaitGroup
}

type waitProbe struct{}

func (b *signallingBackend) SubscribeEvents(buffer int, events ...mobyplugin.Event) (<-chan interface{}, func()) {
	in, cancelIn := b.Manager.SubscribeEvents(buffer, events...)
	out := make(chan interface{})
	done := make(chan struct{})
	var once sync.Once
	cancel := func() {
		once.Do(func() {
			close(done)
			cancelIn()
		})
	}
	b.forwarders.Add(1)
	go func() {
		defer b.forwarders.Done()
		defer close(out)
		select {
		case out <- waitProbe{}:
		case <-done:
			return
		}
		select {
		case b.waiting <- "":
		case <-done:
			return
		}
		for {
			select {
			case e, ok := <-in:
				if !ok {
					return
				}
				select {
				case out <- e:
				case <-done:
					return
				}
			case <-done:
				return
			}
		}
	}()
	return out, cancel
}

// newTask builds a task of a plugin service the way the Docker daemon
// encodes it, as the agent receives it: ASSIGNED, desired RUNNING.
func newTask(t *testing.T, id, service string, spec runtime.PluginSpec) *api.Task {
	t.Helper()
	tk := plugintest.NewTask(id, service, spec)
	tk.DesiredState = api.TaskStateRunning
	tk.Status = api.TaskStatus{State: api.TaskStateAssigned}
	return tk
}

// controller returns a Controller for tk on the scenario's node, as the
// executor does.
func (e *env) controller(tk *api.Task) *plugin.Controller {
	e.t.Helper()
	c, err := plugin.New(e.b, tk)
	assert.NilError(e.t, err)
	return c
}

// do runs one exec.Do step and records the status in the task, as the
// agent's task manager does.
func (e *env) do(tk *api.Task, c exec.Controller) error {
	e.t.Helper()
	st, err := exec.Do(e.ctx, tk, c)
	if st != nil {
		tk.Status = *st
	}
	return err
}

// runTo drives tk with exec.Do from its state up to target, every step a
// success. Reaching RUNNING does not call Wait (see (*env).wait).
func (e *env) runTo(tk *api.Task, c exec.Controller, target api.TaskState) {
	e.t.Helper()
	for tk.Status.State < target {
		before := tk.Status.State
		err := e.do(tk, c)
		assert.NilError(e.t, err, "exec.Do in %s (status error %q)", before, tk.Status.Err)
		assert.Assert(e.t, tk.Status.State > before, "exec.Do in %s did not advance: %s %q", before, tk.Status.State, tk.Status.Err)
		assert.Equal(e.t, tk.Status.Err, "", "exec.Do in %s", before)
	}
	assert.Equal(e.t, tk.Status.State, target)
}

// waiting is an exec.Do in RUNNING, that is, a Controller's Wait, running in
// the background.
type waiting struct {
	res    chan doResult
	cancel context.CancelFunc
}

type doResult struct {
	status *api.TaskStatus
	err    error
}

// wait starts exec.Do for tk, which must be RUNNING, and returns once the
// Controller's Wait is receiving the plugin's events. The test must not
// touch tk until it has called result.
func (e *env) wait(tk *api.Task, c exec.Controller) *waiting {
	e.t.Helper()
	assert.Equal(e.t, tk.Status.State, api.TaskStateRunning)
	ctx, cancel := context.WithCancel(e.ctx)
	w := &waiting{res: make(chan doResult, 1), cancel: cancel}
	done := make(chan struct{})
	go func() {
		defer close(done)
		st, err := exec.Do(ctx, tk, c)
		w.res <- doResult{st, err}
	}()
	e.t.Cleanup(func() { cancel(); <-done })
	select {
	case <-e.b.waiting:
	case r := <-w.res:
		w.res <- r
		e.t.Fatalf("exec.Do in RUNNING returned before its Wait received events: %v, status %+v", r.err, r.status)
	case <-time.After(patience):
		e.t.Fatal("Wait did not subscribe to the plugin's events")
	}
	return w
}

// result waits for the background exec.Do and records its status in tk.
func (e *env) result(tk *api.Task, w *waiting) error {
	e.t.Helper()
	select {
	case r := <-w.res:
		if r.status != nil {
			tk.Status = *r.status
		}
		return r.err
	case <-time.After(patience):
		e.t.Fatal("exec.Do in RUNNING (Wait) did not return")
		return nil
	}
}

// retire ends tk's life on its node the way the worker does once the task
// is no longer assigned (closeManager): Remove, then Close.
func (e *env) retire(c exec.Controller) {
	e.t.Helper()
	assert.NilError(e.t, c.Remove(e.ctx), "Remove")
	assert.NilError(e.t, c.Close(), "Close")
}

// shutdown does what the agent does when tk's desired state becomes
// SHUTDOWN (a service update with stop-first, or a scale-down): exec.Do
// calls Shutdown and the task reaches SHUTDOWN.
func (e *env) shutdown(tk *api.Task, c exec.Controller) {
	e.t.Helper()
	tk.DesiredState = api.TaskStateShutdown
	assert.NilError(e.t, e.do(tk, c))
	assert.Equal(e.t, tk.Status.State, api.TaskStateShutdown)
}

// get returns the installed plugin called name, failing the test if there
// is none.
func (e *env) get(name string) *v2.Plugin {
	e.t.Helper()
	p, err := e.m.Get(name)
	assert.NilError(e.t, err)
	return p
}

// assertGone checks that no plugin called name is installed and that the
// directory of the plugin with the given ID is gone from the Manager's root
// (moby keeps each plugin in <Root>/<id>: plugin/backend_linux.go, Remove).
func (e *env) assertGone(name, id string) {
	e.t.Helper()
	_, err := e.m.Get(name)
	assert.Check(e.t, cerrdefs.IsNotFound(err), "plugin %s still installed: %v", name, err)
	assert.Check(e.t, id != "")
	_, err = os.Stat(e.pluginDir(id))
	assert.Check(e.t, os.IsNotExist(err), "plugin directory %s: %v", e.pluginDir(id), err)
}

func (e *env) pluginDir(id string) string { return filepath.Join(e.m.Root(), id) }

// assertRunning checks that the plugin is enabled, that the fake executor
// runs it and that it answers /Plugin.Activate on its socket.
func (e *env) assertRunning(p *v2.Plugin) {
	e.t.Helper()
	assert.Check(e.t, p.IsEnabled(), "plugin %s is not enabled", p.Name())
	assert.Assert(e.t, e.m.Running(p.GetID()), "plugin %s is not running", p.Name())
	assert.Check(e.t, activates(e.t, p.Addr().String()), "plugin %s does not answer /Plugin.Activate as a volume driver", p.Name())
}

// activates calls the fake plugin's /Plugin.Activate over its unix socket
// and reports whether it answers as a volume driver.
func activates(t *testing.T, sock string) bool {
	t.Helper()
	ar, err := rm.Activate(context.Background(), sock)
	return assert.Check(t, err) && len(ar.Implements) == 1 && ar.Implements[0] == "VolumeDriver"
}

func pluginSpec(remote string) runtime.PluginSpec {
	return runtime.PluginSpec{Name: pluginName, Remote: remote}
}
