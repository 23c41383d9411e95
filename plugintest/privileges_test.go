package plugintest

// The quirks of docker v28's privilege comparison. The moby v2 flavour has a
// hand-written mobyv2/plugintest/privileges_test.go in its place.

import (
	"testing"

	"github.com/docker/docker/api/types"
	"gotest.tools/v3/assert"
	is "gotest.tools/v3/assert/cmp"
)

func TestPrivilegeRuleOfDockerV28(t *testing.T) {
	t.Run("index 0 is not compared", func(t *testing.T) {
		b := NewBackend()
		b.AddRemote("one", Remote{Privileges: types.PluginPrivileges{{Name: "network", Value: []string{"host"}}}})
		assert.NilError(t, pull(t, b, "one", "one", types.PluginPrivileges{{Name: "device", Value: []string{"/dev/sda"}}}))
	})
	t.Run("values are compared in order", func(t *testing.T) {
		// Already sorted by name, so the sort swaps nothing and sorts no
		// values.
		b := NewBackend()
		required := types.PluginPrivileges{
			{Name: "a", Value: []string{"x"}},
			{Name: "capabilities", Value: []string{"CAP_NET_ADMIN", "CAP_SYS_ADMIN"}},
		}
		b.AddRemote("caps", Remote{Privileges: required})
		granted := copyPrivileges(required)
		granted[1].Value = []string{"CAP_SYS_ADMIN", "CAP_NET_ADMIN"}
		assert.Check(t, is.Error(pull(t, b, "caps", "caps", granted), "incorrect privileges"))
	})
	t.Run("nil and empty values differ", func(t *testing.T) {
		b := NewBackend()
		required := types.PluginPrivileges{{Name: "a"}, {Name: "b"}}
		b.AddRemote("empty", Remote{Privileges: required})
		granted := types.PluginPrivileges{{Name: "a"}, {Name: "b", Value: []string{}}}
		assert.Check(t, is.Error(pull(t, b, "empty", "empty", granted), "incorrect privileges"))
	})
}
