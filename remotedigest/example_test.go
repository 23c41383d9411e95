package remotedigest_test

import (
	"context"
	"fmt"

	"github.com/containerd/containerd/v2/core/remotes/docker"
	"github.com/distribution/reference"
	"github.com/docker/docker/api/types/registry"
	mobyplugin "github.com/docker/docker/plugin"
	"github.com/opencontainers/go-digest"

	plugin "github.com/seed-e85c93d5/plugin"
	"github.com/seed-e85c93d5/plugin/remotedigest"
)

// wrappedManager is a Backend of an executor's own that wraps moby's
// Manager (to count or trace its calls, say). Its ResolveManifest, one
// call of remotedigest.Resolve, keeps the controller's rule for the
// Manager itself: a new task of an unchanged spec disables nothing, and a
// registry that cannot be reached keeps the installed plugin in service.
type wrappedManager struct {
	*mobyplugin.Manager
	hosts docker.RegistryHosts // the daemon's registry hosts; nil for the defaults
}

func (m *wrappedManager) ResolveManifest(ctx context.Context, ref reference.Named, auth *registry.AuthConfig) (digest.Digest, error) {
	return remotedigest.Resolve(ctx, reference.TagNameOnly(ref), auth, m.hosts)
}

var _ plugin.ManifestResolver = (*wrappedManager)(nil)

func Example_wrappedManager() {
	var b plugin.Backend = &wrappedManager{}
	_, ok := b.(plugin.ManifestResolver)
	fmt.Println("the controller asks the registry before it disables:", ok)
	// Output: the controller asks the registry before it disables: true
}
