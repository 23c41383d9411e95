package plugin_test

import (
	"context"
	"errors"
	"net/http"
	"strings"
	"testing"

	cerrdefs "github.com/containerd/errdefs"
	"github.com/distribution/reference"
	"github.com/docker/docker/api/types"
	"github.com/docker/docker/api/types/registry"
	"github.com/docker/docker/api/types/swarm/runtime"
	mobyplugin "github.com/docker/docker/plugin"
	"github.com/moby/swarmkit/v2/agent/exec"
	"gotest.tools/v3/assert"
	is "gotest.tools/v3/assert/cmp"

	plugin "github.com/seed-e85c93d5/plugin"
	"github.com/seed-e85c93d5/plugin/plugintest"
)

// Both Managers, and the fake, tell a remote's privileges before a pull.
var (
	_ plugin.Privileger = (*mobyplugin.Manager)(nil)
	_ plugin.Privileger = (*plugintest.Backend)(nil)
)

// The privileges of CVE-2026-33997's cases, in the Manager's words.
var (
	sysAdmin = types.PluginPrivilege{Name: "capabilities", Description: "list of additional capabilities required", Value: []string{"CAP_SYS_ADMIN"}}
	chown    = types.PluginPrivilege{Name: "capabilities", Value: []string{"CAP_CHOWN"}}
	hostNet  = types.PluginPrivilege{Name: "network", Description: "permissions to access a network", Value: []string{"host"}}
	tmpMount = types.PluginPrivilege{Name: "mount", Value: []string{"/tmp"}}
)

// grant turns privileges into a spec's grant.
func grant(ps ...types.PluginPrivilege) []*runtime.PluginPrivilege {
	out := make([]*runtime.PluginPrivilege, 0, len(ps))
	for _, p := range ps {
		out = append(out, &runtime.PluginPrivilege{Name: p.Name, Description: p.Description, Value: p.Value})
	}
	return out
}

// noPrivileger hides the fake's Privileges, like a Backend without it (a
// user's own, or a daemon's wrapper): only the check of the installed
// config stands.
type noPrivileger struct{ noSetter }

func (n noPrivileger) Set(name string, args []string) error { return n.b.Set(name, args) }

// assertRefused checks that err is the permanent, classified refusal of a
// grant and names each privilege in words.
func assertRefused(t *testing.T, err error, words ...string) {
	t.Helper()
	assert.Assert(t, err != nil, "Prepare accepted a grant the plugin's privileges exceed")
	assert.Check(t, errors.Is(err, plugin.ErrIncorrectPrivileges), "%v", err)
	assert.Check(t, cerrdefs.IsPermissionDenied(err), "%v", err)
	assert.Check(t, !exec.IsTemporary(err), "a refused grant must not be retried: %v", err)
	assert.Check(t, is.ErrorContains(err, "incorrect privileges"))
	for _, w := range words {
		assert.Check(t, is.ErrorContains(err, w))
	}
}

// backends runs f with the fake as is (a Privileger: the check comes
// before the pull or the disable) and without its Privileges (only the
// installed config is checked), both playing docker v28's Manager.
func backends(t *testing.T, f func(t *testing.T, fake *plugintest.Backend, b plugin.Backend, privileger bool)) {
	for _, tc := range []struct {
		name       string
		privileger bool
	}{{"Privileger", true}, {"no Privileger", false}} {
		t.Run(tc.name, func(t *testing.T) {
			fake := plugintest.NewBackend()
			fake.SetPrivilegeRule(plugintest.PrivilegesDockerV28)
			var b plugin.Backend = fake
			if !tc.privileger {
				b = noPrivileger{noSetter{fake}}
			}
			f(t, fake, b, tc.privileger)
		})
	}
}

// The three bypasses of CVE-2026-33997 on a fresh install: the fake plays
// docker v28's Manager, which installs each of them.
func TestFreshInstallRefusesAnUnderGrant(t *testing.T) {
	cases := []struct {
		name            string
		required, grant []types.PluginPrivilege
		words           []string
	}{
		{"first privilege not compared", []types.PluginPrivilege{sysAdmin, hostNet}, []types.PluginPrivilege{chown, hostNet},
			[]string{"required, not granted: capabilities: [CAP_SYS_ADMIN]", "granted, not required: capabilities: [CAP_CHOWN]"}},
		{"single privilege not compared", []types.PluginPrivilege{sysAdmin}, []types.PluginPrivilege{tmpMount},
			[]string{"required, not granted: capabilities: [CAP_SYS_ADMIN]", "granted, not required: mount: [/tmp]"}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			backends(t, func(t *testing.T, fake *plugintest.Backend, b plugin.Backend, privileger bool) {
				fake.AddRemote(remote, plugintest.Remote{Privileges: tc.required})
				s := spec(remote, false)
				s.Privileges = grant(tc.grant...)
				c := newController(t, b, "task-1", s)

				assertRefused(t, c.Prepare(context.Background()), tc.words...)
				_, _, found := state(t, fake, name)
				assert.Check(t, !found, "the refused plugin stays installed")
				assert.Check(t, is.Equal(countCalls(fake, "Enable"), 0))
				if privileger {
					assert.Check(t, is.Equal(countCalls(fake, "Pull"), 0), "refused before the pull")
				} else {
					assert.Check(t, is.Equal(countCalls(fake, "Remove"), 1), "pulled, then removed")
				}
			})
		})
	}
}

// The supply-chain case: v1 runs with its exact grant; the tag's next
// version needs CAP_SYS_ADMIN, which the service never granted.
func TestUpgradeRefusesAnUnderGrant(t *testing.T) {
	backends(t, func(t *testing.T, fake *plugintest.Backend, b plugin.Backend, privileger bool) {
		ctx := context.Background()
		fake.AddRemote(remote, plugintest.Remote{Privileges: []types.PluginPrivilege{hostNet}})
		fake.AddRemote(remote2, plugintest.Remote{Privileges: []types.PluginPrivilege{sysAdmin}})
		s := spec(remote, false)
		s.Privileges = grant(hostNet)
		started(t, ctx, b, "task-1", s)
		before, _, _ := state(t, fake, name)
		fake.ResetCalls()

		s.Remote = remote2
		c2 := newController(t, b, "task-2", s)
		assertRefused(t, c2.Prepare(ctx), "required, not granted: capabilities: [CAP_SYS_ADMIN]", "granted, not required: network: [host]")

		after, _, found := state(t, fake, name)
		assert.Assert(t, found)
		assert.Check(t, is.Equal(after.ID, before.ID))
		if privileger {
			// Refused before anything was disabled: v1 keeps running.
			assert.Check(t, after.Enabled, "v1 must stay in service")
			assert.Check(t, is.Equal(after.PluginReference, before.PluginReference))
			assert.Check(t, is.DeepEqual(methods(fake), []string{"Get", "ResolveManifest", "Privileges"}))
			return
		}
		// Only the upgraded config showed it: security wins, the plugin
		// stays disabled, and nothing enables it again.
		assert.Check(t, !after.Enabled, "an under-granted upgrade must not be enabled")
		assert.Check(t, is.Equal(countCalls(fake, "Enable"), 0))
	})
}

// A Privileger that answers nothing while the grant is not empty (moby's
// answer to a failed fetch) does not stop the pull: the installed config
// decides.
func TestEmptyPrivilegesAnswerIsUnknown(t *testing.T) {
	fake := plugintest.NewBackend()
	fake.AddRemote(remote, plugintest.Remote{Privileges: []types.PluginPrivilege{hostNet}})
	s := spec(remote, false)
	s.Privileges = grant(hostNet)
	c := newController(t, emptyPrivileges{fake}, "task-1", s)
	assert.NilError(t, c.Prepare(context.Background()))
	assert.NilError(t, c.Start(context.Background()))

	s.Privileges = grant(sysAdmin)
	fake2 := plugintest.NewBackend()
	fake2.SetPrivilegeRule(plugintest.PrivilegesDockerV28) // installs the under-grant
	fake2.AddRemote(remote, plugintest.Remote{Privileges: []types.PluginPrivilege{hostNet}})
	c2 := newController(t, emptyPrivileges{fake2}, "task-1", s)
	assertRefused(t, c2.Prepare(context.Background()), "required, not granted: network: [host]")
	_, _, found := state(t, fake2, name)
	assert.Check(t, !found)
}

// emptyPrivileges answers Privileges as moby's Manager does when its
// fetch fails: empty, and no error.
type emptyPrivileges struct{ *plugintest.Backend }

func (emptyPrivileges) Privileges(context.Context, reference.Named, http.Header, *registry.AuthConfig) (types.PluginPrivileges, error) {
	return types.PluginPrivileges{}, nil
}

// The exact grant, in any order, still runs; so does a grant whose values
// come in another order.
func TestExactGrantInAnyOrderRuns(t *testing.T) {
	backends(t, func(t *testing.T, fake *plugintest.Backend, b plugin.Backend, _ bool) {
		fake.SetPrivilegeRule(plugintest.PrivilegesMobyV2)
		caps := types.PluginPrivilege{Name: "capabilities", Value: []string{"CAP_SYS_ADMIN", "CAP_NET_ADMIN"}}
		fake.AddRemote(remote, plugintest.Remote{Privileges: []types.PluginPrivilege{caps, hostNet, tmpMount}})
		s := spec(remote, false)
		s.Privileges = grant(tmpMount, types.PluginPrivilege{Name: "capabilities", Value: []string{"CAP_NET_ADMIN", "CAP_SYS_ADMIN"}}, hostNet)
		started(t, context.Background(), b, "task-1", s)
		p, _, _ := state(t, fake, name)
		assert.Check(t, p.Enabled)
	})
}

// A pinned plugin already installed is not upgraded, but a spec whose
// grant no longer covers it is refused, and the plugin is left as it is.
func TestPinnedInstalledPluginChecksTheGrant(t *testing.T) {
	ctx := context.Background()
	fake := plugintest.NewBackend()
	pinned := "example.com/acme/vol@sha256:" + "b" + strings.Repeat("0", 63)
	fake.AddRemote(pinned, plugintest.Remote{Privileges: []types.PluginPrivilege{hostNet}})
	s := spec(pinned, false)
	s.Privileges = grant(hostNet)
	started(t, ctx, fake, "task-1", s)
	fake.ResetCalls()

	s.Privileges = grant(tmpMount)
	c2 := newController(t, fake, "task-2", s)
	assertRefused(t, c2.Prepare(ctx), "required, not granted: network: [host]", "granted, not required: mount: [/tmp]")
	p, _, _ := state(t, fake, name)
	assert.Check(t, p.Enabled, "left as it is")
	assert.Check(t, is.Equal(countCalls(fake, "Disable"), 0))
}

// A Manager that refuses the grant itself (moby v2's, or the fake playing
// it) gives the same classified, permanent error.
func TestBackendRefusalIsClassified(t *testing.T) {
	fake := plugintest.NewBackend()
	fake.SetPrivilegeRule(plugintest.PrivilegesMobyV2)
	fake.AddRemote(remote, plugintest.Remote{Privileges: []types.PluginPrivilege{sysAdmin}})
	s := spec(remote, false)
	s.Privileges = grant(chown)
	c := newController(t, noPrivileger{noSetter{fake}}, "task-1", s)
	err := c.Prepare(context.Background())
	assertRefused(t, err, "the backend refused the service's grant")
	_, _, found := state(t, fake, name)
	assert.Check(t, !found)
}
