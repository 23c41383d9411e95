package plugintest

// The default privilege rule of this flavour, docker v28's, and the other
// rule behind SetPrivilegeRule. The moby v2 flavour has a hand-written
// mobyv2/plugintest/privileges_test.go in its place.

import (
	"context"
	"testing"

	"github.com/docker/docker/api/types"
	"gotest.tools/v3/assert"
	is "gotest.tools/v3/assert/cmp"
)

var (
	netHost = types.PluginPrivilege{Name: "network", Value: []string{"host"}}
	sdaDev  = types.PluginPrivilege{Name: "device", Value: []string{"/dev/sda"}}
	twoCaps = types.PluginPrivilege{Name: "capabilities", Value: []string{"CAP_NET_ADMIN", "CAP_SYS_ADMIN"}}
)

func TestPrivilegeRuleOfDockerV28(t *testing.T) {
	t.Run("index 0 is not compared", func(t *testing.T) {
		b := NewBackend()
		b.AddRemote("one", Remote{Privileges: types.PluginPrivileges{netHost}})
		assert.NilError(t, pull(t, b, "one", "one", types.PluginPrivileges{sdaDev}))
	})
	t.Run("values are compared in order", func(t *testing.T) {
		// Sorted by name already ("capabilities" < "device"), so the sort
		// swaps nothing and sorts no values.
		b := NewBackend()
		b.AddRemote("caps", Remote{Privileges: types.PluginPrivileges{sdaDev, twoCaps}})
		granted := types.PluginPrivileges{
			{Name: "capabilities", Value: []string{"CAP_NET_ADMIN"}},
			{Name: "device", Value: []string{"/dev/sda"}},
			{Name: "mount", Value: []string{"/x"}},
		}
		assert.Check(t, is.Error(pull(t, b, "caps", "caps", granted), "incorrect privileges"), "lengths differ")
		granted = types.PluginPrivileges{
			{Name: "capabilities", Value: []string{"CAP_SYS_ADMIN", "CAP_NET_ADMIN"}},
			{Name: "mount", Value: []string{"/x"}},
		}
		assert.Check(t, is.Error(pull(t, b, "caps", "caps", granted), "incorrect privileges"))
	})
	t.Run("SetPrivilegeRule(PrivilegesMobyV2) compares every index", func(t *testing.T) {
		b := NewBackend()
		b.SetPrivilegeRule(PrivilegesMobyV2)
		b.AddRemote("one", Remote{Privileges: types.PluginPrivileges{netHost}})
		assert.Check(t, is.Error(pull(t, b, "one", "one", types.PluginPrivileges{sdaDev}), "incorrect privileges"))
		assert.NilError(t, pull(t, b, "one", "one", types.PluginPrivileges{netHost}))
	})
	t.Run("Privileges tells what the config requires", func(t *testing.T) {
		b := NewBackend()
		b.AddRemote("caps", Remote{Privileges: types.PluginPrivileges{twoCaps, netHost, {Name: "unknown", Value: []string{"x"}}}})
		got, err := b.Privileges(context.Background(), parse(t, "caps"), nil, nil)
		assert.NilError(t, err)
		assert.Check(t, is.Len(got, 2), "moby's order, and only what a config can express: %v", got)
		assert.Check(t, is.Equal(got[0].Name, "network"))
		assert.Check(t, is.Equal(got[0].Description, "permissions to access a network"))
		assert.Check(t, is.Equal(got[1].Name, "capabilities"))
		b.MissingRemote("gone")
		got, err = b.Privileges(context.Background(), parse(t, "gone"), nil, nil)
		assert.Check(t, err == nil && got != nil && len(got) == 0, "a failed fetch answers empty and nil, as moby: %v %v", got, err)
		assert.Check(t, is.Equal(b.Calls()[0].Method, "Privileges"))
	})
	t.Run("an unknown rule panics", func(t *testing.T) {
		defer func() { assert.Check(t, recover() != nil) }()
		NewBackend().SetPrivilegeRule(0)
	})
}
