//go:build linux && !race

package realmanager_test

import (
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/moby/swarmkit/v2/agent/exec"
	"github.com/moby/swarmkit/v2/api"
	"gotest.tools/v3/assert"
	is "gotest.tools/v3/assert/cmp"

	plugin "github.com/seed-e85c93d5/plugin"
	"github.com/seed-e85c93d5/plugin/executor"
	"github.com/seed-e85c93d5/plugin/internal/keptplugins"
)

// restartSafeNode is the scenario's node with a RestartSafe executor, its
// record in dir.
func (e *env) restartSafeNode(dir string) exec.Executor {
	e.t.Helper()
	x, err := plugin.RestartSafe(executor.New(e.b), e.b, dir)
	assert.NilError(e.t, err)
	return x
}

// completeSet makes the calls swarmkit v2's worker.Assign makes on the
// executor for a complete set of assignments (secrets, configs, the
// Controllers of the new tasks, volumes) and returns the Controllers.
func (e *env) completeSet(x exec.Executor, tasks ...*api.Task) []exec.Controller {
	e.t.Helper()
	x.(exec.SecretsProvider).Secrets().Reset()
	x.(exec.ConfigsProvider).Configs().Reset()
	var ctrls []exec.Controller
	for _, tk := range tasks {
		c, err := x.Controller(tk)
		assert.NilError(e.t, err)
		ctrls = append(ctrls, c)
	}
	x.(exec.VolumesProvider).Volumes()
	return ctrls
}

// shutDownAndRestart runs a task of svc-a to RUNNING on a RestartSafe node,
// stops the node as the daemon's shutdown does (ShuttingDown, then the
// agent's leave: its Wait cancelled, an empty complete set, Remove and
// Close), and restarts the Manager. It returns the task, as the managers
// still have it, and the plugin's ID.
func (e *env) shutDownAndRestart(dir string) (*api.Task, string) {
	e.t.Helper()
	x := e.restartSafeNode(dir)
	tk := newTask(e.t, "task-1", "svc-a", pluginSpec(v1))
	c := e.completeSet(x, tk)[0]
	e.runTo(tk, c, api.TaskStateRunning)
	w := e.wait(tk, c)
	id := e.get(pluginName).GetID()

	plugin.ShuttingDown(dir)
	w.cancel()
	assert.Check(e.t, is.ErrorIs(e.result(tk, w), exec.ErrTaskRetry))
	e.completeSet(x)
	e.retire(c)
	p := e.get(pluginName)
	assert.Equal(e.t, p.GetID(), id, "the shutdown removed the plugin")
	e.assertRunning(p)

	assert.NilError(e.t, e.m.Restart())
	p = e.get(pluginName)
	assert.Equal(e.t, p.GetID(), id)
	e.assertRunning(p) // restored and enabled by the Manager itself
	assert.Equal(e.t, p.GetRefCount(), 0)
	return tk, id
}

func recorded(t *testing.T, dir string) bool {
	t.Helper()
	_, err := os.Stat(filepath.Join(dir, keptplugins.FileName))
	return err == nil
}

// A daemon restart: the real Manager restores the kept plugin, enabled;
// the task the managers still assign resumes on a new Controller and takes
// the plugin over without a pull; a leave removes it afterwards.
func TestRestartSafeKeepsThePluginAcrossAManagerRestart(t *testing.T) {
	e := newEnv(t)
	dir := t.TempDir()
	tk, id := e.shutDownAndRestart(dir)
	assert.Assert(t, recorded(t, dir))

	pulls := reg.BlobGets()
	x := e.restartSafeNode(dir)
	resumed := newTask(t, tk.ID, tk.ServiceID, pluginSpec(v1))
	resumed.Status = tk.Status // RUNNING: the agent calls Wait, no Prepare
	rc := e.completeSet(x, resumed)[0]
	assert.Assert(t, !recorded(t, dir), "the resumed task claimed the plugin")
	w := e.wait(resumed, rc)
	p := e.get(pluginName)
	assert.Equal(t, p.GetID(), id)
	assert.Equal(t, p.GetRefCount(), 1, "the resumed task holds its reference")
	assert.Equal(t, reg.BlobGets(), pulls, "nothing was pulled")

	// docker swarm leave: no ShuttingDown.
	w.cancel()
	assert.Check(t, is.ErrorIs(e.result(resumed, w), exec.ErrTaskRetry))
	e.completeSet(x)
	e.retire(rc)
	e.assertGone(pluginName, id)
}

// The service was deleted while the daemon was down (or the node left, or
// joined again with wiped swarm state): nothing claims the kept plugin at
// the first complete set, and the real Manager removes it then.
func TestRestartSafeRemovesAKeptPluginNoTaskClaims(t *testing.T) {
	e := newEnv(t)
	dir := t.TempDir()
	_, id := e.shutDownAndRestart(dir)

	x := e.restartSafeNode(dir)
	e.completeSet(x)
	// The removal runs on the guard's own goroutine, so that swarmkit's
	// worker never waits for it; its last act is to drop the record.
	waitUnrecorded(t, dir)
	e.assertGone(pluginName, id)
}

// waitUnrecorded polls until dir's record of kept plugins is gone.
func waitUnrecorded(t *testing.T, dir string) {
	t.Helper()
	for deadline := time.Now().Add(20 * time.Second); recorded(t, dir); time.Sleep(10 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("the kept plugin is still recorded 20 s after the complete set")
		}
	}
}
