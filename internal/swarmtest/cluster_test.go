package swarmtest_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"reflect"
	"slices"
	"sync/atomic"
	"testing"
	"time"

	cerrdefs "github.com/containerd/errdefs"
	"github.com/distribution/reference"
	"github.com/docker/docker/api/types"
	"github.com/docker/docker/api/types/registry"
	"github.com/docker/docker/api/types/swarm"
	"github.com/docker/docker/api/types/swarm/runtime"
	mobyplugin "github.com/docker/docker/plugin"
	gogotypes "github.com/gogo/protobuf/types"
	"github.com/moby/swarmkit/v2/api"
	"github.com/opencontainers/go-digest"
	"go.uber.org/goleak"
	"gotest.tools/v3/assert"
	is "gotest.tools/v3/assert/cmp"

	"github.com/seed-e85c93d5/plugin"
	"github.com/seed-e85c93d5/plugin/internal/swarmtest"
	"github.com/seed-e85c93d5/plugin/plugintest"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m,
		// swarmkit v2.0.0's manager.Stop never stops the CSI volume manager
		// it starts, so every manager leaves exactly these two goroutines
		// behind, blocked forever: the manager's run loop and the goroutine
		// it started on its pending-volumes queue. Both are blocked in a
		// select of that very function, hence IgnoreTopFunction; nothing
		// else in those packages is ignored.
		goleak.IgnoreTopFunction("github.com/moby/swarmkit/v2/manager/csi.(*Manager).run"),
		goleak.IgnoreTopFunction("github.com/moby/swarmkit/v2/volumequeue.(*VolumeQueue).Wait"),
	)
}

const (
	remote     = "example.com/vol:1"
	pluginName = "vol" // the plugin is installed as "vol:latest"
	waitLimit  = 30 * time.Second
)

// startCluster starts a cluster of one manager and workers workers, each
// node with its own plugintest.Backend that serves remote, and stops it at
// the end of the test.
func startCluster(t *testing.T, workers int) *swarmtest.Cluster {
	t.Helper()
	return startClusterWith(t, workers, newBackend)
}

// startClusterWith is startCluster with each node's backend made by
// backendFor.
func startClusterWith(t *testing.T, workers int, backendFor func(hostname string) (plugin.Backend, error)) *swarmtest.Cluster {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), waitLimit)
	defer cancel()
	start := time.Now()
	c, err := swarmtest.Start(ctx, swarmtest.Options{
		Workers:    workers,
		NewBackend: backendFor,
		Verbose:    os.Getenv("SWARMTEST_VERBOSE") != "",
	})
	assert.NilError(t, err)
	t.Logf("cluster of %d nodes started in %v", 1+workers, time.Since(start).Round(time.Millisecond))
	t.Cleanup(func() {
		start := time.Now()
		assert.Check(t, c.Stop(context.Background()))
		t.Logf("cluster stopped in %v", time.Since(start).Round(time.Millisecond))
	})
	return c
}

func newBackend(string) (plugin.Backend, error) {
	b := plugintest.NewBackend()
	b.AddRemote(remote, plugintest.Remote{Env: []string{"DEBUG=0"}})
	return b, nil
}

// fake returns the plugintest.Backend of node n, under its wrapper if any.
func fake(n *swarmtest.Node) *plugintest.Backend {
	if b, ok := n.Backend.(*cutUpgradeBackend); ok {
		return b.Backend
	}
	return n.Backend.(*plugintest.Backend)
}

func waitCtx(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), waitLimit)
	t.Cleanup(cancel)
	return ctx
}

// specIs matches the tasks that run spec.
func specIs(spec runtime.PluginSpec) func(*api.Task) bool {
	return func(tk *api.Task) bool {
		got, err := swarmtest.PluginSpecOf(tk)
		return err == nil && reflect.DeepEqual(got, spec)
	}
}

// waitRunning waits until every node of c runs a task of spec.
// deploy creates the global plugin service "vol" and waits until it runs,
// installed and enabled, on every node.
func deploy(t *testing.T, c *swarmtest.Cluster, spec runtime.PluginSpec) string {
	t.Helper()
	id, err := c.CreatePluginService(waitCtx(t), "vol", spec)
	assert.NilError(t, err)
	waitRunning(t, c, id, spec)
	checkInstalled(t, c, id, spec)
	return id
}

func waitRunning(t *testing.T, c *swarmtest.Cluster, serviceID string, spec runtime.PluginSpec) {
	t.Helper()
	start := time.Now()
	_, err := c.WaitTasks(waitCtx(t), serviceID, swarmtest.RunningOn(c.NodeIDs(), specIs(spec)))
	assert.NilError(t, err)
	t.Logf("RUNNING on %d nodes in %v", len(c.Nodes()), time.Since(start).Round(time.Millisecond))
}

// checkInstalled checks, on every node, that the plugin is installed from
// remote, owned by the service, with env applied, enabled as spec says, and
// held by one reference per task of the service that is assigned to the node.
//
// A task keeps its reference until swarmkit removes it from the node, which
// happens only when the task reaper deletes it (task history retention), not
// when an update shuts it down: after an update the node has the old task and
// the new one, and the plugin two references.
func checkInstalled(t *testing.T, c *swarmtest.Cluster, serviceID string, spec runtime.PluginSpec) {
	t.Helper()
	for _, n := range c.Nodes() {
		b := fake(n)
		err := swarmtest.Poll(waitCtx(t), n.Hostname+": one reference per assigned task", func() (bool, string) {
			tasks, err := c.Tasks(waitCtx(t), serviceID)
			if err != nil {
				return false, err.Error()
			}
			assigned := 0
			for _, tk := range tasks {
				if tk.NodeID == n.ID() {
					assigned++
				}
			}
			_, refs, err := b.Plugin(pluginName)
			return err == nil && refs == assigned, fmt.Sprintf("refs=%d tasks=%d err=%v", refs, assigned, err)
		})
		assert.Check(t, err)
		obj, _, err := b.Plugin(pluginName)
		if !assert.Check(t, err, n.Hostname) {
			continue
		}
		assert.Check(t, is.Equal(obj.Name, "vol:latest"), n.Hostname)
		assert.Check(t, is.Equal(obj.PluginReference, remote), n.Hostname)
		assert.Check(t, is.Equal(obj.Enabled, !spec.Disabled), n.Hostname)
		for _, env := range spec.Env {
			assert.Check(t, is.Contains(obj.Settings.Env, env), n.Hostname)
		}
		pl, err := b.Get(pluginName)
		if assert.Check(t, err, n.Hostname) {
			// Set when the plugin was created, never changed afterwards.
			assert.Check(t, is.Equal(pl.SwarmServiceID, serviceID), n.Hostname)
		}
	}
}

// removeAndCheckGone removes the service and waits until no node has the
// plugin any more.
func removeAndCheckGone(t *testing.T, c *swarmtest.Cluster, serviceID string) {
	t.Helper()
	start := time.Now()
	assert.NilError(t, c.RemoveService(waitCtx(t), serviceID))
	for _, n := range c.Nodes() {
		b := fake(n)
		err := swarmtest.Poll(waitCtx(t), n.Hostname+": plugin removed", func() (bool, string) {
			obj, refs, err := b.Plugin(pluginName)
			if cerrdefs.IsNotFound(err) {
				return true, ""
			}
			return false, fmt.Sprintf("enabled=%v refs=%d err=%v", obj.Enabled, refs, err)
		})
		assert.Check(t, err)
	}
	t.Logf("plugin gone from %d nodes in %v", len(c.Nodes()), time.Since(start).Round(time.Millisecond))
}

// TestOneManager runs a plugin service on a cluster of one manager: create,
// change its env, remove.
func TestOneManager(t *testing.T) {
	c := startCluster(t, 0)
	spec := runtime.PluginSpec{Name: pluginName, Remote: remote, Env: []string{"DEBUG=1"}}
	id := deploy(t, c, spec)

	t.Run("wait timeout", func(t *testing.T) {
		ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
		defer cancel()
		tasks, err := c.WaitTasks(ctx, id, func([]*api.Task) bool { return false })
		assert.Check(t, is.Len(tasks, 1))
		assert.Check(t, is.ErrorContains(err, "context deadline exceeded"))
		assert.Check(t, is.ErrorContains(err, "manager"))
		assert.Check(t, is.ErrorContains(err, "state=RUNNING"))
	})

	t.Run("env update", func(t *testing.T) {
		spec.Env = []string{"DEBUG=2"}
		assert.NilError(t, c.UpdateService(waitCtx(t), id, spec))
		waitRunning(t, c, id, spec)
		checkInstalled(t, c, id, spec)
	})

	t.Run("remove", func(t *testing.T) {
		removeAndCheckGone(t, c, id)
	})
}

// TestManagerAndWorkers runs a plugin service on one manager and two
// workers, disables it, lets a third worker join, and removes it.
func TestManagerAndWorkers(t *testing.T) {
	c := startCluster(t, 2)
	spec := runtime.PluginSpec{Name: pluginName, Remote: remote, Env: []string{"DEBUG=1"}}
	id := deploy(t, c, spec)

	// Every later step needs the one before.
	ok := t.Run("disable", func(t *testing.T) {
		spec.Disabled = true
		assert.NilError(t, c.UpdateService(waitCtx(t), id, spec))
		// A new task RUNNING on every node; the old task's final state is
		// not asserted (it may end FAILED, see NOTES "Update race").
		waitRunning(t, c, id, spec)
		checkInstalled(t, c, id, spec)
	})
	ok = ok && t.Run("late worker", func(t *testing.T) {
		n, err := c.AddWorker(waitCtx(t))
		assert.NilError(t, err)
		assert.Check(t, slices.Contains(c.NodeIDs(), n.ID()))
		waitRunning(t, c, id, spec)
		checkInstalled(t, c, id, spec)
	})
	if ok {
		t.Run("remove", func(t *testing.T) {
			removeAndCheckGone(t, c, id)
		})
	}
}

// TestStartFails checks that a failed Start stops what it started: goleak
// (TestMain) finds no node left running, and no state dir is left.
func TestStartFails(t *testing.T) {
	tmp := t.TempDir()
	t.Setenv("TMPDIR", tmp) // where the state dirs go
	ctx, cancel := context.WithTimeout(context.Background(), waitLimit)
	defer cancel()
	_, err := swarmtest.Start(ctx, swarmtest.Options{
		Workers: 1,
		NewBackend: func(host string) (plugin.Backend, error) {
			if host == "worker-1" {
				return nil, errors.New("no backend today")
			}
			return newBackend(host)
		},
	})
	assert.Check(t, is.ErrorContains(err, "backend for worker-1: no backend today"))
	left, err := os.ReadDir(tmp)
	assert.NilError(t, err)
	assert.Check(t, is.Len(left, 0), "state dirs left behind")

	_, err = swarmtest.Start(ctx, swarmtest.Options{})
	assert.Check(t, is.ErrorContains(err, "NewBackend is required"))
}

// TestPluginServiceSpec checks the service spec the harness builds and its
// task predicates.
func TestPluginServiceSpec(t *testing.T) {
	spec := runtime.PluginSpec{Name: "vol", Remote: remote, Disabled: true, Env: []string{"A=1"}}
	ss := swarmtest.PluginServiceSpec("svc", spec)
	assert.Check(t, is.Equal(ss.Annotations.Name, "svc"))
	_, global := ss.Mode.(*api.ServiceSpec_Global)
	assert.Check(t, global)
	g := ss.Task.GetGeneric()
	assert.Assert(t, g != nil)
	assert.Check(t, is.Equal(g.Kind, plugin.RuntimeKind))
	assert.Check(t, is.Equal(g.Payload.TypeUrl, string(swarm.RuntimeURLPlugin)))
	got, err := swarmtest.PluginSpecOf(&api.Task{Spec: ss.Task})
	assert.NilError(t, err)
	assert.Check(t, is.DeepEqual(got, spec))

	_, err = swarmtest.PluginSpecOf(&api.Task{ID: "t1"})
	assert.Check(t, is.ErrorContains(err, "task t1 has no generic runtime payload"))

	pred := swarmtest.RunningOn([]string{"a", "b"}, nil)
	running := func(node string) *api.Task {
		return &api.Task{NodeID: node, DesiredState: api.TaskStateRunning, Status: api.TaskStatus{State: api.TaskStateRunning}}
	}
	assert.Check(t, !pred([]*api.Task{running("a")}))
	assert.Check(t, pred([]*api.Task{running("a"), running("b")}))
	shutdown := running("b")
	shutdown.DesiredState = api.TaskStateShutdown
	assert.Check(t, !pred([]*api.Task{running("a"), shutdown}))
}

// cutUpgradeBackend is a node's fake whose first Upgrade stalls, like a slow
// registry, until swarmkit cancels the Prepare that called it, and then
// fails with the context's error wrapped as moby's fetch wraps it.
//
// swarmkit cancels that Prepare when it raises the new task of an update
// from desired READY to RUNNING, which it does once the old task has shut
// down (restart.Supervisor.DelayStart). Nothing orders the new task's
// Prepare before that shutdown but timing (the old task's cancelled Wait
// costs a 1 s retry), so the fake makes it certain: once holdWait is set,
// the next cancel of an event subscription, that of the old task's Wait as
// it returns, waits until the first Upgrade has begun. The old task can
// shut down only after its Wait has returned.
type cutUpgradeBackend struct {
	*plugintest.Backend
	holdWait  atomic.Bool
	upgraded  atomic.Bool
	upgrading chan struct{} // closed when the first Upgrade begins
	cut       chan error    // the first Upgrade's error
	stop      <-chan struct{}
}

func newCutUpgradeBackend(stop <-chan struct{}) *cutUpgradeBackend {
	b, _ := newBackend("")
	return &cutUpgradeBackend{
		Backend:   b.(*plugintest.Backend),
		upgrading: make(chan struct{}),
		cut:       make(chan error, 1),
		stop:      stop,
	}
}

func (b *cutUpgradeBackend) Upgrade(ctx context.Context, ref reference.Named, name string, h http.Header, a *registry.AuthConfig, p types.PluginPrivileges, w io.Writer) error {
	if !b.upgraded.CompareAndSwap(false, true) {
		return b.Backend.Upgrade(ctx, ref, name, h, a, p, w)
	}
	close(b.upgrading)
	select {
	case <-ctx.Done():
	case <-b.stop:
	}
	err := fmt.Errorf("error resolving plugin reference: %w", context.Cause(ctx))
	b.cut <- err
	return err
}

func (b *cutUpgradeBackend) SubscribeEvents(buffer int, events ...mobyplugin.Event) (<-chan interface{}, func()) {
	ch, cancel := b.Backend.SubscribeEvents(buffer, events...)
	return ch, func() {
		if b.holdWait.CompareAndSwap(true, false) {
			select {
			case <-b.upgrading:
			case <-b.stop:
			}
		}
		cancel()
	}
}

// TestUpdateWithCancelledPrepare: during an update, the new task's Prepare
// is cancelled while it upgrades (swarmkit raises the task to RUNNING); it
// is retried, not rejected, and the update completes with every node
// running the new spec.
func TestUpdateWithCancelledPrepare(t *testing.T) {
	stop := make(chan struct{})
	c := startClusterWith(t, 1, func(string) (plugin.Backend, error) { return newCutUpgradeBackend(stop), nil })
	t.Cleanup(func() { close(stop) }) // runs before the cluster stops
	spec := runtime.PluginSpec{Name: pluginName, Remote: remote, Env: []string{"DEBUG=1"}}
	id := deploy(t, c, spec)

	for _, n := range c.Nodes() {
		n.Backend.(*cutUpgradeBackend).holdWait.Store(true)
	}
	// The tag is pushed again with new content, so the new task upgrades.
	for _, n := range c.Nodes() {
		fake(n).AddRemote(remote, plugintest.Remote{Env: []string{"DEBUG=0"}, Digest: digest.FromString("pushed again")})
	}
	spec.Env = []string{"DEBUG=2"}
	rt := plugintest.Runtime(spec)
	assert.NilError(t, c.UpdateServiceSpec(waitCtx(t), id, func(s *api.ServiceSpec) {
		s.Task.Runtime = rt
		// A new task that never ran pauses the update whatever the
		// monitoring period; a short one only ends the wait for
		// COMPLETED sooner than the default 5 s.
		s.Update.Monitor = gogotypes.DurationProto(500 * time.Millisecond)
	}))
	for _, n := range c.Nodes() {
		select {
		case err := <-n.Backend.(*cutUpgradeBackend).cut:
			assert.Check(t, errors.Is(err, context.Canceled), "%s: %v", n.Hostname, err)
		case <-waitCtx(t).Done():
			t.Fatalf("%s: the first Upgrade was not cancelled", n.Hostname)
		}
	}
	waitRunning(t, c, id, spec)

	var status *api.UpdateStatus
	err := swarmtest.Poll(waitCtx(t), "the update to end", func() (bool, string) {
		resp, err := c.Control().GetService(waitCtx(t), &api.GetServiceRequest{ServiceID: id})
		if err != nil {
			return false, err.Error()
		}
		status = resp.Service.UpdateStatus
		return status != nil && status.State != api.UpdateStatus_UPDATING, fmt.Sprintf("%v", status)
	})
	assert.NilError(t, err)
	assert.Check(t, is.Equal(status.State, api.UpdateStatus_COMPLETED), "%s", status.Message)
	tasks, err := c.Tasks(waitCtx(t), id)
	assert.NilError(t, err)
	for _, tk := range tasks {
		assert.Check(t, tk.Status.State != api.TaskStateRejected, "a task was rejected:\n%s", c.FormatTasks(tasks))
	}
	checkInstalled(t, c, id, spec)
	removeAndCheckGone(t, c, id)
}
