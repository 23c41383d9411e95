// Package deps pins the modules that other packages of this repository will
// import, so that go.mod stays stable while they are being written.
package deps

import (
	_ "github.com/containerd/errdefs"
	_ "github.com/containerd/log"
	_ "github.com/distribution/reference"
	_ "github.com/docker/docker-credential-helpers/client"
	_ "github.com/docker/docker/api/types"
	_ "github.com/docker/docker/api/types/backend"
	_ "github.com/docker/docker/api/types/registry"
	_ "github.com/docker/docker/api/types/swarm/runtime"
	_ "github.com/docker/docker/daemon/cluster/controllers/plugin"
	_ "github.com/docker/docker/plugin"
	_ "github.com/docker/docker/plugin/v2"
	_ "github.com/docker/docker/registry"
	_ "github.com/gogo/protobuf/proto"
	_ "github.com/gogo/protobuf/types"
	_ "github.com/google/go-containerregistry/pkg/registry"
	_ "github.com/moby/pubsub"
	_ "github.com/moby/swarmkit/v2/agent/exec"
	_ "github.com/moby/swarmkit/v2/api"
	_ "github.com/moby/swarmkit/v2/node"
	_ "github.com/moby/sys/mount"
	_ "go.uber.org/goleak"
	_ "gotest.tools/v3/assert"
)
