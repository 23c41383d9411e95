package plugintest

import (
	"context"
	"errors"
	"testing"

	"github.com/docker/docker/api/types/swarm/runtime"
	"github.com/moby/swarmkit/v2/agent/exec"
	"github.com/moby/swarmkit/v2/api"
	"gotest.tools/v3/assert"
	is "gotest.tools/v3/assert/cmp"
)

// stepController is an exec.Controller whose steps return the errors set
// in it and record their calls; Wait blocks until its context ends unless
// waitErr is set. Only the methods exec.Do calls are defined.
type stepController struct {
	exec.Controller
	prepareErr, startErr, shutdownErr error
	waitErr                           error         // returned by Wait at once when set
	waiting                           chan struct{} // closed when Wait blocks, if not nil
	calls                             []string
}

func (c *stepController) Prepare(context.Context) error {
	c.calls = append(c.calls, "Prepare")
	return c.prepareErr
}

func (c *stepController) Start(context.Context) error {
	c.calls = append(c.calls, "Start")
	return c.startErr
}

func (c *stepController) Wait(ctx context.Context) error {
	c.calls = append(c.calls, "Wait")
	if c.waitErr != nil {
		return c.waitErr
	}
	if c.waiting != nil {
		close(c.waiting)
	}
	<-ctx.Done()
	return ctx.Err()
}

func (c *stepController) Shutdown(context.Context) error {
	c.calls = append(c.calls, "Shutdown")
	return c.shutdownErr
}

func newDriveTask(desired api.TaskState) *api.Task {
	t := NewTask("task-1", "svc-1", runtime.PluginSpec{Remote: "vol"})
	t.DesiredState = desired
	return t
}

func TestDriveToRunningStopsBeforeWait(t *testing.T) {
	task := newDriveTask(api.TaskStateRunning)
	c := &stepController{}
	assert.NilError(t, Drive(context.Background(), task, c, api.TaskStateRunning))
	assert.Check(t, is.Equal(task.Status.State, api.TaskStateRunning))
	assert.Check(t, is.Equal(task.Status.Message, "started"))
	assert.Check(t, is.DeepEqual(c.calls, []string{"Prepare", "Start"}))

	assert.NilError(t, Drive(context.Background(), task, c, api.TaskStateRunning), "already there")
	assert.Check(t, is.DeepEqual(c.calls, []string{"Prepare", "Start"}))
}

// The pitfall Drive names: NewTask leaves DesiredState at NEW.
func TestDriveDesiredStateNew(t *testing.T) {
	task := newDriveTask(api.TaskStateNew)
	c := &stepController{}
	err := Drive(context.Background(), task, c, api.TaskStateRunning)
	assert.Check(t, errors.Is(err, exec.ErrTaskNoop), "%v", err)
	assert.Check(t, is.Error(err, "plugintest: task task-1 stays NEW: exec.Do has nothing to do with desired state NEW, short of RUNNING: exec: task noop"))
	assert.Check(t, is.Equal(task.Status.State, api.TaskStateNew))
	assert.Check(t, is.Len(c.calls, 0))
}

func TestDriveFatalStep(t *testing.T) {
	t.Run("Prepare: REJECTED", func(t *testing.T) {
		task := newDriveTask(api.TaskStateRunning)
		c := &stepController{prepareErr: errors.New("bad spec")}
		err := Drive(context.Background(), task, c, api.TaskStateRunning)
		assert.Check(t, is.Error(err, "plugintest: task task-1 is REJECTED, not RUNNING: bad spec"))
		assert.Check(t, is.Equal(task.Status.State, api.TaskStateRejected))
		assert.Check(t, is.Equal(task.Status.Err, "bad spec"))
		assert.Check(t, is.DeepEqual(c.calls, []string{"Prepare"}))
	})
	t.Run("Start: FAILED", func(t *testing.T) {
		task := newDriveTask(api.TaskStateRunning)
		c := &stepController{startErr: errors.New("no activation")}
		err := Drive(context.Background(), task, c, api.TaskStateRunning)
		assert.Check(t, is.Error(err, "plugintest: task task-1 is FAILED, not RUNNING: no activation"))
		assert.Check(t, is.Equal(task.Status.State, api.TaskStateFailed))
	})
	t.Run("Wait: FAILED", func(t *testing.T) {
		task := newDriveTask(api.TaskStateRunning)
		c := &stepController{waitErr: errors.New("plugin disabled")}
		err := Drive(context.Background(), task, c, api.TaskStateCompleted)
		assert.Check(t, is.Error(err, "plugintest: task task-1 is FAILED, not COMPLETE: plugin disabled"))
		assert.Check(t, is.DeepEqual(c.calls, []string{"Prepare", "Start", "Wait"}))
	})
}

// A temporary error stops Drive with the task where it was; Drive again
// retries the step.
func TestDriveRetry(t *testing.T) {
	task := newDriveTask(api.TaskStateRunning)
	c := &stepController{prepareErr: exec.MakeTemporary(errors.New("registry down"))}
	err := Drive(context.Background(), task, c, api.TaskStateRunning)
	assert.Check(t, errors.Is(err, exec.ErrTaskRetry), "%v", err)
	assert.Check(t, is.Error(err, "plugintest: task task-1 stays PREPARING after registry down: exec: task retry"))
	assert.Check(t, is.Equal(task.Status.State, api.TaskStatePreparing))

	c.prepareErr = nil
	assert.NilError(t, Drive(context.Background(), task, c, api.TaskStateRunning))
	assert.Check(t, is.DeepEqual(c.calls, []string{"Prepare", "Prepare", "Start"}))
}

// Cancelling the context of a blocked Wait is how the agent ends it before
// a shutdown: the task stays RUNNING, and shuts down once desired.
func TestDriveCancelledWait(t *testing.T) {
	task := newDriveTask(api.TaskStateRunning)
	c := &stepController{waiting: make(chan struct{})}
	assert.NilError(t, Drive(context.Background(), task, c, api.TaskStateRunning))

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	done := make(chan error, 1)
	go func() { done <- Drive(ctx, task, c, api.TaskStateCompleted) }()
	<-c.waiting
	cancel()
	err := <-done
	assert.Check(t, errors.Is(err, exec.ErrTaskRetry), "%v", err)
	assert.Check(t, errors.Is(err, context.Canceled), "%v", err)
	assert.Check(t, is.Error(err, "plugintest: task task-1 stays RUNNING: exec: task retry: context canceled"))
	assert.Check(t, is.Equal(task.Status.State, api.TaskStateRunning))

	task.DesiredState = api.TaskStateShutdown
	assert.NilError(t, Drive(context.Background(), task, c, api.TaskStateShutdown))
	assert.Check(t, is.Equal(task.Status.State, api.TaskStateShutdown))
	assert.Check(t, is.DeepEqual(c.calls, []string{"Prepare", "Start", "Wait", "Shutdown"}))
}

func TestDriveDoneContext(t *testing.T) {
	task := newDriveTask(api.TaskStateRunning)
	c := &stepController{}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	err := Drive(ctx, task, c, api.TaskStateRunning)
	assert.Check(t, errors.Is(err, context.Canceled), "%v", err)
	assert.Check(t, is.Error(err, "plugintest: task task-1 stopped at NEW, short of RUNNING: context canceled"))
	assert.Check(t, is.Equal(task.Status.State, api.TaskStateNew))
	assert.Check(t, is.Len(c.calls, 0))
}

func TestDrivePastTarget(t *testing.T) {
	task := newDriveTask(api.TaskStateShutdown)
	task.Status.State = api.TaskStateShutdown
	err := Drive(context.Background(), task, &stepController{}, api.TaskStateRunning)
	assert.Check(t, is.Error(err, "plugintest: task task-1 is SHUTDOWN, past RUNNING"))
}
