package plugintest

// Written by hand: the moby v2 counterpart of
// ../../plugintest/privileges_test.go (see mobyv2/README.md).

import (
	"testing"

	plugintypes "github.com/moby/moby/api/types/plugin"
	"gotest.tools/v3/assert"
	is "gotest.tools/v3/assert/cmp"
)

func TestPrivilegeRuleOfMobyV2(t *testing.T) {
	t.Run("index 0 is compared", func(t *testing.T) {
		b := NewBackend()
		b.AddRemote("one", Remote{Privileges: plugintypes.Privileges{{Name: "network", Value: []string{"host"}}}})
		assert.Check(t, is.Error(pull(t, b, "one", "one", plugintypes.Privileges{{Name: "device", Value: []string{"/dev/sda"}}}), "incorrect privileges"))
		assert.NilError(t, pull(t, b, "one", "one", plugintypes.Privileges{{Name: "network", Value: []string{"host"}}}))
	})
	t.Run("value order does not matter", func(t *testing.T) {
		b := NewBackend()
		required := plugintypes.Privileges{
			{Name: "a", Value: []string{"x"}},
			{Name: "capabilities", Value: []string{"CAP_NET_ADMIN", "CAP_SYS_ADMIN"}},
		}
		b.AddRemote("caps", Remote{Privileges: required})
		granted := copyPrivileges(required)
		granted[1].Value = []string{"CAP_SYS_ADMIN", "CAP_NET_ADMIN"}
		assert.NilError(t, pull(t, b, "caps", "caps", granted))
		assert.Check(t, is.DeepEqual(granted[1].Value, []string{"CAP_SYS_ADMIN", "CAP_NET_ADMIN"}), "the caller's slice is left alone")
	})
	t.Run("nil and empty values are equal", func(t *testing.T) {
		b := NewBackend()
		b.AddRemote("empty", Remote{Privileges: plugintypes.Privileges{{Name: "a"}, {Name: "b"}}})
		assert.NilError(t, pull(t, b, "empty", "empty", plugintypes.Privileges{{Name: "a"}, {Name: "b", Value: []string{}}}))
	})
}
