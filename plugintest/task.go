package plugintest

import (
	"fmt"

	cerrdefs "github.com/containerd/errdefs"
	"github.com/docker/docker/api/types/swarm/runtime"
	"github.com/moby/swarmkit/v2/api"
	"github.com/seed-e85c93d5/plugin/internal/pluginspec"
)

// NewTask returns a task of a plugin service that runs spec, encoded the
// way the Docker daemon encodes plugin services (daemon/cluster/convert):
// a generic runtime of kind "plugin" whose payload is the marshalled spec,
// typed swarm.RuntimeURLPlugin. Set the task's state fields as a test
// needs.
func NewTask(id, serviceID string, spec runtime.PluginSpec) *api.Task {
	return &api.Task{
		ID:        id,
		ServiceID: serviceID,
		Spec:      api.TaskSpec{Runtime: Runtime(spec)},
	}
}

// Runtime returns the runtime of a service or task that runs spec, as the
// Docker daemon builds it: a generic runtime of kind swarm.RuntimePlugin
// whose payload is spec in the wire format of moby's plugin.proto, typed
// swarm.RuntimeURLPlugin. Use it for api.TaskSpec.Runtime when creating a
// plugin service through swarmkit's control API.
//
// It encodes without the generated proto methods, which docker/docker
// removed from runtime.PluginSpec in v28.4.0, so it works with every v28
// release.
func Runtime(spec runtime.PluginSpec) *api.TaskSpec_Generic {
	return pluginspec.Runtime(&spec)
}

// DecodeSpec decodes the plugin spec that a task made by NewTask or
// Runtime (or by the Docker daemon) carries. It fails for a task without a
// generic runtime payload, and for a payload that is not a plugin spec.
func DecodeSpec(t *api.Task) (runtime.PluginSpec, error) {
	g := t.Spec.GetGeneric()
	if g == nil || g.Payload == nil {
		return runtime.PluginSpec{}, fmt.Errorf("plugintest: task %s has no generic runtime payload: %w", t.ID, cerrdefs.ErrInvalidArgument)
	}
	s, err := pluginspec.Decode(g.Payload.Value)
	if err != nil {
		return runtime.PluginSpec{}, fmt.Errorf("plugintest: task %s: %w: %w", t.ID, err, cerrdefs.ErrInvalidArgument)
	}
	return *s, nil
}
