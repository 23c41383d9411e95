package executor_test

import (
	"context"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"time"

	"github.com/docker/docker/api/types/swarm/runtime"
	"github.com/moby/swarmkit/v2/api"
	"github.com/moby/swarmkit/v2/node"
	"github.com/sirupsen/logrus"

	"github.com/seed-e85c93d5/plugin"
	"github.com/seed-e85c93d5/plugin/executor"
	"github.com/seed-e85c93d5/plugin/plugintest"
)

// This example restarts a one-node swarm the way a daemon restarts: the
// plugin service's plugin stays installed, with its ID, and the task runs
// on without a pull. Then the node leaves the swarm, and the plugin goes.
func Example_restartSafe() {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	logrus.SetOutput(io.Discard) // swarmkit logs a lot

	backend := plugintest.NewBackend()       // on a Docker node: the daemon's *plugin.Manager
	stateDir, _ := os.MkdirTemp("", "swk-")  // the swarm state; short: control.sock lives in it
	dataRoot, _ := os.MkdirTemp("", "root-") // survives restarts and leaves: the record of kept plugins
	defer os.RemoveAll(stateDir)
	defer os.RemoveAll(dataRoot)

	start := func() *node.Node {
		exe, err := plugin.RestartSafe(executor.New(backend, executor.WithHostname("node-1")), backend, dataRoot)
		if err != nil {
			panic(err)
		}
		n, err := node.New(&node.Config{
			Hostname:         "node-1",
			StateDir:         stateDir,
			ListenControlAPI: filepath.Join(stateDir, "control.sock"),
			ListenRemoteAPI:  "127.0.0.1:0",
			Executor:         exe,
		})
		if err != nil {
			panic(err)
		}
		if err := n.Start(ctx); err != nil {
			panic(err)
		}
		<-n.Ready()
		return n
	}
	running := func() (taskID string) {
		conn := controlConn(ctx, filepath.Join(stateDir, "control.sock"))
		defer conn.Close()
		control := api.NewControlClient(conn)
		tick := time.NewTicker(20 * time.Millisecond)
		defer tick.Stop()
		for {
			resp, err := control.ListTasks(ctx, &api.ListTasksRequest{})
			// RUNNING in the managers' view, and the task's Wait holds its
			// reference on the node (the view survives the restart).
			p, _ := backend.Snapshot("vol")
			if err == nil && len(resp.Tasks) == 1 && resp.Tasks[0].Status.State == api.TaskStateRunning && p.Refs == 1 {
				return resp.Tasks[0].ID
			}
			select {
			case <-ctx.Done():
				panic(ctx.Err())
			case <-tick.C:
			}
		}
	}

	n := start()
	conn := controlConn(ctx, filepath.Join(stateDir, "control.sock"))
	_, err := api.NewControlClient(conn).CreateService(ctx, &api.CreateServiceRequest{Spec: &api.ServiceSpec{
		Annotations: api.Annotations{Name: "vol"},
		Mode:        &api.ServiceSpec_Global{Global: &api.GlobalService{}},
		Task:        api.TaskSpec{Runtime: plugintest.Runtime(runtime.PluginSpec{Name: "vol", Remote: "example.com/vol:1"})},
	}})
	conn.Close()
	if err != nil {
		panic(err)
	}
	task := running()
	before, _ := backend.Snapshot("vol")

	// The daemon shuts down: ShuttingDown, then the node stops.
	plugin.ShuttingDown(dataRoot)
	if err := n.Stop(ctx); err != nil {
		panic(err)
	}
	kept, _ := backend.Snapshot("vol")
	fmt.Println("after the shutdown:", "installed", kept.ID == before.ID, "enabled", kept.Enabled)

	// It starts again.
	backend.ResetCalls()
	n = start()
	resumed := running()
	after, _ := backend.Snapshot("vol")
	pulls := 0
	for _, c := range backend.Calls() {
		if c.Method == "Pull" || c.Method == "Upgrade" {
			pulls++
		}
	}
	fmt.Println("after the restart:", "same task", resumed == task, "same plugin", after.ID == before.ID, "pulls", pulls)

	// "docker swarm leave": the node stops without ShuttingDown.
	if err := n.Stop(ctx); err != nil {
		panic(err)
	}
	_, err = backend.Snapshot("vol")
	fmt.Println("after the leave: installed", err == nil)
	// Output:
	// after the shutdown: installed true enabled true
	// after the restart: same task true same plugin true pulls 0
	// after the leave: installed false
}
