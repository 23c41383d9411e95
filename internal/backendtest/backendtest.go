// Package backendtest is a conformance suite for implementations of the
// controller's Backend and Setter interfaces. It asserts the rules of moby's
// plugin.Manager that a controller observes, so that the real
// *plugin.Manager and the plugintest fake can both be checked against it.
//
// The suite asserts only what both must satisfy: error classes through
// github.com/containerd/errdefs, key words of the messages, event sequences
// received through SubscribeEvents and reference counts through the
// *v2.Plugin Get returns. It does not read plugin state racily, but it is
// meant to be run under -race only against the fake: the real Manager's
// pull path races by itself.
package backendtest

import (
	"context"
	"fmt"
	"regexp"
	"slices"
	"testing"
	"time"

	cerrdefs "github.com/containerd/errdefs"
	"github.com/distribution/reference"
	"github.com/docker/docker/api/types"
	"github.com/docker/docker/api/types/backend"
	"github.com/docker/docker/api/types/registry"
	"github.com/docker/docker/plugin"
	v2 "github.com/docker/docker/plugin/v2"
	swarmplugin "github.com/seed-e85c93d5/plugin"
	"gotest.tools/v3/assert"
	is "gotest.tools/v3/assert/cmp"
)

// Env is what a scenario runs against.
type Env struct {
	// Backend is a fresh backend with no plugin installed.
	Backend interface {
		swarmplugin.Backend
		swarmplugin.Setter
	}
	// V1 and V2 are two versions (same repository, different tags) of a
	// plugin that needs no privileges, e.g. "127.0.0.1:5000/vol:v1".
	V1, V2 string
	// Priv is a plugin remote that requires privileges.
	Priv string
	// PrivPrivileges is exactly what Priv requires.
	PrivPrivileges types.PluginPrivileges
	// Missing is a remote that does not exist in the registry.
	Missing string
	// SettableEnv and FixedEnv are keys of environment variables that
	// V1's config declares, with a default value: SettableEnv with
	// "settable": ["value"], FixedEnv without "settable". The Set
	// scenario needs both.
	SettableEnv, FixedEnv string
}

// eventTimeout bounds the wait for an event that must arrive. Backends
// publish before the call that causes the event returns, so it only
// matters when a backend is broken.
const eventTimeout = 10 * time.Second

// scenario is one subtest of the suite.
type scenario struct {
	name string
	run  func(t *testing.T, e Env)
}

// Run runs every scenario of the suite as a subtest of t, each against a
// fresh Env returned by newEnv (which may register cleanups on its t).
// Scenarios run sequentially.
func Run(t *testing.T, newEnv func(t *testing.T) Env) {
	for _, sc := range scenarios {
		t.Run(sc.name, func(t *testing.T) {
			sc.run(t, newEnv(t))
		})
	}
}

var scenarios = []scenario{
	{"PullNormalisesName", testPullNormalisesName},
	{"PullAppliesCreateOpts", testPullAppliesCreateOpts},
	{"PullRefusesExistingName", testPullRefusesExistingName},
	{"PullChecksPrivileges", testPullChecksPrivileges},
	{"PullMissingRemote", testPullMissingRemote},
	{"GetUnknown", testGetUnknown},
	{"GetAmbiguousPrefix", testGetAmbiguousPrefix},
	{"RefCountIsShared", testRefCountIsShared},
	{"EnableDisable", testEnableDisable},
	{"DisableInUse", testDisableInUse},
	{"RemoveRules", testRemoveRules},
	{"Upgrade", testUpgrade},
	{"EventFilter", testEventFilter},
	{"Set", testSet},
}

var fullID = regexp.MustCompile(`^[a-f0-9]{64}$`)

func parse(t *testing.T, ref string) reference.Named {
	t.Helper()
	named, err := reference.ParseNormalizedNamed(ref)
	assert.NilError(t, err)
	return named
}

func pull(e Env, remote, name string, privileges types.PluginPrivileges, opts ...plugin.CreateOpt) error {
	ref, err := reference.ParseNormalizedNamed(remote)
	if err != nil {
		return err
	}
	return e.Backend.Pull(context.Background(), ref, name, nil, &registry.AuthConfig{}, privileges, nil, opts...)
}

func mustPull(t *testing.T, e Env, remote, name string, opts ...plugin.CreateOpt) *v2.Plugin {
	t.Helper()
	assert.NilError(t, pull(e, remote, name, nil, opts...))
	p, err := e.Backend.Get(name)
	assert.NilError(t, err)
	return p
}

func enable(e Env, name string) error {
	return e.Backend.Enable(name, &backend.PluginEnableConfig{Timeout: 30})
}

func disable(e Env, name string, force bool) error {
	return e.Backend.Disable(name, &backend.PluginDisableConfig{ForceDisable: force})
}

func remove(e Env, name string, force bool) error {
	return e.Backend.Remove(name, &backend.PluginRmConfig{ForceRemove: force})
}

// subscribe subscribes with a buffer large enough for any scenario and
// cancels (twice: cancel must be idempotent) at the end of the test.
func subscribe(t *testing.T, e Env, watch ...plugin.Event) <-chan interface{} {
	ch, cancel := e.Backend.SubscribeEvents(64, watch...)
	t.Cleanup(func() {
		cancel()
		cancel()
	})
	return ch
}

// next returns the next event of ch, failing the test if none comes.
func next(t *testing.T, ch <-chan interface{}) interface{} {
	t.Helper()
	timer := time.NewTimer(eventTimeout)
	defer timer.Stop()
	select {
	case ev, ok := <-ch:
		assert.Assert(t, ok, "event channel closed")
		return ev
	case <-timer.C:
		t.Fatalf("no event within %v", eventTimeout)
		return nil
	}
}

func assertConflict(t *testing.T, err error, words string) {
	t.Helper()
	assert.Assert(t, cerrdefs.IsConflict(err), "want a Conflict error, got %v (%T)", err, err)
	assert.ErrorContains(t, err, words)
}

func assertNotFound(t *testing.T, err error) {
	t.Helper()
	assert.Assert(t, cerrdefs.IsNotFound(err), "want a NotFound error, got %v (%T)", err, err)
}

func testPullNormalisesName(t *testing.T, e Env) {
	ref := parse(t, e.V1)
	assert.NilError(t, e.Backend.Pull(context.Background(), ref, "conf", nil, &registry.AuthConfig{}, nil, nil))

	p, err := e.Backend.Get("conf")
	assert.NilError(t, err)
	assert.Check(t, is.Equal(p.Name(), "conf:latest"))
	assert.Check(t, is.Equal(p.PluginObj.PluginReference, ref.String()))
	assert.Check(t, fullID.MatchString(p.GetID()), "ID %q", p.GetID())
	assert.Check(t, !p.IsEnabled())

	for _, name := range []string{"conf:latest", "docker.io/library/conf:latest", p.GetID(), p.GetID()[:12]} {
		got, err := e.Backend.Get(name)
		if assert.Check(t, err == nil, "Get(%q): %v", name, err) {
			assert.Check(t, got == p, "Get(%q) returned another object", name)
		}
	}
}

func testPullAppliesCreateOpts(t *testing.T, e Env) {
	p := mustPull(t, e, e.V1, "conf", plugin.WithSwarmService("svc-1"), plugin.WithEnv([]string{"BACKENDTEST=1"}))
	assert.Check(t, is.Equal(p.SwarmServiceID, "svc-1"))
	assert.Check(t, is.Contains(p.PluginObj.Settings.Env, "BACKENDTEST=1"))
}

func testPullRefusesExistingName(t *testing.T, e Env) {
	p := mustPull(t, e, e.V1, "conf")
	for _, name := range []string{"conf", "conf:latest"} {
		err := pull(e, e.V2, name, nil)
		assertConflict(t, err, "plugin conf:latest already exists")
		// moby wraps the conflict in errdefs.InvalidParameter.
		assert.Check(t, cerrdefs.IsInvalidArgument(err), "%v", err)
	}
	got, err := e.Backend.Get("conf")
	assert.NilError(t, err)
	assert.Check(t, got == p)
	assert.Check(t, is.Equal(got.PluginObj.PluginReference, parse(t, e.V1).String()))
}

func testPullChecksPrivileges(t *testing.T, e Env) {
	err := pull(e, e.Priv, "priv", nil)
	assert.ErrorContains(t, err, "incorrect privileges")
	_, err = e.Backend.Get("priv")
	assertNotFound(t, err)

	assert.NilError(t, pull(e, e.Priv, "priv", e.PrivPrivileges))
	_, err = e.Backend.Get("priv")
	assert.NilError(t, err)
}

func testPullMissingRemote(t *testing.T, e Env) {
	// The class of the error depends on the registry; only failure counts.
	assert.Assert(t, pull(e, e.Missing, "missing", nil) != nil)
	_, err := e.Backend.Get("missing")
	assertNotFound(t, err)
}

func testGetUnknown(t *testing.T, e Env) {
	mustPull(t, e, e.V1, "conf")

	_, err := e.Backend.Get("nope")
	assertNotFound(t, err)
	assert.Check(t, is.Error(err, `plugin "nope" not found`))

	for _, name := range []string{"", "nope:v2", "Not A Reference", "0000000000000000000000000000000000000000000000000000000000000000"} {
		_, err := e.Backend.Get(name)
		assertNotFound(t, err)
	}
}

func testGetAmbiguousPrefix(t *testing.T, e Env) {
	// Random IDs: by the pigeonhole principle, two of 17 plugins share
	// their first hex digit; usually a handful of pulls is enough.
	byFirst := map[byte]string{}
	var prefix string
	for i := 0; prefix == "" && i < 17; i++ {
		p := mustPull(t, e, e.V1, fmt.Sprintf("amb%d", i))
		id := p.GetID()
		if _, ok := byFirst[id[0]]; ok {
			prefix = id[:1]
		}
		byFirst[id[0]] = id
	}
	assert.Assert(t, prefix != "")

	_, err := e.Backend.Get(prefix)
	assert.Assert(t, cerrdefs.IsInvalidArgument(err), "want InvalidParameter, got %v", err)
	assert.ErrorContains(t, err, "multiple plugins found")

	id := byFirst[prefix[0]]
	p, err := e.Backend.Get(id[:20])
	assert.NilError(t, err)
	assert.Check(t, is.Equal(p.GetID(), id))
}

func testRefCountIsShared(t *testing.T, e Env) {
	p1 := mustPull(t, e, e.V1, "conf")
	p2, err := e.Backend.Get(p1.GetID())
	assert.NilError(t, err)
	assert.Assert(t, p1 == p2)

	p1.Acquire()
	assert.Check(t, is.Equal(p2.GetRefCount(), 1))
	p2.Release()
	p2.Release() // no lower bound
	assert.Check(t, is.Equal(p1.GetRefCount(), -1))
	p1.Acquire()
	assert.Check(t, is.Equal(p1.GetRefCount(), 0))
}

func testEnableDisable(t *testing.T, e Env) {
	p := mustPull(t, e, e.V1, "conf")
	events := subscribe(t, e)

	assert.NilError(t, enable(e, "conf"))
	assert.Check(t, p.IsEnabled())
	ev, ok := next(t, events).(plugin.EventEnable)
	assert.Assert(t, ok, "want EventEnable")
	assert.Check(t, is.Equal(ev.Plugin.ID, p.GetID()))
	assert.Check(t, ev.Plugin.Enabled)

	assertConflict(t, enable(e, "conf"), "already enabled")

	assert.NilError(t, disable(e, "conf", false))
	assert.Check(t, !p.IsEnabled())
	dev, ok := next(t, events).(plugin.EventDisable)
	assert.Assert(t, ok, "want EventDisable")
	assert.Check(t, is.Equal(dev.Plugin.ID, p.GetID()))
	assert.Check(t, !dev.Plugin.Enabled)

	assertConflict(t, disable(e, "conf", false), "already disabled")
	assertConflict(t, disable(e, "conf", true), "already disabled")

	assertNotFound(t, enable(e, "nope"))
	assertNotFound(t, disable(e, "nope", true))
}

func testDisableInUse(t *testing.T, e Env) {
	p := mustPull(t, e, e.V1, "conf")
	assert.NilError(t, enable(e, "conf"))
	p.Acquire()
	defer p.Release()

	assertConflict(t, disable(e, "conf", false), "is in use")
	assert.Check(t, p.IsEnabled())

	assert.NilError(t, disable(e, "conf", true))
	assert.Check(t, !p.IsEnabled())
	assert.Check(t, is.Equal(p.GetRefCount(), 1))
}

func testRemoveRules(t *testing.T, e Env) {
	p := mustPull(t, e, e.V1, "conf")

	p.Acquire()
	assertConflict(t, remove(e, "conf", false), "is in use")
	p.Release()

	assert.NilError(t, enable(e, "conf"))
	assertConflict(t, remove(e, "conf", false), "is enabled")

	// A forced Remove disables first without publishing EventDisable: the
	// next event is EventRemove.
	events := subscribe(t, e)
	assert.NilError(t, remove(e, "conf", true))
	ev, ok := next(t, events).(plugin.EventRemove)
	assert.Assert(t, ok, "want EventRemove")
	assert.Check(t, is.Equal(ev.Plugin.ID, p.GetID()))
	assert.Check(t, !ev.Plugin.Enabled)
	assert.Check(t, !p.IsEnabled())

	_, err := e.Backend.Get("conf")
	assertNotFound(t, err)
	assertNotFound(t, remove(e, "conf", true))

	// Not enabled, not in use: a plain Remove works.
	mustPull(t, e, e.V2, "conf")
	assert.NilError(t, remove(e, "conf", false))
}

func testUpgrade(t *testing.T, e Env) {
	p := mustPull(t, e, e.V1, "conf")
	id := p.GetID()
	v2ref := parse(t, e.V2)
	upgrade := func(ref reference.Named, name string) error {
		return e.Backend.Upgrade(context.Background(), ref, name, nil, &registry.AuthConfig{}, nil, nil)
	}

	assert.NilError(t, enable(e, "conf"))
	assertConflict(t, upgrade(v2ref, "conf"), "must be disabled before upgrading")

	assert.NilError(t, disable(e, "conf", false))
	p.Acquire() // Upgrade does not care about references
	defer p.Release()
	assert.NilError(t, upgrade(v2ref, "conf"))

	got, err := e.Backend.Get("conf")
	assert.NilError(t, err)
	assert.Check(t, got == p)
	assert.Check(t, is.Equal(got.GetID(), id))
	assert.Check(t, is.Equal(got.PluginObj.PluginReference, v2ref.String()))
	assert.Check(t, is.Equal(got.GetRefCount(), 1))
	assert.Check(t, !got.IsEnabled())

	assert.Check(t, upgrade(parse(t, e.Missing), "conf") != nil)
	assert.Check(t, is.Equal(got.PluginObj.PluginReference, v2ref.String()))

	assertNotFound(t, upgrade(v2ref, "nope"))
}

func testEventFilter(t *testing.T, e Env) {
	all := subscribe(t, e)
	a := mustPull(t, e, e.V1, "a")
	b := mustPull(t, e, e.V1, "b")

	for _, p := range []*v2.Plugin{a, b} {
		ev, ok := next(t, all).(plugin.EventCreate)
		assert.Assert(t, ok, "want EventCreate")
		assert.Check(t, is.Equal(ev.Plugin.ID, p.GetID()))
		assert.Check(t, is.Equal(ev.Plugin.Name, p.Name()))
	}

	obj := types.Plugin{ID: a.GetID()}
	watched := subscribe(t, e, plugin.EventEnable{Plugin: obj}, plugin.EventRemove{Plugin: obj})
	none := subscribe(t, e, []plugin.Event{}...)

	assert.NilError(t, enable(e, "b"))
	assert.NilError(t, enable(e, "a"))
	assert.NilError(t, disable(e, "a", false))
	assert.NilError(t, remove(e, "b", true))
	assert.NilError(t, remove(e, "a", false))

	ev, ok := next(t, watched).(plugin.EventEnable)
	assert.Assert(t, ok, "want EventEnable of a first")
	assert.Check(t, is.Equal(ev.Plugin.ID, a.GetID()))
	rev, ok := next(t, watched).(plugin.EventRemove)
	assert.Assert(t, ok, "want EventRemove of a next")
	assert.Check(t, is.Equal(rev.Plugin.ID, a.GetID()))

	var kinds []string
	for range 5 {
		kinds = append(kinds, fmt.Sprintf("%T", next(t, all)))
	}
	assert.Check(t, is.DeepEqual(kinds, []string{
		"plugin.EventEnable", "plugin.EventEnable", "plugin.EventDisable", "plugin.EventRemove", "plugin.EventRemove",
	}))

	// Publishing is done when the call returns, so anything that matched
	// an empty, non-nil watch list would be buffered by now.
	select {
	case ev := <-none:
		t.Errorf("an empty watch list received %T", ev)
	default:
	}

	// cancel closes the channel, and may be called again.
	ch, cancel := e.Backend.SubscribeEvents(1)
	cancel()
	cancel()
	for range ch {
	}
}

// testSet checks the rules of moby's Manager.Set (v2.Plugin.Set), which
// decide which env changes of a service spec can reach an installed
// plugin: the plugin must be disabled, and each key declared by its config
// with a settable value. An arg without "=" is a key like any other, so an
// undeclared one is not found.
func testSet(t *testing.T, e Env) {
	assert.Assert(t, e.SettableEnv != "" && e.FixedEnv != "", "the Env must name a settable and a fixed env key of V1")
	assertNotFound(t, e.Backend.Set("nope", []string{"A=1"}))

	p := mustPull(t, e, e.V1, "conf")
	assert.NilError(t, enable(e, "conf"))
	err := e.Backend.Set("conf", []string{e.SettableEnv + "=1"})
	assert.ErrorContains(t, err, "cannot set on an active plugin")
	assert.NilError(t, disable(e, "conf", false))
	before := slices.Clone(p.PluginObj.Settings.Env)
	assert.Check(t, !slices.Contains(before, e.SettableEnv+"=1"))

	for _, tc := range []struct {
		arg  string
		want string
	}{
		{"foo=1", `setting "foo" not found in the plugin configuration`},
		{"baz", `setting "baz" not found in the plugin configuration`},
		{e.FixedEnv + "=changed", fmt.Sprintf("%q is not settable", e.FixedEnv)},
	} {
		err := e.Backend.Set("conf", []string{tc.arg})
		assert.Check(t, is.ErrorContains(err, tc.want), "Set(%q)", tc.arg)
	}
	assert.Check(t, is.DeepEqual(p.PluginObj.Settings.Env, before), "a refused Set changed the settings")

	assert.NilError(t, e.Backend.Set("conf", []string{e.SettableEnv + "=1"}))
	assert.Check(t, is.Contains(mustGet(t, e, "conf").PluginObj.Settings.Env, e.SettableEnv+"=1"))
	assert.Check(t, is.Len(p.PluginObj.Settings.Env, len(before)), "Set replaces the setting, adds none")
}

func mustGet(t *testing.T, e Env, name string) *v2.Plugin {
	t.Helper()
	p, err := e.Backend.Get(name)
	assert.NilError(t, err)
	return p
}
