package plugin_test

// Env, digests and failed upgrades: what reaches an installed plugin, and
// what the Manager's Set cannot take.

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"
	"testing"

	cerrdefs "github.com/containerd/errdefs"
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
	is "gotest.tools/v3/assert/cmp"

	plugin "github.com/seed-e85c93d5/plugin"
	"github.com/seed-e85c93d5/plugin/plugintest"
)

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
