package plugin_test

// Options, logging, credentials, and a whole task fuzzed.

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"strings"
	"sync"
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
	"github.com/moby/swarmkit/v2/agent/exec"
	"github.com/sirupsen/logrus"
	"gotest.tools/v3/assert"

	plugin "github.com/seed-e85c93d5/plugin"
	"github.com/seed-e85c93d5/plugin/plugintest"
)

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
