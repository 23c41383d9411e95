package backendtest_test

import (
	"testing"

	"github.com/docker/docker/api/types"
	"github.com/seed-e85c93d5/plugin/internal/backendtest"
	"github.com/seed-e85c93d5/plugin/plugintest"
	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// TestRunAgainstFake runs the suite against the plugintest fake with remote
// references shaped like those of an in-process registry
// ("127.0.0.1:PORT/name:tag"), the form the real Manager is tested with.
func TestRunAgainstFake(t *testing.T) {
	privileges := types.PluginPrivileges{
		{Name: "host pid namespace", Description: "allow access to host pid namespace", Value: []string{"true"}},
		{Name: "device", Description: "host device to access", Value: []string{"/dev/fuse"}},
	}
	backendtest.Run(t, func(t *testing.T) backendtest.Env {
		b := plugintest.NewBackend()
		b.AddRemote("127.0.0.1:5000/vol:v1", plugintest.Remote{Env: []string{"DEBUG=0"}, FixedEnv: []string{"MODE=ro"}})
		b.AddRemote("127.0.0.1:5000/vol:v2", plugintest.Remote{Env: []string{"DEBUG=0"}, FixedEnv: []string{"MODE=ro"}})
		b.AddRemote("127.0.0.1:5000/priv:v1", plugintest.Remote{Privileges: privileges})
		b.MissingRemote("127.0.0.1:5000/missing:v1")
		return backendtest.Env{
			Backend:        b,
			V1:             "127.0.0.1:5000/vol:v1",
			V2:             "127.0.0.1:5000/vol:v2",
			Priv:           "127.0.0.1:5000/priv:v1",
			PrivPrivileges: privileges,
			Missing:        "127.0.0.1:5000/missing:v1",
			SettableEnv:    "DEBUG",
			FixedEnv:       "MODE",
		}
	})
}
