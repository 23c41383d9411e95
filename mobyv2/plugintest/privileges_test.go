package plugintest

// Written by hand: the moby v2 counterpart of
// ../../plugintest/privileges_test.go (see mobyv2/README.md).

import (
	"testing"

	plugintypes "github.com/moby/moby/api/types/plugin"
	"gotest.tools/v3/assert"
	is "gotest.tools/v3/assert/cmp"
)

var (
	netHost = plugintypes.Privilege{Name: "network", Value: []string{"host"}}
	sdaDev  = plugintypes.Privilege{Name: "device", Value: []string{"/dev/sda"}}
	twoCaps = plugintypes.Privilege{Name: "capabilities", Value: []string{"CAP_NET_ADMIN", "CAP_SYS_ADMIN"}}
)

func TestPrivilegeRuleOfMobyV2(t *testing.T) {
	t.Run("index 0 is compared", func(t *testing.T) {
		b := NewBackend()
		b.AddRemote("one", Remote{Privileges: plugintypes.Privileges{netHost}})
		assert.Check(t, is.Error(pull(t, b, "one", "one", plugintypes.Privileges{sdaDev}), "incorrect privileges"))
		assert.NilError(t, pull(t, b, "one", "one", plugintypes.Privileges{netHost}))
	})
	t.Run("value order does not matter", func(t *testing.T) {
		b := NewBackend()
		b.AddRemote("caps", Remote{Privileges: plugintypes.Privileges{sdaDev, twoCaps}})
		granted := plugintypes.Privileges{sdaDev, {Name: "capabilities", Value: []string{"CAP_SYS_ADMIN", "CAP_NET_ADMIN"}}}
		assert.NilError(t, pull(t, b, "caps", "caps", granted))
		assert.Check(t, is.DeepEqual(granted[1].Value, []string{"CAP_SYS_ADMIN", "CAP_NET_ADMIN"}), "the caller's slice is left alone")
	})
	t.Run("SetPrivilegeRule(PrivilegesDockerV28) plays a v28 daemon, bug included", func(t *testing.T) {
		b := NewBackend()
		b.SetPrivilegeRule(PrivilegesDockerV28)
		b.AddRemote("one", Remote{Privileges: plugintypes.Privileges{netHost}})
		assert.NilError(t, pull(t, b, "one", "one", plugintypes.Privileges{sdaDev}))
	})
}
