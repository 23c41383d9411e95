package plugintest

import (
	"github.com/docker/docker/api/types/swarm"
	"github.com/docker/docker/api/types/swarm/runtime"
	"github.com/gogo/protobuf/proto"
	gogotypes "github.com/gogo/protobuf/types"
	"github.com/moby/swarmkit/v2/api"
)

// NewTask returns a task of a plugin service that runs spec, encoded the
// way the Docker daemon encodes plugin services (daemon/cluster/convert):
// a generic runtime of kind "plugin" whose payload is the marshalled spec,
// typed swarm.RuntimeURLPlugin. Set the task's state fields as a test
// needs. It panics only if spec cannot be marshalled, which a
// runtime.PluginSpec always can.
func NewTask(id, serviceID string, spec runtime.PluginSpec) *api.Task {
	payload, err := proto.Marshal(&spec)
	if err != nil {
		panic("plugintest: marshalling a plugin spec: " + err.Error())
	}
	return &api.Task{
		ID:        id,
		ServiceID: serviceID,
		Spec: api.TaskSpec{Runtime: &api.TaskSpec_Generic{Generic: &api.GenericRuntimeSpec{
			Kind:    string(swarm.RuntimePlugin),
			Payload: &gogotypes.Any{TypeUrl: string(swarm.RuntimeURLPlugin), Value: payload},
		}}},
	}
}
