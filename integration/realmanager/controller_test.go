// Not under -race: see main_test.go.

//go:build linux && !race

package realmanager_test

import (
	"net/http"
	"os"
	"slices"
	"strings"
	"testing"

	cerrdefs "github.com/containerd/errdefs"
	"github.com/distribution/reference"
	"github.com/docker/docker/api/types/backend"
	"github.com/docker/docker/api/types/swarm/runtime"
	"github.com/moby/swarmkit/v2/agent/exec"
	"github.com/moby/swarmkit/v2/api"
	"gotest.tools/v3/assert"
	is "gotest.tools/v3/assert/cmp"

	plugin "github.com/seed-e85c93d5/plugin"
	rm "github.com/seed-e85c93d5/plugin/internal/realmanager"
)

// A task pulls the plugin from the registry in Prepare, enables it in
// Start and reaches RUNNING; its Wait ends when the plugin is disabled out
// of band; Remove deletes the plugin and its directory.
func TestPullEnableWaitDisabledRemove(t *testing.T) {
	e := newEnv(t)
	tk := newTask(t, "task-1", "svc-a", pluginSpec(v1))
	c := e.controller(tk)

	gets := reg.BlobGets()
	e.runTo(tk, c, api.TaskStateReady)
	assert.Check(t, reg.BlobGets() > gets, "Prepare downloaded no blob from the registry")
	p := e.get(pluginName)
	id := p.GetID()
	assert.Check(t, is.Equal(p.SwarmServiceID, "svc-a"))
	assert.Check(t, is.Equal(p.PluginObj.PluginReference, v1))
	assert.Check(t, is.Equal(p.GetRefCount(), 1), "the task's reference")
	assert.Check(t, !p.IsEnabled(), "Prepare must not enable")
	_, err := os.Stat(e.pluginDir(id))
	assert.Check(t, err, "plugin directory under the Manager's root")

	e.runTo(tk, c, api.TaskStateRunning)
	e.assertRunning(p)

	w := e.wait(tk, c)
	assert.NilError(t, e.m.Disable(pluginName, &backend.PluginDisableConfig{ForceDisable: true}))
	assert.NilError(t, e.result(tk, w))
	assert.Check(t, is.Equal(tk.Status.State, api.TaskStateFailed))
	assert.Check(t, is.Equal(tk.Status.Err, "plugin disabled"))
	assert.Check(t, !e.m.Running(id))

	e.retire(c)
	e.assertGone(pluginName, id)
}

// A Wait ends with "plugin removed" when the plugin is removed out of band
// (forced, as it is enabled); the task's Remove then has nothing to do.
func TestWaitEndsOnOutOfBandRemove(t *testing.T) {
	e := newEnv(t)
	tk := newTask(t, "task-1", "svc-a", pluginSpec(v1))
	c := e.controller(tk)
	e.runTo(tk, c, api.TaskStateRunning)
	id := e.get(pluginName).GetID()

	w := e.wait(tk, c)
	assert.NilError(t, e.m.Remove(pluginName, &backend.PluginRmConfig{ForceRemove: true}))
	assert.NilError(t, e.result(tk, w))
	assert.Check(t, is.Equal(tk.Status.State, api.TaskStateFailed))
	assert.Check(t, is.Equal(tk.Status.Err, "plugin removed"))
	assert.Check(t, !e.m.Running(id))

	e.retire(c)
	e.assertGone(pluginName, id)
}

// A service update from v1 to v2 (stop-first: the old task is shut down,
// then the new one runs) upgrades the plugin in place: same ID, new remote
// and content, enabled again; the old task's Remove keeps it, the new
// task's removes it.
func TestUpgradeKeepsPluginID(t *testing.T) {
	e := newEnv(t)
	old := newTask(t, "task-v1", "svc-a", pluginSpec(v1))
	oldC := e.controller(old)
	e.runTo(old, oldC, api.TaskStateRunning)
	p := e.get(pluginName)
	id := p.GetID()

	// The update cancels the old task's Wait and shuts it down.
	w := e.wait(old, oldC)
	w.cancel()
	assert.Check(t, is.ErrorIs(e.result(old, w), exec.ErrTaskRetry))
	assert.Check(t, is.Equal(old.Status.State, api.TaskStateRunning))
	e.shutdown(old, oldC)
	assert.Check(t, p.IsEnabled(), "Shutdown has no effect on the plugin")

	upd := newTask(t, "task-v2", "svc-a", pluginSpec(v2ref))
	updC := e.controller(upd)
	gets := reg.BlobGets()
	e.runTo(upd, updC, api.TaskStateRunning)
	assert.Check(t, reg.BlobGets() > gets, "the upgrade downloaded no blob")

	up := e.get(pluginName)
	assert.Check(t, is.Equal(up.GetID(), id), "the upgrade changed the plugin ID")
	assert.Check(t, is.Equal(up.PluginObj.PluginReference, v2ref))
	assert.Check(t, is.Equal(up.PluginObj.Config.Description, "realmanager test volume plugin v2"))
	assert.Check(t, is.Equal(up.SwarmServiceID, "svc-a"))
	assert.Check(t, is.Equal(up.GetRefCount(), 2), "one reference per task")
	e.assertRunning(up)

	e.retire(oldC)
	assert.Check(t, is.Equal(e.get(pluginName).GetID(), id), "the old task's Remove removed the plugin")
	assert.Check(t, is.Equal(up.GetRefCount(), 1))
	e.assertRunning(up)

	e.retire(updC)
	e.assertGone(pluginName, id)
}

// Another service asking for a plugin of the same name is refused: the task
// is REJECTED with "plugin already exists", and the first service's plugin
// is left exactly as it was, also by the refused task's Remove.
func TestSecondServiceRefused(t *testing.T) {
	e := newEnv(t)
	first := newTask(t, "task-a", "svc-a", pluginSpec(v1))
	firstC := e.controller(first)
	e.runTo(first, firstC, api.TaskStateRunning)
	p := e.get(pluginName)
	id := p.GetID()

	other := newTask(t, "task-b", "svc-b", pluginSpec(v2ref))
	otherC := e.controller(other)
	e.runTo(other, otherC, api.TaskStatePreparing)
	assert.NilError(t, e.do(other, otherC))
	assert.Check(t, is.Equal(other.Status.State, api.TaskStateRejected))
	assert.Check(t, is.Contains(other.Status.Err, "plugin already exists"))

	untouched := func() {
		t.Helper()
		q := e.get(pluginName)
		assert.Check(t, is.Equal(q.GetID(), id))
		assert.Check(t, is.Equal(q.SwarmServiceID, "svc-a"))
		assert.Check(t, is.Equal(q.PluginObj.PluginReference, v1))
		assert.Check(t, is.Equal(q.GetRefCount(), 1))
		e.assertRunning(q)
	}
	untouched()
	e.retire(otherC)
	untouched()

	e.retire(firstC)
	e.assertGone(pluginName, id)
}

// A service whose spec says Disabled: the plugin is installed and left
// disabled. When someone enables it between Prepare and Start, Start
// disables it again although the task holds a reference, which makes the
// real Manager refuse a plain Disable; and a Wait ends with "plugin
// enabled" when it is enabled out of band.
func TestDisabledSpec(t *testing.T) {
	e := newEnv(t)
	spec := pluginSpec(v1)
	spec.Disabled = true
	tk := newTask(t, "task-1", "svc-a", spec)
	c := e.controller(tk)

	e.runTo(tk, c, api.TaskStateReady)
	p := e.get(pluginName)
	id := p.GetID()
	assert.Check(t, !p.IsEnabled())

	// Someone enables it.
	assert.NilError(t, e.m.Enable(pluginName, &backend.PluginEnableConfig{Timeout: 30}))
	e.assertRunning(p)
	err := e.m.Disable(pluginName, &backend.PluginDisableConfig{})
	assert.Check(t, cerrdefs.IsConflict(err), "a plain Disable of a plugin the task holds: %v", err)
	assert.Check(t, is.ErrorContains(err, "in use"))
	assert.Check(t, p.IsEnabled())

	e.runTo(tk, c, api.TaskStateRunning)
	assert.Check(t, !p.IsEnabled(), "Start left the plugin enabled")
	assert.Check(t, !e.m.Running(id))
	assert.Check(t, is.Equal(p.GetRefCount(), 1))

	w := e.wait(tk, c)
	assert.NilError(t, e.m.Enable(pluginName, &backend.PluginEnableConfig{Timeout: 30}))
	assert.NilError(t, e.result(tk, w))
	assert.Check(t, is.Equal(tk.Status.State, api.TaskStateFailed))
	assert.Check(t, is.Equal(tk.Status.Err, "plugin enabled"))

	// swarmkit replaces the failed task; the new one's Prepare disables
	// the plugin again while both tasks hold references.
	next := newTask(t, "task-2", "svc-a", spec)
	nextC := e.controller(next)
	e.runTo(next, nextC, api.TaskStateRunning)
	assert.Check(t, !p.IsEnabled())
	assert.Check(t, !e.m.Running(id))
	assert.Check(t, is.Equal(e.get(pluginName).GetID(), id))

	e.retire(c)
	e.retire(nextC)
	e.assertGone(pluginName, id)
}

// A plugin that requires privileges installs when the spec grants them
// and is refused, with the task REJECTED, when it grants none.
func TestPrivileges(t *testing.T) {
	fixture(t)
	var granted []*runtime.PluginPrivilege
	for _, p := range rm.PrivilegedPrivileges() {
		granted = append(granted, &runtime.PluginPrivilege{Name: p.Name, Description: p.Description, Value: p.Value})
	}
	assert.Assert(t, len(granted) > 0)

	t.Run("granted", func(t *testing.T) {
		e := newEnv(t)
		spec := pluginSpec(priv)
		spec.Privileges = granted
		tk := newTask(t, "task-1", "svc-a", spec)
		c := e.controller(tk)
		e.runTo(tk, c, api.TaskStateRunning)
		p := e.get(pluginName)
		e.assertRunning(p)
		e.retire(c)
		e.assertGone(pluginName, p.GetID())
	})

	t.Run("refused", func(t *testing.T) {
		e := newEnv(t)
		tk := newTask(t, "task-1", "svc-a", pluginSpec(priv))
		c := e.controller(tk)
		e.runTo(tk, c, api.TaskStatePreparing)
		assert.NilError(t, e.do(tk, c))
		assert.Check(t, is.Equal(tk.Status.State, api.TaskStateRejected))
		assert.Check(t, is.Contains(tk.Status.Err, "incorrect privileges"))
		_, err := e.m.Get(pluginName)
		assert.Check(t, cerrdefs.IsNotFound(err), "%v", err)
		e.retire(c)
	})
}

// A remote the registry does not have rejects the task with an error that
// names the remote, and installs nothing.
func TestMissingRemote(t *testing.T) {
	e := newEnv(t)
	tk := newTask(t, "task-1", "svc-a", pluginSpec(missing))
	c := e.controller(tk)
	e.runTo(tk, c, api.TaskStatePreparing)

	err := c.Prepare(e.ctx)
	assert.Check(t, err != nil)
	assert.Check(t, !exec.IsTemporary(err), "a missing remote is not worth retrying: %v", err)

	assert.NilError(t, e.do(tk, c))
	assert.Check(t, is.Equal(tk.Status.State, api.TaskStateRejected))
	assert.Check(t, is.Contains(tk.Status.Err, missing))
	t.Logf("error: %s", tk.Status.Err)
	_, err = e.m.Get(pluginName)
	assert.Check(t, cerrdefs.IsNotFound(err), "%v", err)
	e.retire(c)
}

// With the registry down, Prepare fails with a temporary error: exec.Do
// asks for a retry and the task stays PREPARING. Once the registry is back,
// the retried step succeeds.
func TestRegistryDownDuringPrepare(t *testing.T) {
	e := newEnv(t)
	tk := newTask(t, "task-1", "svc-a", pluginSpec(v1))
	c := e.controller(tk)
	e.runTo(tk, c, api.TaskStatePreparing)

	assert.NilError(t, reg.Stop())
	stopped := true
	t.Cleanup(func() { // the registry is shared by the whole test binary
		if stopped {
			assert.Check(t, reg.Restart())
		}
	})

	err := c.Prepare(e.ctx)
	assert.Check(t, exec.IsTemporary(err), "%v", err)
	assert.Check(t, is.ErrorContains(err, "connection refused"))

	err = e.do(tk, c)
	assert.Check(t, is.ErrorIs(err, exec.ErrTaskRetry))
	assert.Check(t, is.Equal(tk.Status.State, api.TaskStatePreparing))
	assert.Check(t, is.Contains(tk.Status.Err, "connection refused"))
	_, err = e.m.Get(pluginName)
	assert.Check(t, cerrdefs.IsNotFound(err), "%v", err)

	assert.NilError(t, reg.Restart())
	stopped = false
	gets := reg.BlobGets()
	assert.NilError(t, e.do(tk, c))
	assert.Check(t, is.Equal(tk.Status.State, api.TaskStateReady))
	assert.Check(t, reg.BlobGets() > gets)
	e.runTo(tk, c, api.TaskStateRunning)
	p := e.get(pluginName)
	assert.Check(t, is.Equal(p.GetRefCount(), 1), "retries must not add references")
	e.assertRunning(p)

	e.retire(c)
	e.assertGone(pluginName, p.GetID())
}

// Two tasks of one service share the plugin: the first Remove keeps it,
// the last one removes it.
func TestSharedPluginRemovedByLastTask(t *testing.T) {
	e := newEnv(t)
	t1 := newTask(t, "task-1", "svc-a", pluginSpec(v1))
	c1 := e.controller(t1)
	t2 := newTask(t, "task-2", "svc-a", pluginSpec(v1))
	c2 := e.controller(t2)
	e.runTo(t1, c1, api.TaskStateRunning)
	gets := reg.BlobGets()
	e.runTo(t2, c2, api.TaskStateRunning)
	assert.Check(t, is.Equal(reg.BlobGets(), gets), "the second task must not pull again")

	p := e.get(pluginName)
	id := p.GetID()
	assert.Check(t, is.Equal(p.GetRefCount(), 2))
	e.assertRunning(p)

	e.retire(c1)
	q := e.get(pluginName)
	assert.Check(t, is.Equal(q.GetID(), id))
	assert.Check(t, is.Equal(q.GetRefCount(), 1))
	e.assertRunning(q)
	_, err := os.Stat(e.pluginDir(id))
	assert.Check(t, err)

	e.retire(c2)
	e.assertGone(pluginName, id)
}

// After an agent restart, swarmkit resumes a RUNNING task on a new
// Controller: exec.Do calls Wait with no Prepare before it. The new
// Controller binds to the plugin by name, the task still holds exactly one
// reference, and the Wait ends on an out-of-band disable.
func TestResumeRunningTaskAfterAgentRestart(t *testing.T) {
	e := newEnv(t)
	tk := newTask(t, "task-1", "svc-a", pluginSpec(v1))
	c := e.controller(tk)
	e.runTo(tk, c, api.TaskStateRunning)
	p := e.get(pluginName)
	id := p.GetID()

	// The agent stops: its contexts end, the old Controller is dropped
	// (neither removed nor closed); the task's saved state is RUNNING.
	w := e.wait(tk, c)
	w.cancel()
	assert.Check(t, is.ErrorIs(e.result(tk, w), exec.ErrTaskRetry))
	assert.Check(t, is.Equal(tk.Status.State, api.TaskStateRunning))

	resumed := newTask(t, tk.ID, tk.ServiceID, pluginSpec(v1))
	resumed.Status = tk.Status
	rc, err := plugin.NewController(e.b, resumed)
	assert.NilError(t, err)
	w = e.wait(resumed, rc)
	assert.Check(t, is.Equal(p.GetRefCount(), 1), "the resumed task took a second reference")
	assert.NilError(t, e.m.Disable(pluginName, &backend.PluginDisableConfig{ForceDisable: true}))
	assert.NilError(t, e.result(resumed, w))
	assert.Check(t, is.Equal(resumed.Status.State, api.TaskStateFailed))
	assert.Check(t, is.Equal(resumed.Status.Err, "plugin disabled"))
	assert.Check(t, is.Equal(p.GetRefCount(), 1))

	// The task's single reference goes with its Remove.
	e.retire(rc)
	e.assertGone(pluginName, id)
	assert.Check(t, c.Close(), "closing the dropped Controller")
}

// Pull applies the spec's Env; a service update that changes a settable
// variable reaches the installed plugin (through the Manager's Set).
func TestEnv(t *testing.T) {
	e := newEnv(t)
	spec := pluginSpec(v1)
	spec.Env = []string{"DEBUG=1"}
	old := newTask(t, "task-1", "svc-a", spec)
	oldC := e.controller(old)
	e.runTo(old, oldC, api.TaskStateRunning)
	p := e.get(pluginName)
	id := p.GetID()
	assert.Check(t, is.DeepEqual(slices.Sorted(slices.Values(p.PluginObj.Settings.Env)), []string{"DEBUG=1", "MODE=ro"}))
	e.shutdown(old, oldC)

	spec = pluginSpec(v2ref)
	spec.Env = []string{"DEBUG=2"}
	upd := newTask(t, "task-2", "svc-a", spec)
	updC := e.controller(upd)
	e.runTo(upd, updC, api.TaskStateRunning)
	q := e.get(pluginName)
	assert.Check(t, is.Equal(q.GetID(), id))
	assert.Check(t, is.Equal(q.PluginObj.PluginReference, v2ref))
	assert.Check(t, is.DeepEqual(slices.Sorted(slices.Values(q.PluginObj.Settings.Env)), []string{"DEBUG=2", "MODE=ro"}))
	e.assertRunning(q)

	// Only the Env changes, same remote.
	e.shutdown(upd, updC)
	spec.Env = []string{"DEBUG=3"}
	again := newTask(t, "task-3", "svc-a", spec)
	againC := e.controller(again)
	e.runTo(again, againC, api.TaskStateRunning)
	q = e.get(pluginName)
	assert.Check(t, is.Equal(q.GetID(), id))
	assert.Check(t, is.DeepEqual(slices.Sorted(slices.Values(q.PluginObj.Settings.Env)), []string{"DEBUG=3", "MODE=ro"}))
	e.assertRunning(q)

	for _, c := range []exec.Controller{oldC, updC, againC} {
		e.retire(c)
	}
	e.assertGone(pluginName, id)
}

// manifestDigest asks the registry for the digest of the manifest that the
// tagged reference ref names, as a client pinning a remote would.
func manifestDigest(t *testing.T, ref string) string {
	t.Helper()
	named, err := reference.ParseNormalizedNamed(ref)
	assert.NilError(t, err)
	tagged, ok := named.(reference.Tagged)
	assert.Assert(t, ok, "%s has no tag", ref)
	url := "http://" + reference.Domain(named) + "/v2/" + reference.Path(named) + "/manifests/" + tagged.Tag()
	req, err := http.NewRequest(http.MethodHead, url, nil)
	assert.NilError(t, err)
	req.Header.Set("Accept", "application/vnd.docker.distribution.manifest.v2+json, application/vnd.oci.image.manifest.v1+json")
	req.Close = true // no keep-alive connection left for goleak
	resp, err := http.DefaultClient.Do(req)
	assert.NilError(t, err)
	assert.NilError(t, resp.Body.Close())
	assert.Equal(t, resp.StatusCode, http.StatusOK, url)
	d := resp.Header.Get("Docker-Content-Digest")
	assert.Assert(t, strings.HasPrefix(d, "sha256:"), "digest %q", d)
	return d
}

// A service whose remote is pinned by digest and that gives no Name: the
// plugin is named by the remote without its digest, a name the Manager can
// look up (it cannot resolve a name with a digest), so the task installs
// and runs it, a second task of the service finds it without pulling, and
// the last task's Remove leaves nothing behind.
func TestPinnedRemoteWithoutName(t *testing.T) {
	e := newEnv(t)
	pinned := v1 + "@" + manifestDigest(t, v1)
	spec := runtime.PluginSpec{Remote: pinned}

	t1 := newTask(t, "task-1", "svc-a", spec)
	c1 := e.controller(t1)
	e.runTo(t1, c1, api.TaskStateRunning)
	p := e.get(v1)
	id := p.GetID()
	assert.Check(t, is.Equal(p.Name(), v1))
	assert.Check(t, is.Equal(p.PluginObj.PluginReference, pinned))
	assert.Check(t, is.Equal(p.SwarmServiceID, "svc-a"))
	assert.Check(t, is.Equal(p.GetRefCount(), 1))
	e.assertRunning(p)

	t2 := newTask(t, "task-2", "svc-a", spec)
	c2 := e.controller(t2)
	gets := reg.BlobGets()
	e.runTo(t2, c2, api.TaskStateRunning)
	assert.Check(t, is.Equal(reg.BlobGets(), gets), "the second task pulled again")
	assert.Check(t, is.Equal(e.get(v1).GetID(), id))
	assert.Check(t, is.Equal(p.GetRefCount(), 2))

	// Its Wait watches the plugin until the update that replaces it.
	w := e.wait(t2, c2)
	w.cancel()
	assert.Check(t, is.ErrorIs(e.result(t2, w), exec.ErrTaskRetry))
	e.shutdown(t2, c2)

	e.retire(c1)
	assert.Check(t, is.Equal(e.get(v1).GetID(), id))
	e.assertRunning(p)
	e.retire(c2)
	e.assertGone(v1, id)
}
