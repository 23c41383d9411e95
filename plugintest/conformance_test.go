package plugintest_test

import (
	"testing"

	"github.com/docker/docker/api/types"
	swarmplugin "github.com/seed-e85c93d5/plugin"
	"github.com/seed-e85c93d5/plugin/internal/backendtest"
	"github.com/seed-e85c93d5/plugin/plugintest"
)

var (
	_ swarmplugin.Backend = (*plugintest.Backend)(nil)
	_ swarmplugin.Setter  = (*plugintest.Backend)(nil)
)

// privileges is what the "priv" remote of the conformance tests requires.
var privileges = types.PluginPrivileges{
	{Name: "network", Description: "permissions to access a network", Value: []string{"host"}},
	{Name: "capabilities", Description: "list of additional capabilities required", Value: []string{"CAP_SYS_ADMIN"}},
	{Name: "mount", Description: "host path to mount", Value: []string{"/var/lib/docker/plugins/"}},
}

func TestConformance(t *testing.T) {
	backendtest.Run(t, func(t *testing.T) backendtest.Env {
		b := plugintest.NewBackend()
		b.AddRemote("example/vol:v1", plugintest.Remote{Env: []string{"DEBUG=0"}, FixedEnv: []string{"MODE=ro"}})
		b.AddRemote("example/vol:v2", plugintest.Remote{Env: []string{"DEBUG=0", "LEVEL=2"}})
		b.AddRemote("example/priv", plugintest.Remote{Privileges: privileges})
		b.MissingRemote("example/missing:v1")
		return backendtest.Env{
			Backend:        b,
			V1:             "example/vol:v1",
			V2:             "example/vol:v2",
			Priv:           "example/priv",
			PrivPrivileges: privileges,
			Missing:        "example/missing:v1",
			SettableEnv:    "DEBUG",
			FixedEnv:       "MODE",
		}
	})
}
