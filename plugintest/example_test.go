package plugintest_test

import (
	"context"
	"errors"
	"fmt"

	cerrdefs "github.com/containerd/errdefs"
	"github.com/docker/docker/api/types/swarm/runtime"
	"github.com/moby/swarmkit/v2/agent/exec"
	"github.com/moby/swarmkit/v2/api"
	"github.com/sirupsen/logrus"
	logrustest "github.com/sirupsen/logrus/hooks/test"

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

// A task's life as swarmkit's agent drives it, through exec.Do: from NEW to
// RUNNING, its Wait cancelled, shut down, then removed.
func ExampleDrive() {
	ctx := context.Background()
	b := plugintest.NewBackend()
	task := plugintest.NewTask("task-1", "svc-1", runtime.PluginSpec{Name: "vol", Remote: "example/vol:1.0"})
	ctrl, err := plugin.NewController(b, task)
	if err != nil {
		panic(err)
	}
	defer ctrl.Close()

	// NewTask leaves DesiredState at NEW, where exec.Do does nothing.
	task.DesiredState = api.TaskStateRunning
	if err := plugintest.Drive(ctx, task, ctrl, api.TaskStateRunning); err != nil {
		panic(err)
	}
	s, err := b.Snapshot("vol")
	if err != nil {
		panic(err)
	}
	fmt.Println(task.Status.State, "enabled:", s.Enabled, "references:", s.Refs, "owner:", s.SwarmServiceID)

	// The next exec.Do calls Wait, which blocks while the plugin stays as
	// the spec wants. The agent cancels it before shutting the task down.
	waitCtx, cancelWait := context.WithCancel(ctx)
	waited := make(chan error, 1)
	go func() { waited <- plugintest.Drive(waitCtx, task, ctrl, api.TaskStateCompleted) }()
	if err := b.WaitSubscribers(ctx, 1); err != nil { // Wait watches the plugin's events
		panic(err)
	}
	cancelWait()
	err = <-waited
	fmt.Println(task.Status.State, "retry:", errors.Is(err, exec.ErrTaskRetry))

	task.DesiredState = api.TaskStateShutdown
	if err := plugintest.Drive(ctx, task, ctrl, api.TaskStateShutdown); err != nil {
		panic(err)
	}
	fmt.Println(task.Status.State, "subscribers:", b.Subscribers())

	// The worker removes a task once it is no longer assigned: the last
	// task of the service removes the plugin.
	if err := ctrl.Remove(ctx); err != nil {
		panic(err)
	}
	_, err = b.Snapshot("vol")
	fmt.Println("removed:", cerrdefs.IsNotFound(err))
	// Output:
	// RUNNING enabled: true references: 1 owner: svc-1
	// RUNNING retry: true
	// SHUTDOWN subscribers: 0
	// removed: true
}

// A controller logs "plugin pulled", "plugin enabled" and "plugin removed"
// at info level, through logrus' standard logger unless told otherwise, so
// they show under go test -v. plugin.WithLogger gives it a logger of the
// test's own: here one that writes nowhere and keeps every entry for the
// test to check.
func Example_quietLogs() {
	logger, hook := logrustest.NewNullLogger()
	b := plugintest.NewBackend()
	task := plugintest.NewTask("task-1", "svc-1", runtime.PluginSpec{Name: "vol", Remote: "example/vol:1.0"})
	task.DesiredState = api.TaskStateRunning
	ctrl, err := plugin.New(b, task, plugin.WithLogger(logrus.NewEntry(logger)))
	if err != nil {
		panic(err)
	}
	defer ctrl.Close()
	if err := plugintest.Drive(context.Background(), task, ctrl, api.TaskStateRunning); err != nil {
		panic(err)
	}

	for _, e := range hook.AllEntries() {
		fmt.Println(e.Level, e.Message, e.Data["task"], e.Data["plugin"])
	}
	// Output:
	// info plugin pulled task-1 vol
	// info plugin enabled task-1 vol
}
