package swarmtest_test

// Restart safety (issue 16) on a real swarmkit cluster: nodes are stopped
// and started again in process, on the same state dir and the same
// in-memory plugin Backend (which stands for the Manager's state on disk).
//
// swarmkit stops a node the same way for a leave and for a shutdown: the
// agent's Leave hands the worker an empty complete set of assignments, and
// every task controller gets Remove then Close, without the node waiting for
// them. These tests therefore synchronise on the task's reference: Remove
// releases it, a resumed or new task's Wait or Prepare takes one.

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	cerrdefs "github.com/containerd/errdefs"
	"github.com/docker/docker/api/types/swarm/runtime"
	gogotypes "github.com/gogo/protobuf/types"
	"github.com/moby/swarmkit/v2/api"
	"github.com/opencontainers/go-digest"
	"gotest.tools/v3/assert"
	is "gotest.tools/v3/assert/cmp"

	"github.com/seed-e85c93d5/plugin"
	"github.com/seed-e85c93d5/plugin/internal/keptplugins"
	"github.com/seed-e85c93d5/plugin/internal/swarmtest"
	"github.com/seed-e85c93d5/plugin/plugintest"
)

// startRestartCluster starts a cluster of one manager and workers workers
// with opts (RestartSafe, logging), each node with a newBackend, and stops
// it at the end of the test.
func startRestartCluster(t *testing.T, workers int, opts swarmtest.Options) *swarmtest.Cluster {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), waitLimit)
	defer cancel()
	opts.Workers = workers
	if opts.NewBackend == nil {
		opts.NewBackend = newBackend
	}
	if !opts.Verbose {
		opts.Verbose = os.Getenv("SWARMTEST_VERBOSE") != ""
	}
	start := time.Now()
	c, err := swarmtest.Start(ctx, opts)
	assert.NilError(t, err)
	t.Logf("cluster of %d nodes started in %v (RestartSafe %v)", 1+workers, since(start), opts.RestartSafe)
	t.Cleanup(func() {
		start := time.Now()
		assert.Check(t, c.Stop(context.Background()))
		t.Logf("cluster stopped in %v", since(start))
	})
	return c
}

func since(t time.Time) time.Duration { return time.Since(t).Round(time.Millisecond) }

// quickRestarts is a plugin service spec whose failed tasks are replaced
// after 100 ms instead of swarmkit's default 5 s.
func quickRestarts(name string, spec runtime.PluginSpec) *api.ServiceSpec {
	s := swarmtest.PluginServiceSpec(name, spec)
	s.Task.Restart = &api.RestartPolicy{Condition: api.RestartOnAny, Delay: gogotypes.DurationProto(100 * time.Millisecond)}
	return s
}

// createService creates a service from spec and waits until a task of it
// runs on every running node, its plugin held by exactly that task.
func createService(t *testing.T, c *swarmtest.Cluster, spec *api.ServiceSpec) string {
	t.Helper()
	start := time.Now()
	resp, err := c.Control().CreateService(waitCtx(t), &api.CreateServiceRequest{Spec: spec})
	assert.NilError(t, err)
	id := resp.Service.ID
	var ids []string
	for _, n := range c.Nodes() {
		if n.Running() {
			ids = append(ids, n.ID())
		}
	}
	_, err = c.WaitTasks(waitCtx(t), id, swarmtest.RunningOn(ids, nil))
	assert.NilError(t, err)
	for _, n := range c.Nodes() {
		if n.Running() {
			waitRefs(t, n, 1)
		}
	}
	t.Logf("service %s RUNNING on %d nodes in %v", spec.Annotations.Name, len(ids), since(start))
	return id
}

// waitRefs waits until node n's plugin has refs references.
func waitRefs(t *testing.T, n *swarmtest.Node, refs int) {
	t.Helper()
	err := swarmtest.Poll(waitCtx(t), fmt.Sprintf("%s: plugin with %d reference(s)", n.Hostname, refs), func() (bool, string) {
		s, err := fake(n).Snapshot(pluginName)
		return err == nil && s.Refs == refs, fmt.Sprintf("refs=%d err=%v", s.Refs, err)
	})
	assert.NilError(t, err)
}

// waitGone waits until node n has no plugin named pluginName.
func waitGone(t *testing.T, n *swarmtest.Node) {
	t.Helper()
	err := swarmtest.Poll(waitCtx(t), n.Hostname+": plugin removed", func() (bool, string) {
		s, err := fake(n).Snapshot(pluginName)
		return cerrdefs.IsNotFound(err), fmt.Sprintf("id=%.12s enabled=%v refs=%d err=%v", s.ID, s.Enabled, s.Refs, err)
	})
	assert.NilError(t, err)
}

// kept returns node n's record of kept plugins.
func kept(t *testing.T, n *swarmtest.Node) []keptplugins.Plugin {
	t.Helper()
	ks, err := keptplugins.Open(n.KeepDir()).Load()
	assert.NilError(t, err)
	return ks
}

// keptFileExists reports whether node n's record of kept plugins exists.
func keptFileExists(t *testing.T, n *swarmtest.Node) bool {
	t.Helper()
	_, err := os.Stat(filepath.Join(n.KeepDir(), keptplugins.FileName))
	if errors.Is(err, fs.ErrNotExist) {
		return false
	}
	assert.NilError(t, err)
	return true
}

// waitKeptGone waits until node n's record of kept plugins is gone: the
// first complete set of assignments decided every kept plugin.
func waitKeptGone(t *testing.T, n *swarmtest.Node) {
	t.Helper()
	err := swarmtest.Poll(waitCtx(t), n.Hostname+": kept-plugin record gone", func() (bool, string) {
		return !keptFileExists(t, n), "the record exists"
	})
	assert.NilError(t, err)
}

// tasksOn returns the tasks of tasks that are assigned to node nodeID.
func tasksOn(tasks []*api.Task, nodeID string) []*api.Task {
	var on []*api.Task
	for _, tk := range tasks {
		if tk.NodeID == nodeID {
			on = append(on, tk)
		}
	}
	return on
}

// runningOn returns the one task of service serviceID on node n, which
// must be RUNNING and desired RUNNING.
func runningOn(t *testing.T, c *swarmtest.Cluster, serviceID string, n *swarmtest.Node) *api.Task {
	t.Helper()
	tasks, err := c.Tasks(waitCtx(t), serviceID)
	assert.NilError(t, err)
	on := tasksOn(tasks, n.ID())
	assert.Assert(t, is.Len(on, 1), "tasks:\n%s", c.FormatTasks(tasks))
	assert.Assert(t, on[0].Status.State == api.TaskStateRunning && on[0].DesiredState == api.TaskStateRunning, "tasks:\n%s", c.FormatTasks(tasks))
	return on[0]
}

// changes returns the calls of b that change a plugin (or pull one).
func changes(b *plugintest.Backend) []string {
	var out []string
	for _, call := range b.Calls() {
		switch call.Method {
		case "Pull", "Upgrade", "Enable", "Disable", "Remove", "Set":
			out = append(out, fmt.Sprintf("%s(%.12s) err=%v", call.Method, call.Name, call.Err))
		}
	}
	return out
}

// count returns how many calls of b were of method.
func count(b *plugintest.Backend, method string) int {
	n := 0
	for _, call := range b.Calls() {
		if call.Method == method {
			n++
		}
	}
	return n
}

// syncBuffer is a bytes.Buffer for the logs of the nodes' goroutines.
type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// TestRestartKeeps: a worker that shuts down and starts again keeps its
// plugin (the same ID, the same *v2.Plugin, enabled, never pulled, disabled
// or removed) and its task resumes: the same task ID, RUNNING, its Wait
// holding the plugin again. The kept-plugin record is gone once the first
// complete set of assignments claimed the plugin, and the resumed task
// owns the plugin: removing the service removes it.
func TestRestartKeeps(t *testing.T) {
	c := startRestartCluster(t, 1, swarmtest.Options{RestartSafe: true})
	id := createService(t, c, quickRestarts("vol", runtime.PluginSpec{Name: pluginName, Remote: remote}))
	w := c.Nodes()[1]
	b := fake(w)
	nodeID := w.ID()
	task := runningOn(t, c, id, w)
	before, err := b.Snapshot(pluginName)
	assert.NilError(t, err)
	pl, err := b.Get(pluginName)
	assert.NilError(t, err)
	b.ResetCalls()

	start := time.Now()
	assert.NilError(t, w.Shutdown(waitCtx(t)))
	t.Logf("worker shut down in %v", since(start))
	// The Remove of the shutdown's leave released the task's reference
	// (the node does not wait for it) and kept the plugin.
	waitRefs(t, w, 0)
	s, err := b.Snapshot(pluginName)
	assert.NilError(t, err)
	assert.Check(t, is.Equal(s.ID, before.ID))
	assert.Check(t, s.Enabled)
	ks := kept(t, w)
	if assert.Check(t, is.Len(ks, 1)) {
		assert.Check(t, is.Equal(ks[0].ID, before.ID))
		assert.Check(t, is.Equal(ks[0].Service, id))
		assert.Check(t, is.Equal(ks[0].Name, "vol:latest"))
	}

	start = time.Now()
	assert.NilError(t, w.Restart(waitCtx(t)))
	t.Logf("worker restarted in %v", since(start))
	assert.Check(t, is.Equal(w.ID(), nodeID), "a restart keeps the node")
	// The resumed task's Wait holds the plugin again; the first complete
	// set saw it claimed.
	waitRefs(t, w, 1)
	waitKeptGone(t, w)
	t.Logf("task resumed, record gone, %v after the restart began", since(start))
	after := runningOn(t, c, id, w)
	assert.Check(t, is.Equal(after.ID, task.ID), "the same task resumes")
	s, err = b.Snapshot(pluginName)
	assert.NilError(t, err)
	assert.Check(t, is.Equal(s.ID, before.ID))
	assert.Check(t, s.Enabled)
	assert.Check(t, is.Equal(s.SwarmServiceID, id))
	assert.Check(t, is.Len(changes(b), 0), "the plugin was changed across the restart")
	again, err := b.Get(pluginName)
	assert.NilError(t, err)
	assert.Check(t, again == pl, "Get returns another *v2.Plugin")

	removeAndCheckGone(t, c, id)
	assert.Check(t, !keptFileExists(t, w))
}

// TestRestartWithoutRestartSafe is the control of TestRestartKeeps: with
// the plain executor, as upstream, the shutdown removes the plugin, the
// resumed task fails, and a new task pulls the plugin again under a new ID.
func TestRestartWithoutRestartSafe(t *testing.T) {
	c := startRestartCluster(t, 1, swarmtest.Options{})
	id := createService(t, c, quickRestarts("vol", runtime.PluginSpec{Name: pluginName, Remote: remote}))
	w := c.Nodes()[1]
	b := fake(w)
	task := runningOn(t, c, id, w)
	before, err := b.Snapshot(pluginName)
	assert.NilError(t, err)

	assert.NilError(t, w.Shutdown(waitCtx(t)))
	waitGone(t, w)
	assert.Check(t, is.Equal(count(b, "Remove"), 1))
	assert.Check(t, !keptFileExists(t, w))
	b.ResetCalls()

	start := time.Now()
	assert.NilError(t, w.Restart(waitCtx(t)))
	tasks, err := c.WaitTasks(waitCtx(t), id, func(tasks []*api.Task) bool {
		on := tasksOn(tasks, w.ID())
		old := slices.IndexFunc(on, func(tk *api.Task) bool { return tk.ID == task.ID })
		return old >= 0 && on[old].Status.State > api.TaskStateRunning && swarmtest.RunningOn([]string{w.ID()}, nil)(tasks)
	})
	assert.NilError(t, err)
	waitRefs(t, w, 1)
	t.Logf("resumed task ended, a new one RUNNING, %v after the restart began:\n%s", since(start), c.FormatTasks(tasks))
	for _, tk := range tasksOn(tasks, w.ID()) {
		if tk.ID == task.ID {
			assert.Check(t, is.Equal(tk.Status.State, api.TaskStateFailed))
			assert.Check(t, is.Contains(tk.Status.Err, "plugin"))
		}
	}
	assert.Check(t, is.Equal(count(b, "Pull"), 1), "calls: %v", changes(b))
	s, err := b.Snapshot(pluginName)
	assert.NilError(t, err)
	assert.Check(t, s.ID != before.ID, "the plugin was installed again under a new ID")
}

// TestLeaveRemoves: a worker that leaves (no ShuttingDown) removes its
// plugin; so does one that leaves after a restart that kept it.
func TestLeaveRemoves(t *testing.T) {
	c := startRestartCluster(t, 2, swarmtest.Options{RestartSafe: true})
	id := createService(t, c, quickRestarts("vol", runtime.PluginSpec{Name: pluginName, Remote: remote}))
	w1, w2 := c.Nodes()[1], c.Nodes()[2]

	t.Run("leave", func(t *testing.T) {
		assert.NilError(t, w1.Leave(waitCtx(t)))
		waitGone(t, w1)
		assert.Check(t, !keptFileExists(t, w1))
	})

	t.Run("leave after a restart", func(t *testing.T) {
		assert.NilError(t, w2.Shutdown(waitCtx(t)))
		waitRefs(t, w2, 0)
		assert.Check(t, is.Len(kept(t, w2), 1))
		assert.NilError(t, w2.Restart(waitCtx(t)))
		waitRefs(t, w2, 1)
		waitKeptGone(t, w2)
		assert.NilError(t, w2.Leave(waitCtx(t)))
		waitGone(t, w2)
		assert.Check(t, !keptFileExists(t, w2))
	})

	// The manager was never touched.
	s, err := fake(c.Manager()).Snapshot(pluginName)
	assert.NilError(t, err)
	assert.Check(t, s.Enabled && s.Refs == 1 && s.SwarmServiceID == id)
}

// TestServiceDeletedWhileDown: the service is removed while the worker is
// down; after the restart, the worker's plugin goes and so does the record.
// The managers still assign the old task (desired REMOVE: it is deleted
// only once the worker reports it shut down), and a task being removed
// claims nothing, so the first complete set removes the plugin.
func TestServiceDeletedWhileDown(t *testing.T) {
	logs := &syncBuffer{}
	c := startRestartCluster(t, 1, swarmtest.Options{RestartSafe: true, Verbose: true, LogOutput: logs})
	id := createService(t, c, quickRestarts("vol", runtime.PluginSpec{Name: pluginName, Remote: remote}))
	w := c.Nodes()[1]
	b := fake(w)
	task := runningOn(t, c, id, w)

	assert.NilError(t, w.Shutdown(waitCtx(t)))
	waitRefs(t, w, 0)
	assert.Check(t, is.Len(kept(t, w), 1))
	assert.NilError(t, c.RemoveService(waitCtx(t), id))
	waitGone(t, c.Manager())
	tasks, err := c.Tasks(waitCtx(t), id)
	assert.NilError(t, err)
	t.Logf("tasks of the deleted service while the worker is down:\n%s", c.FormatTasks(tasks))
	b.ResetCalls()

	start := time.Now()
	assert.NilError(t, w.Restart(waitCtx(t)))
	waitGone(t, w)
	waitKeptGone(t, w)
	t.Logf("plugin and record gone %v after the restart began; calls %v", since(start), changes(b))
	assert.Check(t, is.Equal(count(b, "Pull"), 0))
	_, err = c.WaitTasks(waitCtx(t), id, func(tasks []*api.Task) bool { return len(tasks) == 0 })
	assert.Check(t, err, "the old task is never deleted")

	assert.Check(t, is.Equal(logLine(logs.String(), "plugin kept across the restart is in service again"), ""), "a task being removed claimed the plugin")
	assert.Check(t, logLine(logs.String(), "plugin removed: it was kept across the restart") != "", "the first complete set did not remove the plugin")
	assert.Check(t, strings.Contains(logs.String(), task.ID), "the old task %.10s was not assigned again", task.ID)
}

// logLine returns the first line of logs that contains msg, or "".
func logLine(logs, msg string) string {
	for _, line := range strings.Split(logs, "\n") {
		if strings.Contains(line, msg) {
			return strings.TrimSpace(line)
		}
	}
	return ""
}

// TestWipedStateServiceDeleted: the service is removed while the worker is
// down, and the worker's swarm state is wiped: it joins as a new node (same
// backend, same record), where nothing claims the kept plugin, so the first
// complete set removes it.
func TestWipedStateServiceDeleted(t *testing.T) {
	c := startRestartCluster(t, 1, swarmtest.Options{RestartSafe: true})
	id := createService(t, c, quickRestarts("vol", runtime.PluginSpec{Name: pluginName, Remote: remote}))
	w := c.Nodes()[1]
	b := fake(w)
	oldID := w.ID()

	assert.NilError(t, w.Shutdown(waitCtx(t)))
	waitRefs(t, w, 0)
	assert.Check(t, is.Len(kept(t, w), 1))
	assert.NilError(t, c.RemoveService(waitCtx(t), id))
	waitGone(t, c.Manager())
	b.ResetCalls()

	start := time.Now()
	assert.NilError(t, w.Rejoin(waitCtx(t)))
	t.Logf("worker joined as a new node in %v", since(start))
	assert.Check(t, w.ID() != oldID, "a new node")
	waitGone(t, w)
	waitKeptGone(t, w)
	t.Logf("plugin and record gone %v after the rejoin began", since(start))
	assert.Check(t, is.Equal(count(b, "Pull"), 0))
	assert.Check(t, is.Equal(count(b, "Remove"), 1), "calls: %v", changes(b))
}

// TestWipedStateServiceKept: the worker's swarm state is wiped while it is
// down; it joins as a new node and the global service gives it a new task,
// which runs, and no kept plugin is left behind: the record is gone and the
// node has one plugin of the name, the service's, enabled.
//
// A new node's first complete set of assignments is empty (the managers
// create its task of a global service only once it is READY, and send it in
// a later, incremental set), so that set removes the kept plugin, and the
// new task pulls the plugin again, under a new ID, as on any new node.
func TestWipedStateServiceKept(t *testing.T) {
	d := digest.FromString("vol:1")
	pinned := "example.com/vol@" + d.String()
	c := startRestartCluster(t, 1, swarmtest.Options{
		RestartSafe: true,
		NewBackend: func(string) (plugin.Backend, error) {
			b := plugintest.NewBackend()
			b.AddRemote(remote, plugintest.Remote{Env: []string{"DEBUG=0"}, Digest: d})
			return b, nil
		},
	})
	id := createService(t, c, quickRestarts("vol", runtime.PluginSpec{Name: pluginName, Remote: pinned}))
	w := c.Nodes()[1]
	b := fake(w)
	oldID := w.ID()
	task := runningOn(t, c, id, w)
	before, err := b.Snapshot(pluginName)
	assert.NilError(t, err)
	assert.Check(t, is.Equal(before.PluginReference, pinned))
	pl, err := b.Get(pluginName)
	assert.NilError(t, err)

	assert.NilError(t, w.Shutdown(waitCtx(t)))
	waitRefs(t, w, 0)
	assert.Check(t, is.Len(kept(t, w), 1))
	b.ResetCalls()

	start := time.Now()
	assert.NilError(t, w.Rejoin(waitCtx(t)))
	assert.Check(t, w.ID() != oldID, "a new node")
	_, err = c.WaitTasks(waitCtx(t), id, swarmtest.RunningOn([]string{w.ID()}, nil))
	assert.NilError(t, err)
	waitRefs(t, w, 1)
	waitKeptGone(t, w)
	t.Logf("new task RUNNING, record gone, %v after the rejoin began; calls %v", since(start), changes(b))
	assert.Check(t, runningOn(t, c, id, w).ID != task.ID, "a new task on the new node")
	s, err := b.Snapshot(pluginName)
	assert.NilError(t, err)
	assert.Check(t, s.Enabled)
	assert.Check(t, is.Equal(s.SwarmServiceID, id))
	assert.Check(t, is.Equal(s.PluginReference, pinned))
	assert.Check(t, s.ID != before.ID, "a new node pulls its plugins again")
	assert.Check(t, is.Equal(count(b, "Remove"), 1), "calls: %v", changes(b))
	assert.Check(t, is.Equal(count(b, "Pull"), 1), "calls: %v", changes(b))
	again, err := b.Get(pluginName)
	assert.NilError(t, err)
	assert.Check(t, again != pl, "the kept *v2.Plugin is gone")
}

// TestOtherServiceAfterDeletedWhileDown is the orphan case of issue 16:
// service S1 is removed while the worker is down, and S2 is created with a
// plugin of the same name. After the restart, S2's task on the worker runs,
// with a plugin of S2's own, and neither S1's plugin nor the record is left.
//
// The managers still assign S1's old task to the worker (desired REMOVE),
// which claims nothing, so the first complete set removes S1's plugin, and
// S2's first task on the worker pulls its own and runs: "plugin already
// exists" never happens. S2's restart delay is cut to 100 ms, so that a
// rejected task would show quickly as a second one.
func TestOtherServiceAfterDeletedWhileDown(t *testing.T) {
	logs := &syncBuffer{}
	c := startRestartCluster(t, 1, swarmtest.Options{RestartSafe: true, Verbose: true, LogOutput: logs})
	spec := runtime.PluginSpec{Name: pluginName, Remote: remote}
	s1 := createService(t, c, quickRestarts("vol", spec))
	w := c.Nodes()[1]
	b := fake(w)
	old := runningOn(t, c, s1, w)
	before, err := b.Snapshot(pluginName)
	assert.NilError(t, err)

	assert.NilError(t, w.Shutdown(waitCtx(t)))
	waitRefs(t, w, 0)
	assert.Check(t, is.Len(kept(t, w), 1))
	assert.NilError(t, c.RemoveService(waitCtx(t), s1))
	waitGone(t, c.Manager())
	s2 := createService(t, c, quickRestarts("vol2", spec))
	b.ResetCalls()

	start := time.Now()
	assert.NilError(t, w.Restart(waitCtx(t)))
	tasks, err := c.WaitTasks(waitCtx(t), s2, swarmtest.RunningOn([]string{w.ID()}, nil))
	assert.NilError(t, err)
	waitRefs(t, w, 1)
	waitKeptGone(t, w)
	t.Logf("S2 RUNNING on the worker, record gone, %v after the restart began; calls %v; tasks:\n%s", since(start), changes(b), c.FormatTasks(tasks))
	s, err := b.Snapshot(pluginName)
	assert.NilError(t, err)
	assert.Check(t, is.Equal(s.SwarmServiceID, s2))
	assert.Check(t, s.ID != before.ID, "S2 pulled its own plugin")
	assert.Check(t, s.Enabled)
	_, err = c.WaitTasks(waitCtx(t), s1, func(tasks []*api.Task) bool { return len(tasks) == 0 })
	assert.Check(t, err, "S1's old task is never deleted")

	t.Logf("S2's Prepare waited for the first complete set: %v", logLine(logs.String(), "waiting for the node's first complete set of assignments") != "")
	assert.Check(t, is.Equal(logLine(logs.String(), "plugin kept across the restart is in service again"), ""), "S1's old task %.10s claimed the plugin", old.ID)
	assert.Check(t, !strings.Contains(logs.String(), "plugin already exists"), "an S2 task met S1's plugin")
	on := tasksOn(tasks, w.ID())
	assert.Check(t, len(on) == 1, "S2's first task on the worker did not run:\n%s", c.FormatTasks(tasks))
}

// TestManagerRestartKeeps: the manager, which also runs the global service,
// shuts down and starts again (on the address the worker knows): its plugin
// is kept and its task resumes, the worker's plugin is untouched, and the
// control API serves again, so removing the service removes the plugin
// everywhere.
func TestManagerRestartKeeps(t *testing.T) {
	c := startRestartCluster(t, 1, swarmtest.Options{RestartSafe: true})
	id := createService(t, c, quickRestarts("vol", runtime.PluginSpec{Name: pluginName, Remote: remote}))
	m, w := c.Manager(), c.Nodes()[1]
	task := runningOn(t, c, id, m)
	before, err := fake(m).Snapshot(pluginName)
	assert.NilError(t, err)
	fake(m).ResetCalls()
	fake(w).ResetCalls()

	start := time.Now()
	assert.NilError(t, m.Shutdown(waitCtx(t)))
	waitRefs(t, m, 0)
	assert.Check(t, is.Len(kept(t, m), 1))
	assert.NilError(t, m.Restart(waitCtx(t)))
	waitRefs(t, m, 1)
	waitKeptGone(t, m)
	t.Logf("manager restarted, task resumed, record gone in %v", since(start))
	assert.Check(t, is.Equal(runningOn(t, c, id, m).ID, task.ID))
	assert.Check(t, is.Equal(runningOn(t, c, id, w).ID != "", true))
	s, err := fake(m).Snapshot(pluginName)
	assert.NilError(t, err)
	assert.Check(t, is.Equal(s.ID, before.ID))
	assert.Check(t, s.Enabled)
	assert.Check(t, is.Len(changes(fake(m)), 0))
	assert.Check(t, is.Len(changes(fake(w)), 0))
	waitRefs(t, w, 1)

	removeAndCheckGone(t, c, id)
}

// TestNodeRestartAPI checks the harness's refusals.
func TestNodeRestartAPI(t *testing.T) {
	c := startRestartCluster(t, 1, swarmtest.Options{})
	m, w := c.Manager(), c.Nodes()[1]
	assert.Check(t, w.Running())
	assert.Check(t, w.KeepDir() != "" && w.KeepDir() != w.StateDir())
	assert.Check(t, is.ErrorContains(w.Restart(waitCtx(t)), "worker-1 is running"))
	assert.Check(t, is.ErrorContains(w.Rejoin(waitCtx(t)), "worker-1 is running"))
	assert.NilError(t, w.Leave(waitCtx(t)))
	assert.Check(t, !w.Running())
	assert.Check(t, is.ErrorContains(w.Shutdown(waitCtx(t)), "worker-1 is not running"))
	assert.Check(t, is.ErrorContains(w.Leave(waitCtx(t)), "worker-1 is not running"))
	assert.NilError(t, m.Shutdown(waitCtx(t)))
	assert.Check(t, is.ErrorContains(m.Rejoin(waitCtx(t)), "cannot join as a new node"))

	assert.NilError(t, c.Stop(context.Background()))
	assert.Check(t, is.ErrorContains(w.Restart(waitCtx(t)), "the cluster stopped"))
	for _, dir := range []string{m.StateDir(), m.KeepDir(), w.StateDir(), w.KeepDir()} {
		_, err := os.Stat(dir)
		assert.Check(t, errors.Is(err, fs.ErrNotExist), "%s left behind", dir)
	}
}
