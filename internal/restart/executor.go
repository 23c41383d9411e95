package restart

import (
	"context"

	"github.com/moby/swarmkit/v2/agent/exec"
	"github.com/moby/swarmkit/v2/api"
)

// Wrap returns the executor that hands every call to e and tells g what
// swarmkit's worker does: each Controller e returns is passed to adopt,
// which returns the Task of a plugin Controller (having given it g) or
// false for any other; and the calls that mark a complete set of
// assignments (Secrets().Reset(), Configs().Reset(), then Volumes()) let g
// decide the kept plugins. The executor always implements
// exec.SecretsProvider, exec.ConfigsProvider and exec.VolumesProvider,
// with e's managers when e has them and inert ones otherwise.
func (g *Guard) Wrap(e exec.Executor, adopt func(exec.Controller) (Task, bool)) exec.Executor {
	return &restartSafeExecutor{Executor: e, guard: g, adopt: adopt}
}

// restartSafeExecutor is the executor Wrap returns.
type restartSafeExecutor struct {
	exec.Executor
	guard *Guard
	adopt func(exec.Controller) (Task, bool)
}

func (x *restartSafeExecutor) Controller(t *api.Task) (exec.Controller, error) {
	c, err := x.Executor.Controller(t)
	if err == nil && c != nil {
		if task, ok := x.adopt(c); ok {
			x.guard.watch(task, t.DesiredState)
		}
	}
	return c, err
}

func (x *restartSafeExecutor) Secrets() exec.SecretsManager {
	x.guard.setBegins()
	var m exec.SecretsManager = inertSecrets{}
	if p, ok := x.Executor.(exec.SecretsProvider); ok {
		m = p.Secrets()
	}
	return resetSecrets{m, x.guard}
}

func (x *restartSafeExecutor) Configs() exec.ConfigsManager {
	var m exec.ConfigsManager = inertConfigs{}
	if p, ok := x.Executor.(exec.ConfigsProvider); ok {
		m = p.Configs()
	}
	return resetConfigs{m, x.guard}
}

func (x *restartSafeExecutor) Volumes() exec.VolumesManager {
	x.guard.tasksApplied()
	if p, ok := x.Executor.(exec.VolumesProvider); ok {
		return p.Volumes()
	}
	return inertVolumes{}
}

// resetSecrets and resetConfigs tell the guard when swarmkit resets them,
// which it does at the start of a complete set of assignments.
type resetSecrets struct {
	exec.SecretsManager
	guard *Guard
}

func (r resetSecrets) Reset() {
	r.guard.completeSetBegins()
	r.SecretsManager.Reset()
}

type resetConfigs struct {
	exec.ConfigsManager
	guard *Guard
}

func (r resetConfigs) Reset() {
	r.guard.completeSetBegins()
	r.ConfigsManager.Reset()
}

// inertSecrets, inertConfigs and inertVolumes stand in for the managers of
// an executor that has none: they hold nothing.
type inertSecrets struct{}

func (inertSecrets) Get(string) (*api.Secret, error) { return nil, nil }
func (inertSecrets) Add(...api.Secret)               {}
func (inertSecrets) Remove([]string)                 {}
func (inertSecrets) Reset()                          {}

type inertConfigs struct{}

func (inertConfigs) Get(string) (*api.Config, error) { return nil, nil }
func (inertConfigs) Add(...api.Config)               {}
func (inertConfigs) Remove([]string)                 {}
func (inertConfigs) Reset()                          {}

type inertVolumes struct{}

func (inertVolumes) Get(string) (string, error)                  { return "", nil }
func (inertVolumes) Add(...api.VolumeAssignment)                 {}
func (inertVolumes) Remove([]api.VolumeAssignment, func(string)) {}
func (inertVolumes) Plugins() exec.VolumePluginManager           { return inertVolumePlugins{} }

type inertVolumePlugins struct{}

func (inertVolumePlugins) NodeInfo(context.Context) ([]*api.NodeCSIInfo, error) { return nil, nil }
