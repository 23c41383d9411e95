package executor_test

import (
	"context"
	"crypto/tls"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"time"

	"github.com/docker/docker/api/types/swarm/runtime"
	dockerplugin "github.com/docker/docker/plugin"
	"github.com/moby/swarmkit/v2/api"
	"github.com/moby/swarmkit/v2/node"
	"github.com/sirupsen/logrus"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"

	"github.com/seed-e85c93d5/plugin/executor"
	"github.com/seed-e85c93d5/plugin/plugintest"
)

// Example starts a one-node swarm whose executor runs plugin tasks, creates
// a plugin service through the control API the way the Docker daemon does,
// and watches the node's plugin backend install and enable the plugin.
func Example() {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	logrus.SetOutput(io.Discard) // swarmkit logs a lot

	// On a Docker node the backend is the daemon's *plugin.Manager.
	backend := plugintest.NewBackend()
	events, unsubscribe := backend.SubscribeEvents(16)
	defer unsubscribe()

	// The state dir holds control.sock: keep its path short.
	stateDir, err := os.MkdirTemp("", "swk-")
	if err != nil {
		panic(err)
	}
	defer os.RemoveAll(stateDir)
	n, err := node.New(&node.Config{
		Hostname:         "node-1",
		StateDir:         stateDir,
		ListenControlAPI: filepath.Join(stateDir, "control.sock"),
		ListenRemoteAPI:  "127.0.0.1:0",
		Executor:         executor.New(backend, executor.WithHostname("node-1")),
	})
	if err != nil {
		panic(err)
	}
	if err := n.Start(ctx); err != nil {
		panic(err)
	}
	defer n.Stop(context.Background())
	<-n.Ready()

	// The manager's control API, over its local socket.
	conn := controlConn(ctx, filepath.Join(stateDir, "control.sock"))
	defer conn.Close()
	control := api.NewControlClient(conn)

	// A plugin service: global, with the generic "plugin" runtime whose
	// payload is the encoded runtime.PluginSpec (plugintest.Runtime).
	_, err = control.CreateService(ctx, &api.CreateServiceRequest{Spec: &api.ServiceSpec{
		Annotations: api.Annotations{Name: "vol"},
		Mode:        &api.ServiceSpec_Global{Global: &api.GlobalService{}},
		Task:        api.TaskSpec{Runtime: plugintest.Runtime(runtime.PluginSpec{Name: "vol", Remote: "example.com/vol:1"})},
	}})
	if err != nil {
		panic(err)
	}

	for {
		select {
		case e := <-events:
			switch e := e.(type) {
			case dockerplugin.EventCreate:
				fmt.Println("installed", e.Plugin.Name)
			case dockerplugin.EventEnable:
				fmt.Println("enabled", e.Plugin.Name)
				return
			}
		case <-ctx.Done():
			fmt.Println(ctx.Err())
			return
		}
	}
	// Output:
	// installed vol:latest
	// enabled vol:latest
}

// controlConn dials the manager's local control socket as swarmkit's node
// itself does (TLS without verification over the unix socket) and returns
// once the control API serves.
func controlConn(ctx context.Context, socket string) *grpc.ClientConn {
	conn, err := grpc.NewClient("unix:"+socket,
		grpc.WithTransportCredentials(credentials.NewTLS(&tls.Config{InsecureSkipVerify: true})))
	if err != nil {
		panic(err)
	}
	health := api.NewHealthClient(conn)
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	for {
		resp, err := health.Check(ctx, &api.HealthCheckRequest{Service: "ControlAPI"})
		if err == nil && resp.Status == api.HealthCheckResponse_SERVING {
			return conn
		}
		select {
		case <-ctx.Done():
			panic(ctx.Err())
		case <-tick.C:
		}
	}
}
