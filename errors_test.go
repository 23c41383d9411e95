package plugin_test

// Errors swarmkit can act on: classified, temporary where retrying helps,
// and steps cut short by their context.

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"
	"sync"
	"syscall"
	"testing"

	cerrdefs "github.com/containerd/errdefs"
	"github.com/distribution/reference"
	"github.com/docker/docker/api/types"
	"github.com/docker/docker/api/types/backend"
	"github.com/docker/docker/api/types/registry"
	"github.com/docker/docker/api/types/swarm/runtime"
	dockererrdefs "github.com/docker/docker/errdefs"
	mobyplugin "github.com/docker/docker/plugin"
	v2 "github.com/docker/docker/plugin/v2"
	"github.com/moby/swarmkit/v2/agent/exec"
	"github.com/moby/swarmkit/v2/api"
	swarmlog "github.com/moby/swarmkit/v2/log"
	"github.com/sirupsen/logrus"
	"gotest.tools/v3/assert"
	is "gotest.tools/v3/assert/cmp"

	plugin "github.com/seed-e85c93d5/plugin"
	"github.com/seed-e85c93d5/plugin/plugintest"
)

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

// A spec without Name logs and errs with the name the Manager stores and
// "docker plugin ls" shows ("vol:latest"), not the defaulted remote's full
// form ("docker.io/library/vol").
func TestSpecWithoutNameSpeaksOfTheStoredName(t *testing.T) {
	lg := logrus.New()
	lg.SetOutput(io.Discard)
	lg.SetLevel(logrus.DebugLevel)
	capture := &logCapture{}
	lg.AddHook(capture)
	b := plugintest.NewBackend()
	c := newController(t, b, "task-1", runtime.PluginSpec{Remote: "vol"}, plugin.WithLogger(logrus.NewEntry(lg)))
	assert.NilError(t, c.Prepare(context.Background()))
	p, _, found := state(t, b, "vol")
	assert.Assert(t, found)
	assert.Equal(t, p.Name, "vol:latest")
	assert.Assert(t, len(capture.lines) > 0)
	for _, line := range capture.lines {
		assert.Check(t, strings.Contains(line, "plugin=\"vol:latest\""), line)
		assert.Check(t, !strings.Contains(line, "docker.io/library"), line)
	}
	b.FailNext("Enable", errors.New("enable: no"))
	err := c.Start(context.Background())
	assert.Check(t, is.ErrorContains(err, "error enabling plugin vol:latest"))
	assert.Check(t, !strings.Contains(err.Error(), "docker.io/library"), "%v", err)
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
