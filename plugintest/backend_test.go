package plugintest

import (
	"context"
	"errors"
	"fmt"
	"reflect"
	"regexp"
	"slices"
	"strings"
	"testing"
	"unsafe"

	cerrdefs "github.com/containerd/errdefs"
	"github.com/distribution/reference"
	"github.com/docker/docker/api/types"
	"github.com/docker/docker/api/types/backend"
	"github.com/docker/docker/api/types/registry"
	"github.com/docker/docker/plugin"
	v2 "github.com/docker/docker/plugin/v2"
	"github.com/opencontainers/go-digest"
	"gotest.tools/v3/assert"
	is "gotest.tools/v3/assert/cmp"
)

func parse(t *testing.T, ref string) reference.Named {
	t.Helper()
	named, err := reference.ParseNormalizedNamed(ref)
	assert.NilError(t, err)
	return named
}

func pull(t *testing.T, b *Backend, remote, name string, privileges types.PluginPrivileges, opts ...plugin.CreateOpt) error {
	t.Helper()
	return b.Pull(context.Background(), parse(t, remote), name, nil, &registry.AuthConfig{}, privileges, nil, opts...)
}

func upgrade(t *testing.T, b *Backend, remote, name string, privileges types.PluginPrivileges) error {
	t.Helper()
	return b.Upgrade(context.Background(), parse(t, remote), name, nil, &registry.AuthConfig{}, privileges, nil)
}

func mustPull(t *testing.T, b *Backend, remote, name string, opts ...plugin.CreateOpt) *v2.Plugin {
	t.Helper()
	assert.NilError(t, pull(t, b, remote, name, nil, opts...))
	p, err := b.Get(name)
	assert.NilError(t, err)
	return p
}

var (
	enableConfig  = &backend.PluginEnableConfig{Timeout: 30}
	disableConfig = &backend.PluginDisableConfig{}
	forceDisable  = &backend.PluginDisableConfig{ForceDisable: true}
	removeConfig  = &backend.PluginRmConfig{}
	forceRemove   = &backend.PluginRmConfig{ForceRemove: true}
)

// TestErrors checks the words and classes of every error of the manager
// rules against moby's.
func TestErrors(t *testing.T) {
	b := NewBackend()
	b.AddRemote("priv", Remote{Privileges: types.PluginPrivileges{{Name: "network", Value: []string{"host"}}}})
	b.MissingRemote("missing")
	p := mustPull(t, b, "vol", "vol")
	otherID := mustPull(t, b, "vol", "other").GetID()
	id := p.GetID()
	assert.NilError(t, b.Enable("vol", enableConfig))

	inUse := func(f func() error) error {
		p.Acquire()
		defer p.Release()
		return f()
	}

	type classes struct{ notFound, conflict, invalid bool }
	var (
		unclassified = classes{}
		notFound     = classes{notFound: true}
		conflict     = classes{conflict: true}
		invalid      = classes{invalid: true}
	)
	tests := []struct {
		name    string
		err     error
		msg     string // exact message, or a regexp when it starts with ^
		classes classes
	}{
		{"Get unknown", get(b, "nope"), `plugin "nope" not found`, notFound},
		{"Get empty", get(b, ""), `plugin "" not found`, notFound},
		{"Get canonical", get(b, "vol@sha256:"+id), `plugin "vol@sha256:` + id + `" not found`, notFound},
		{"Get unknown full ID", get(b, strings.Repeat("0", 64)), `plugin "` + strings.Repeat("0", 64) + `" not found`, notFound},
		{
			"Pull existing", pull(t, b, "vol:v2", "vol:latest", nil), "plugin vol:latest already exists",
			classes{conflict: true, invalid: true},
		},
		{"Pull invalid name", pull(t, b, "vol", "Bad Name", nil), `^failed to parse "Bad Name": `, invalid},
		{"Pull privileges", pull(t, b, "priv", "priv", nil), "incorrect privileges", unclassified},
		{
			"Pull missing", pull(t, b, "missing", "missing", nil),
			"error resolving plugin reference: docker.io/library/missing: not found", notFound,
		},
		{"Enable enabled", b.Enable(id[:10], enableConfig), "plugin already enabled: plugin vol:latest is enabled", conflict},
		{"Enable unknown", b.Enable("nope", enableConfig), `plugin "nope" not found`, notFound},
		{"Disable disabled", b.Disable("other", disableConfig), "plugin is already disabled: plugin other:latest found but disabled", conflict},
		{
			"Disable in use", inUse(func() error { return b.Disable("vol", disableConfig) }),
			"plugin vol:latest is in use", conflict,
		},
		{"Remove enabled", b.Remove("vol", removeConfig), "plugin vol:latest is enabled", conflict},
		{
			"Remove in use", inUse(func() error { return b.Remove("vol", removeConfig) }),
			"plugin vol:latest is in use", conflict,
		},
		{
			"Upgrade enabled", upgrade(t, b, "vol:v2", "vol", nil),
			"plugin must be disabled before upgrading: plugin vol:latest is enabled", conflict,
		},
		{"Upgrade by ID", upgrade(t, b, "vol:v2", otherID, nil), `^failed to parse "` + otherID + `": `, invalid},
		{"Upgrade unknown", upgrade(t, b, "vol:v2", "nope", nil), `plugin "nope" not found`, notFound},
		{"Set enabled", b.Set("vol", []string{"DEBUG=1"}), "cannot set on an active plugin, disable plugin before setting", unclassified},
		{"Set unknown", b.Set("nope", nil), `plugin "nope" not found`, notFound},
	}

	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			assert.Assert(t, tc.err != nil)
			if tc.msg[0] == '^' {
				assert.Check(t, is.Regexp(tc.msg, tc.err.Error()))
			} else {
				assert.Check(t, is.Error(tc.err, tc.msg))
			}
			got := classes{
				notFound: cerrdefs.IsNotFound(tc.err),
				conflict: cerrdefs.IsConflict(tc.err),
				invalid:  cerrdefs.IsInvalidArgument(tc.err),
			}
			assert.Check(t, is.Equal(got, tc.classes), "%v", tc.err)
		})
	}

	t.Run("Get ambiguous prefix", func(t *testing.T) {
		b := NewBackend()
		var prefix string
		seen := map[byte]bool{}
		for i := 0; prefix == ""; i++ {
			id := mustPull(t, b, "vol", fmt.Sprintf("amb%d", i)).GetID() // a name like "a" would win over the prefix
			if seen[id[0]] {
				prefix = id[:1]
			}
			seen[id[0]] = true
		}
		err := get(b, prefix)
		assert.Check(t, is.Error(err, `multiple plugins found for "`+prefix+`"`))
		assert.Check(t, cerrdefs.IsInvalidArgument(err))
	})
}

func get(b *Backend, name string) error {
	_, err := b.Get(name)
	return err
}

func TestPullBuildsPluginLikeMoby(t *testing.T) {
	b := NewBackend()
	d := digest.FromString("vol manifest")
	b.AddRemote("docker.io/library/vol:latest", Remote{Env: []string{"DEBUG=0", "MODE=fast"}, Digest: d})
	ref := parse(t, "vol")

	err := b.Pull(context.Background(), ref, "vol", nil, &registry.AuthConfig{}, nil, nil,
		plugin.WithSwarmService("svc-1"), plugin.WithEnv([]string{"DEBUG=1", "ignored"}))
	assert.NilError(t, err)

	p, err := b.Get("vol")
	assert.NilError(t, err)
	assert.Check(t, is.Equal(p.Name(), "vol:latest"))
	assert.Check(t, regexp.MustCompile(`^[a-f0-9]{64}$`).MatchString(p.GetID()))
	assert.Check(t, is.Equal(p.SwarmServiceID, "svc-1"))
	assert.Check(t, is.Equal(p.Manifest, d))
	assert.Check(t, !p.IsEnabled())

	obj, refs, err := b.Plugin("vol")
	assert.NilError(t, err)
	assert.Check(t, is.Equal(refs, 0))
	assert.Check(t, is.Equal(obj.PluginReference, "docker.io/library/vol")) // ref.String(), as moby
	env := slices.Clone(obj.Settings.Env)
	slices.Sort(env)
	assert.Check(t, is.DeepEqual(env, []string{"DEBUG=1", "MODE=fast"}))
	assert.Assert(t, is.Len(obj.Config.Env, 2))
	assert.Check(t, is.Equal(obj.Config.Env[0].Name, "DEBUG"))
	assert.Check(t, is.Equal(*obj.Config.Env[0].Value, "0"))
}

func TestPullWithoutOptsInitialisesSettings(t *testing.T) {
	b := NewBackend()
	b.AddRemote("vol", Remote{Env: []string{"DEBUG=0"}})
	mustPull(t, b, "vol", "vol")
	obj, _, err := b.Plugin("vol")
	assert.NilError(t, err)
	assert.Check(t, is.DeepEqual(obj.Settings.Env, []string{"DEBUG=0"}))
}

func TestPullUnregisteredRemote(t *testing.T) {
	b1, b2 := NewBackend(), NewBackend()
	p1 := mustPull(t, b1, "example/any:1.0", "any")
	p2 := mustPull(t, b2, "example/any:1.0", "any")
	p3 := mustPull(t, b2, "example/any:2.0", "any2")
	assert.Check(t, is.Equal(p1.Manifest, p2.Manifest), "derived deterministically")
	assert.Check(t, p1.Manifest != p3.Manifest)
	assert.Check(t, is.DeepEqual(p1.PluginObj.Config, types.PluginConfig{}))

	err := pull(t, b1, "example/any:1.0", "any3", types.PluginPrivileges{{Name: "network", Value: []string{"host"}}})
	assert.Check(t, is.Error(err, "incorrect privileges"))
}

func TestPullCanonicalRef(t *testing.T) {
	b := NewBackend()
	d := digest.FromString("v1")
	b.AddRemote("vol:v1", Remote{Env: []string{"X=1"}, Digest: d})
	ref := parse(t, "vol@"+d.String())

	assert.NilError(t, b.Pull(context.Background(), ref, "vol", nil, nil, nil, nil))
	obj, _, err := b.Plugin("vol")
	assert.NilError(t, err)
	assert.Check(t, is.DeepEqual(obj.Settings.Env, []string{"X=1"}))
	assert.Check(t, is.Equal(obj.PluginReference, "docker.io/library/vol@"+d.String()))

	// An unregistered digest installs an empty plugin with that manifest.
	other := digest.FromString("other")
	p := mustPull(t, b, "vol@"+other.String(), "other")
	assert.Check(t, is.Equal(p.Manifest, other))
	assert.Check(t, is.Len(p.PluginObj.Settings.Env, 0))
}

func TestPullCancelledContext(t *testing.T) {
	b := NewBackend()
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	err := b.Pull(ctx, parse(t, "vol"), "vol", nil, nil, nil, nil)
	assert.Check(t, errors.Is(err, context.Canceled))
	_, err = b.Get("vol")
	assert.Check(t, cerrdefs.IsNotFound(err))
}

func TestRemotes(t *testing.T) {
	b := NewBackend()
	b.MissingRemote("vol:v1")
	assert.Check(t, cerrdefs.IsNotFound(pull(t, b, "docker.io/library/vol:v1", "vol", nil)))
	b.AddRemote("docker.io/library/vol:v1", Remote{Env: []string{"A=b=c"}})
	p := mustPull(t, b, "vol:v1", "vol")
	assert.Check(t, is.DeepEqual(p.PluginObj.Settings.Env, []string{"A=b=c"}))

	b.MissingRemote("vol:v2")
	assert.Check(t, cerrdefs.IsNotFound(upgrade(t, b, "vol:v2", "vol", nil)))

	assert.Check(t, is.Panics(func() { b.AddRemote("Not Valid", Remote{}) }))
	assert.Check(t, is.Panics(func() { b.MissingRemote("") }))
}

func TestPrivileges(t *testing.T) {
	required := types.PluginPrivileges{
		{Name: "network", Description: "permissions to access a network", Value: []string{"host"}},
		{Name: "mount", Description: "host path to mount", Value: []string{"/data"}},
		{Name: "capabilities", Value: []string{"CAP_NET_ADMIN", "CAP_SYS_ADMIN"}},
		{Name: "host pid namespace", Value: []string{"true"}},
		{Name: "device", Value: []string{"/dev/fuse"}},
		{Name: "allow-all-devices", Value: []string{"true"}},
		{Name: "host ipc namespace", Value: []string{"true"}},
	}
	b := NewBackend()
	b.AddRemote("priv", Remote{Privileges: required})

	t.Run("order and descriptions do not matter", func(t *testing.T) {
		granted := slices.Clone(required)
		slices.Reverse(granted)
		granted[0].Description = "whatever"
		before := copyPrivileges(granted)
		assert.NilError(t, pull(t, b, "priv", "priv", granted))
		assert.Check(t, is.DeepEqual(granted, before), "the caller's slice is left alone")
	})
	t.Run("config reflects them", func(t *testing.T) {
		obj, _, err := b.Plugin("priv")
		assert.NilError(t, err)
		c := obj.Config
		assert.Check(t, is.Equal(c.Network.Type, "host"))
		assert.Check(t, c.IpcHost && c.PidHost && c.Linux.AllowAllDevices)
		assert.Check(t, is.DeepEqual(c.Linux.Capabilities, []string{"CAP_NET_ADMIN", "CAP_SYS_ADMIN"}))
		assert.Assert(t, is.Len(c.Mounts, 1))
		assert.Check(t, is.Equal(*c.Mounts[0].Source, "/data"))
		assert.Assert(t, is.Len(c.Linux.Devices, 1))
		assert.Check(t, is.Equal(*c.Linux.Devices[0].Path, "/dev/fuse"))
	})
	t.Run("missing one", func(t *testing.T) {
		assert.Check(t, is.Error(pull(t, b, "priv", "p2", required[1:]), "incorrect privileges"))
	})
	t.Run("wrong value", func(t *testing.T) {
		granted := copyPrivileges(required)
		granted[0].Value = []string{"bridge"} // "network" sorts after index 0
		assert.Check(t, is.Error(pull(t, b, "priv", "p2", granted), "incorrect privileges"))
	})
	t.Run("upgrade checks them", func(t *testing.T) {
		b := NewBackend()
		b.AddRemote("vol:v2", Remote{Privileges: required})
		mustPull(t, b, "vol:v1", "vol")
		assert.Check(t, is.Error(upgrade(t, b, "vol:v2", "vol", nil), "incorrect privileges"))
		assert.NilError(t, upgrade(t, b, "vol:v2", "vol", required))
	})
}

func TestUpgrade(t *testing.T) {
	b := NewBackend()
	d2 := digest.FromString("v2")
	b.AddRemote("vol:v1", Remote{Env: []string{"DEBUG=0"}})
	b.AddRemote("vol:v2", Remote{Env: []string{"DEBUG=2", "NEW=1"}, Digest: d2})
	p := mustPull(t, b, "vol:v1", "vol", plugin.WithEnv([]string{"DEBUG=1"}))
	p.Acquire()
	defer p.Release()
	events, cancel := b.SubscribeEvents(8)
	defer cancel()

	assert.NilError(t, upgrade(t, b, "vol:v2", "vol", nil))

	obj, refs, err := b.Plugin(p.GetID())
	assert.NilError(t, err)
	assert.Check(t, is.Equal(refs, 1))
	assert.Check(t, is.Equal(obj.PluginReference, "docker.io/library/vol:v2"))
	assert.Check(t, is.Len(obj.Config.Env, 2), "config defaults are replaced")
	assert.Check(t, is.DeepEqual(obj.Settings.Env, []string{"DEBUG=1"}), "settings are kept")
	assert.Check(t, is.Equal(p.Manifest, d2))

	select {
	case ev := <-events:
		t.Errorf("Upgrade published %T", ev)
	default:
	}
}

func TestSet(t *testing.T) {
	b := NewBackend()
	b.AddRemote("vol", Remote{Env: []string{"DEBUG=0"}})
	mustPull(t, b, "vol", "vol")

	assert.NilError(t, b.Set("vol", []string{"DEBUG=1"}))
	obj, _, err := b.Plugin("vol")
	assert.NilError(t, err)
	assert.Check(t, is.DeepEqual(obj.Settings.Env, []string{"DEBUG=1"}))
	assert.Check(t, is.Equal(*obj.Config.Env[0].Value, "0"), "the config default is untouched")

	assert.Check(t, is.Error(b.Set("vol", []string{"OTHER=1"}), `setting "OTHER" not found in the plugin configuration`))
	assert.Check(t, is.Error(b.Set("vol", []string{"=1"}), "invalid format, must be <name>[.<field>][=<value>]"))
}

// TestFixedEnv: a remote's FixedEnv is declared in the config without
// Settable, so it initialises the settings, WithEnv may override it at
// Pull (moby's WithEnv does not look at Settable), and Set refuses it with
// moby's words, as it refuses undeclared keys (an arg without "=" among
// them) and any change of an enabled plugin; a refused Set changes nothing.
func TestFixedEnv(t *testing.T) {
	b := NewBackend()
	b.AddRemote("vol:v1", Remote{Env: []string{"DEBUG=0"}, FixedEnv: []string{"MODE=ro", "ROOT=/data"}})
	mustPull(t, b, "vol:v1", "vol")
	obj, _, err := b.Plugin("vol")
	assert.NilError(t, err)
	assert.Check(t, is.DeepEqual(obj.Settings.Env, []string{"DEBUG=0", "MODE=ro", "ROOT=/data"}))
	assert.Assert(t, is.Len(obj.Config.Env, 3))
	assert.Check(t, is.DeepEqual(obj.Config.Env[0].Settable, []string{"value"}))
	for _, e := range obj.Config.Env[1:] {
		assert.Check(t, is.Len(e.Settable, 0), "%s is settable", e.Name)
	}
	assert.Check(t, is.Equal(obj.Config.Env[1].Name, "MODE"))
	assert.Check(t, is.Equal(*obj.Config.Env[1].Value, "ro"))

	for _, tc := range []struct {
		args []string
		err  string
	}{
		{[]string{"MODE=rw"}, `"MODE" is not settable`},
		{[]string{"OTHER=1"}, `setting "OTHER" not found in the plugin configuration`},
		{[]string{"baz"}, `setting "baz" not found in the plugin configuration`},
	} {
		err := b.Set("vol", tc.args)
		assert.Check(t, is.ErrorContains(err, tc.err), "%v", tc.args)
		assert.Check(t, !cerrdefs.IsInvalidArgument(err) && !cerrdefs.IsNotFound(err), "unclassified, as moby's: %v", err)
	}
	obj, _, err = b.Plugin("vol")
	assert.NilError(t, err)
	assert.Check(t, is.DeepEqual(obj.Settings.Env, []string{"DEBUG=0", "MODE=ro", "ROOT=/data"}), "refused Sets change nothing")

	// Set is not atomic, as moby's: the entries before the refused one
	// are applied.
	assert.Check(t, is.ErrorContains(b.Set("vol", []string{"DEBUG=1", "ROOT=/tmp"}), `"ROOT" is not settable`))
	obj, _, err = b.Plugin("vol")
	assert.NilError(t, err)
	assert.Check(t, is.DeepEqual(obj.Settings.Env, []string{"DEBUG=1", "MODE=ro", "ROOT=/data"}))

	// An arg without "=" is a key with an empty value: refused as not
	// found for an undeclared key (above), accepted for a settable one.
	assert.NilError(t, b.Set("vol", []string{"DEBUG"}))
	obj, _, err = b.Plugin("vol")
	assert.NilError(t, err)
	assert.Check(t, is.Contains(obj.Settings.Env, "DEBUG="))

	assert.NilError(t, b.Set("vol", []string{"DEBUG=1"}))
	assert.NilError(t, b.Enable("vol", enableConfig))
	assert.Check(t, is.ErrorContains(b.Set("vol", []string{"DEBUG=2"}), "cannot set on an active plugin"))

	// WithEnv at Pull sets a fixed key, as moby's does.
	assert.NilError(t, pull(t, b, "vol:v1", "other", nil, plugin.WithEnv([]string{"MODE=rw"})))
	obj, _, err = b.Plugin("other")
	assert.NilError(t, err)
	assert.Check(t, is.Contains(obj.Settings.Env, "MODE=rw"))

	// AddRemote keeps its own copy.
	fixed := []string{"MODE=ro"}
	b.AddRemote("vol:v2", Remote{FixedEnv: fixed})
	fixed[0] = "MODE=changed"
	p := mustPull(t, b, "vol:v2", "third")
	assert.Check(t, is.DeepEqual(p.PluginObj.Settings.Env, []string{"MODE=ro"}))
}

func TestForceRemoveEnabled(t *testing.T) {
	b := NewBackend()
	p := mustPull(t, b, "vol", "vol")
	assert.NilError(t, b.Enable("vol", enableConfig))
	p.Acquire()
	events, cancel := b.SubscribeEvents(8)
	defer cancel()

	assert.NilError(t, b.Remove("vol", forceRemove))
	ev := <-events
	assert.Check(t, is.DeepEqual(ev, plugin.EventRemove{Plugin: eventObj(t, ev)}))
	assert.Check(t, !eventObj(t, ev).Enabled)
	assert.Check(t, is.Len(events, 0), "no EventDisable")
	assert.Check(t, is.Equal(p.GetRefCount(), 1), "references do not block a forced Remove")
	_, _, err := b.Plugin("vol")
	assert.Check(t, cerrdefs.IsNotFound(err))
}

func eventObj(t *testing.T, ev interface{}) types.Plugin {
	t.Helper()
	switch ev := ev.(type) {
	case plugin.EventCreate:
		return ev.Plugin
	case plugin.EventEnable:
		return ev.Plugin
	case plugin.EventDisable:
		return ev.Plugin
	case plugin.EventRemove:
		return ev.Plugin
	}
	t.Fatalf("unexpected event %T", ev)
	return types.Plugin{}
}

func TestMatches(t *testing.T) {
	a := types.Plugin{ID: "a"}
	volume := types.Plugin{ID: "v", Config: types.PluginConfig{Interface: types.PluginConfigInterface{
		Types: []types.PluginInterfaceType{{Prefix: "docker", Capability: "volumedriver", Version: "1.0"}},
	}}}
	tests := []struct {
		name     string
		watch    []plugin.Event
		observed plugin.Event
		want     bool
	}{
		{"nil watch gets all", nil, plugin.EventDisable{Plugin: a}, true},
		{"empty watch gets none", []plugin.Event{}, plugin.EventDisable{Plugin: a}, false},
		{"same type and ID", []plugin.Event{plugin.EventEnable{Plugin: a}}, plugin.EventEnable{Plugin: a}, true},
		{"pointer watch remove", []plugin.Event{&plugin.EventRemove{Plugin: a}}, plugin.EventRemove{Plugin: a}, true},
		{"pointer watch enable", []plugin.Event{&plugin.EventEnable{Plugin: a}}, plugin.EventEnable{Plugin: a}, true},
		{"pointer watch disable", []plugin.Event{&plugin.EventDisable{Plugin: a}}, plugin.EventDisable{Plugin: a}, true},
		{"pointer watch create", []plugin.Event{&plugin.EventCreate{}}, plugin.EventCreate{Plugin: a}, true},
		{"other ID", []plugin.Event{plugin.EventEnable{Plugin: a}}, plugin.EventEnable{Plugin: volume}, false},
		{"other type", []plugin.Event{plugin.EventEnable{Plugin: a}}, plugin.EventDisable{Plugin: a}, false},
		{"any of several", []plugin.Event{plugin.EventEnable{Plugin: a}, plugin.EventDisable{Plugin: a}}, plugin.EventDisable{Plugin: a}, true},
		{"create ignores ID", []plugin.Event{plugin.EventCreate{Plugin: a}}, plugin.EventCreate{Plugin: volume}, true},
		{"create by interface", []plugin.Event{plugin.EventCreate{Interfaces: map[string]bool{"volumedriver": true}}}, plugin.EventCreate{Plugin: volume}, true},
		{"create by other interface", []plugin.Event{plugin.EventCreate{Interfaces: map[string]bool{"networkdriver": true}}}, plugin.EventCreate{Plugin: volume}, false},
		{"create watch, remove event", []plugin.Event{plugin.EventCreate{}}, plugin.EventRemove{Plugin: a}, false},
	}
	for _, tc := range tests {
		assert.Check(t, is.Equal(matches(tc.watch, tc.observed), tc.want), tc.name)
	}
}

func TestEventsCarryCopies(t *testing.T) {
	b := NewBackend()
	b.AddRemote("vol", Remote{Env: []string{"DEBUG=0"}})
	events, cancel := b.SubscribeEvents(8)
	defer cancel()
	mustPull(t, b, "vol", "vol")

	ev := (<-events).(plugin.EventCreate)
	ev.Plugin.Settings.Env[0] = "MUTATED=1"
	*ev.Plugin.Config.Env[0].Value = "mutated"
	obj, _, err := b.Plugin("vol")
	assert.NilError(t, err)
	assert.Check(t, is.DeepEqual(obj.Settings.Env, []string{"DEBUG=0"}))
	assert.Check(t, is.Equal(*obj.Config.Env[0].Value, "0"))

	obj.Settings.Env[0] = "MUTATED=2"
	again, _, err := b.Plugin("vol")
	assert.NilError(t, err)
	assert.Check(t, is.DeepEqual(again.Settings.Env, []string{"DEBUG=0"}))
}

func TestSlowSubscriberDoesNotBlock(t *testing.T) {
	b := NewBackend()
	p := mustPull(t, b, "vol", "vol")
	unread, cancelUnread := b.SubscribeEvents(0)
	full, cancelFull := b.SubscribeEvents(1)

	// Nobody reads: as with moby's publisher, events are dropped instead.
	assert.NilError(t, b.Enable("vol", enableConfig))
	assert.NilError(t, b.Disable("vol", disableConfig))
	assert.NilError(t, b.Enable("vol", enableConfig))
	assert.Check(t, p.IsEnabled())

	cancelUnread()
	cancelFull()
	var got []string
	for ev := range full {
		got = append(got, reflect.TypeOf(ev).Name())
	}
	assert.Check(t, is.DeepEqual(got, []string{"EventEnable"}))
	_, ok := <-unread
	assert.Check(t, !ok)
}

func TestSubscribers(t *testing.T) {
	b := NewBackend()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()

	done := make(chan error, 1)
	go func() { done <- b.WaitSubscribers(ctx, 2) }()
	_, cancel1 := b.SubscribeEvents(1)
	_, cancel2 := b.SubscribeEvents(1)
	assert.NilError(t, <-done)
	assert.Check(t, is.Equal(b.Subscribers(), 2))

	cancel1()
	cancel1()
	assert.Check(t, is.Equal(b.Subscribers(), 1), "cancel is idempotent")
	assert.NilError(t, b.WaitSubscribers(ctx, 1))

	go func() { done <- b.WaitSubscribers(ctx, 2) }()
	cancel()
	assert.Check(t, is.ErrorIs(<-done, context.Canceled))
	cancel2()
	assert.Check(t, is.Equal(b.Subscribers(), 0))
}

func TestFailNext(t *testing.T) {
	b := NewBackend()
	errA, errB := errors.New("a"), errors.New("b")
	b.FailNext("Pull", errA)
	assert.Check(t, is.ErrorIs(pull(t, b, "vol", "vol", nil), errA))
	_, err := b.Get("vol")
	assert.Check(t, cerrdefs.IsNotFound(err), "a failed Pull installs nothing")

	p := mustPull(t, b, "vol", "vol")
	events, cancel := b.SubscribeEvents(8)
	defer cancel()
	b.FailNext("Enable", errA)
	b.FailNext("Enable", errB)
	assert.Check(t, is.ErrorIs(b.Enable("vol", enableConfig), errA))
	assert.Check(t, is.ErrorIs(b.Enable("vol", enableConfig), errB))
	assert.Check(t, !p.IsEnabled())
	assert.Check(t, is.Len(events, 0), "no event")
	assert.NilError(t, b.Enable("vol", enableConfig))

	for _, m := range []string{"Upgrade", "Disable", "Remove", "Get", "Set"} {
		b.FailNext(m, errA)
	}
	assert.Check(t, is.ErrorIs(upgrade(t, b, "vol:v2", "vol", nil), errA))
	assert.Check(t, is.ErrorIs(b.Disable("vol", forceDisable), errA))
	assert.Check(t, is.ErrorIs(b.Remove("vol", forceRemove), errA))
	assert.Check(t, is.ErrorIs(get(b, "vol"), errA))
	assert.Check(t, is.ErrorIs(b.Set("vol", nil), errA))
	assert.Check(t, p.IsEnabled())
	assert.Check(t, is.Len(events, 1), "only the successful Enable published")

	assert.Check(t, is.Panics(func() { b.FailNext("SubscribeEvents", errA) }))
	assert.Check(t, is.Panics(func() { b.FailNext("Enable", nil) }))
}

func TestCalls(t *testing.T) {
	b := NewBackend()
	auth := &registry.AuthConfig{Username: "u"}
	privs := types.PluginPrivileges{{Name: "network", Value: []string{"host"}}}
	b.AddRemote("vol", Remote{Privileges: privs})
	b.FailNext("Get", errors.New("boom"))

	assert.NilError(t, b.Pull(context.Background(), parse(t, "vol"), "vol", nil, auth, privs, nil, plugin.WithSwarmService("s")))
	assert.NilError(t, b.Enable("vol", enableConfig))
	assert.ErrorContains(t, get(b, "vol"), "boom")
	assert.NilError(t, b.Disable("vol", forceDisable))
	assert.NilError(t, b.Set("vol", []string{}))
	_, cancel := b.SubscribeEvents(1, plugin.EventCreate{})
	cancel()
	assert.NilError(t, b.Remove("vol", removeConfig))

	calls := b.Calls()
	var methods []string
	for _, c := range calls {
		methods = append(methods, c.Method)
	}
	assert.Check(t, is.DeepEqual(methods, []string{"Pull", "Enable", "Get", "Disable", "Set", "SubscribeEvents", "Remove"}))
	assert.Assert(t, is.Len(calls, 7))
	assert.Check(t, calls[0].Auth == auth, "the auth config is passed through")
	assert.Check(t, is.Equal(calls[0].Ref, "docker.io/library/vol"))
	assert.Check(t, is.Equal(calls[0].Name, "vol"))
	assert.Check(t, is.DeepEqual(calls[0].Privileges, privs))
	assert.Check(t, is.Equal(calls[0].Opts, 1))
	assert.Check(t, calls[1].Config == enableConfig)
	assert.Check(t, is.ErrorContains(calls[2].Err, "boom"))
	assert.Check(t, calls[3].Config == forceDisable)
	assert.Check(t, is.DeepEqual(calls[4].Args, []string{}))
	assert.Check(t, is.DeepEqual(calls[5].Events, []plugin.Event{plugin.EventCreate{}}))
	assert.Check(t, calls[6].Config == removeConfig)

	calls[0].Method = "changed"
	assert.Check(t, is.Equal(b.Calls()[0].Method, "Pull"), "Calls returns a copy")

	b.ResetCalls()
	assert.Check(t, is.Len(b.Calls(), 0), "ResetCalls forgets every call")
	assert.Check(t, is.Len(calls, 7), "a copy taken before ResetCalls is kept")
	_, _ = b.Get("vol")
	after := b.Calls()
	assert.Assert(t, is.Len(after, 1), "calls after ResetCalls are recorded")
	assert.Check(t, is.Equal(after[0].Method, "Get"))
}

func TestPluginHelper(t *testing.T) {
	b := NewBackend()
	_, _, err := b.Plugin("vol")
	assert.Check(t, cerrdefs.IsNotFound(err))
	p := mustPull(t, b, "vol", "vol")
	p.Acquire()
	obj, refs, err := b.Plugin(p.GetID()[:8])
	assert.NilError(t, err)
	assert.Check(t, is.Equal(refs, 1))
	assert.Check(t, is.Equal(obj.ID, p.GetID()))
	assert.Check(t, is.Len(b.Calls(), 2), "Plugin is not recorded (Pull and Get are)")
}

// Snapshot shows the owning service next to the API object and the
// reference count, as a copy the test may change.
func TestSnapshot(t *testing.T) {
	b := NewBackend()
	_, err := b.Snapshot("vol")
	assert.Check(t, cerrdefs.IsNotFound(err), "%v", err)

	b.AddRemote("vol", Remote{Env: []string{"DEBUG=0"}})
	owned := mustPull(t, b, "vol", "vol", plugin.WithSwarmService("svc-1"))
	mustPull(t, b, "vol", "local")
	owned.Acquire()
	owned.Acquire()
	defer owned.Release()
	owned.Release()
	assert.NilError(t, b.Enable("vol", enableConfig))
	b.ResetCalls()

	s, err := b.Snapshot(owned.GetID()[:8])
	assert.NilError(t, err)
	assert.Check(t, is.Equal(s.SwarmServiceID, "svc-1"))
	assert.Check(t, is.Equal(s.Refs, 1))
	assert.Check(t, is.Equal(s.ID, owned.GetID()))
	assert.Check(t, is.Equal(s.Name, "vol:latest"))
	assert.Check(t, s.Enabled)
	assert.Check(t, is.DeepEqual(s.Settings.Env, []string{"DEBUG=0"}))

	local, err := b.Snapshot("local")
	assert.NilError(t, err)
	assert.Check(t, is.Equal(local.SwarmServiceID, ""), "pulled without WithSwarmService")
	assert.Check(t, is.Equal(local.Refs, 0))
	assert.Check(t, !local.Enabled)

	s.Settings.Env[0] = "DEBUG=changed"
	again, err := b.Snapshot("vol")
	assert.NilError(t, err)
	assert.Check(t, is.DeepEqual(again.Settings.Env, []string{"DEBUG=0"}), "a snapshot is a copy")
	obj, refs, err := b.Plugin("vol")
	assert.NilError(t, err)
	assert.Check(t, is.DeepEqual(obj, again.Plugin), "Plugin is Snapshot without the owner")
	assert.Check(t, is.Equal(refs, again.Refs))
	assert.Check(t, is.Len(b.Calls(), 0), "Snapshot and Plugin are not recorded")

	b.FailNext("Get", errors.New("injected"))
	_, err = b.Snapshot("vol")
	assert.Check(t, is.Nil(err), "FailNext does not affect Snapshot")
	_, err = b.Get("vol")
	assert.Check(t, is.Error(err, "injected"), "the injected failure is left for Get")
}

func TestNilConfigPanics(t *testing.T) {
	b := NewBackend()
	mustPull(t, b, "vol", "vol")
	assert.Check(t, is.Panics(func() { _ = b.Enable("vol", nil) }))
	assert.Check(t, is.Panics(func() { _ = b.Disable("vol", nil) }))
	assert.Check(t, is.Panics(func() { _ = b.Remove("vol", nil) }))
	// As in moby, the plugin is looked up first.
	assert.Check(t, cerrdefs.IsNotFound(b.Enable("nope", nil)))
}

// TestPluginMu checks that pluginMu reaches the very lock v2.Plugin's
// accessors take.
func TestPluginMu(t *testing.T) {
	p := &v2.Plugin{}
	field := reflect.ValueOf(p).Elem().FieldByName("mu")
	assert.Check(t, is.Equal(field.UnsafeAddr(), uintptr(unsafe.Pointer(pluginMu(p)))))
}

// The progress writer given to Pull and Upgrade is recorded as passed, so
// that a test can check what plugin.WithProgress hands the Backend.
func TestProgressWriterIsRecorded(t *testing.T) {
	b := NewBackend()
	var w strings.Builder
	ref := parse(t, "vol")
	assert.NilError(t, b.Pull(context.Background(), ref, "vol", nil, &registry.AuthConfig{}, nil, &w))
	assert.NilError(t, b.Upgrade(context.Background(), ref, "vol", nil, &registry.AuthConfig{}, nil, &w))
	calls := b.Calls()
	assert.Check(t, calls[0].Out == &w && calls[1].Out == &w)
	assert.Check(t, is.Equal(w.Len(), 0), "nothing written")
}
