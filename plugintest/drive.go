package plugintest

import (
	"context"
	"errors"
	"fmt"

	"github.com/moby/swarmkit/v2/agent/exec"
	"github.com/moby/swarmkit/v2/api"
)

// Drive moves task towards target the way swarmkit's agent does: it calls
// exec.Do(ctx, task, ctrl) and assigns the status it returns to
// task.Status, over and over, until task.Status.State is target or beyond.
// It returns nil when the task is exactly at target, at once if it already
// is. exec.Do, not Drive, decides each step, so the usual rules hold:
//
//   - exec.Do moves a task only towards task.DesiredState. NewTask leaves
//     DesiredState at NEW, where nothing happens: set it to RUNNING to
//     prepare and start the task, to SHUTDOWN to shut it down.
//   - A task RUNNING with DesiredState RUNNING makes exec.Do call Wait,
//     which for a plugin.Controller returns only when the plugin leaves the
//     spec's state, the controller is closed or ctx ends. Driving such a
//     task to COMPLETE therefore blocks; driving it to RUNNING stops before
//     Wait. To shut a waiting task down, do as the agent does: cancel the
//     Wait's ctx, then set DesiredState to SHUTDOWN and Drive again.
//   - A step that fails fatally moves the task to REJECTED (before
//     STARTING) or FAILED (from STARTING on), with the error in
//     task.Status.Err; Drive then returns an error that names the state
//     reached and that message.
//
// When exec.Do returns exec.ErrTaskRetry (a temporary error or one of
// ctx's: the agent would call it again after a backoff), Drive stops and
// returns an error wrapping exec.ErrTaskRetry, and ctx's error if ctx is
// done; task.Status keeps its state, and the temporary error's text in Err.
// Call Drive again to retry. When exec.Do returns exec.ErrTaskNoop (the
// task can go no further towards its desired state), Drive returns an error
// wrapping exec.ErrTaskNoop. If ctx is done before a step, Drive returns
// ctx's error without calling exec.Do.
//
// Drive is not safe for concurrent use with anything else that reads or
// writes task.
func Drive(ctx context.Context, task *api.Task, ctrl exec.Controller, target api.TaskState) error {
	for task.Status.State < target {
		if err := ctx.Err(); err != nil {
			return fmt.Errorf("plugintest: task %s stopped at %s, short of %s: %w", task.ID, task.Status.State, target, err)
		}
		status, err := exec.Do(ctx, task, ctrl)
		if status != nil {
			task.Status = *status
		}
		switch {
		case err == nil:
		case errors.Is(err, exec.ErrTaskRetry):
			why := ""
			if task.Status.Err != "" {
				why = " after " + task.Status.Err
			}
			if ctxErr := ctx.Err(); ctxErr != nil {
				return fmt.Errorf("plugintest: task %s stays %s%s: %w: %w", task.ID, task.Status.State, why, err, ctxErr)
			}
			return fmt.Errorf("plugintest: task %s stays %s%s: %w", task.ID, task.Status.State, why, err)
		case errors.Is(err, exec.ErrTaskNoop):
			return fmt.Errorf("plugintest: task %s stays %s: exec.Do has nothing to do with desired state %s, short of %s: %w",
				task.ID, task.Status.State, task.DesiredState, target, err)
		default:
			return fmt.Errorf("plugintest: task %s at %s: %w", task.ID, task.Status.State, err)
		}
	}
	if task.Status.State != target {
		if task.Status.Err != "" {
			return fmt.Errorf("plugintest: task %s is %s, not %s: %s", task.ID, task.Status.State, target, task.Status.Err)
		}
		return fmt.Errorf("plugintest: task %s is %s, past %s", task.ID, task.Status.State, target)
	}
	return nil
}
