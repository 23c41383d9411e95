package plugintest_test

import (
	"context"
	"fmt"

	"github.com/docker/docker/api/types/swarm/runtime"
	plugin "github.com/seed-e85c93d5/plugin"
	"github.com/seed-e85c93d5/plugin/plugintest"
)

// An executor test: a controller prepares and starts its plugin on the fake
// Backend, and the test inspects the result.
func Example() {
	b := plugintest.NewBackend()
	b.AddRemote("example/vol:1.0", plugintest.Remote{Env: []string{"DEBUG=0"}})
	task := plugintest.NewTask("task-1", "svc-1", runtime.PluginSpec{Name: "vol", Remote: "example/vol:1.0", Env: []string{"DEBUG=1"}})

	ctx := context.Background()
	c, err := plugin.NewController(b, task)
	if err != nil {
		panic(err)
	}
	if err := c.Prepare(ctx); err != nil {
		panic(err)
	}
	if err := c.Start(ctx); err != nil {
		panic(err)
	}

	s, err := b.Snapshot("vol")
	if err != nil {
		panic(err)
	}
	fmt.Println(s.Name, s.PluginReference, s.Settings.Env)
	fmt.Println("enabled:", s.Enabled, "references:", s.Refs, "owner:", s.SwarmServiceID)
	// Output:
	// vol:latest docker.io/example/vol:1.0 [DEBUG=1]
	// enabled: true references: 1 owner: svc-1
}
