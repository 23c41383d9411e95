package plugin

import (
	"context"
	"io"
	"net/http"

	"github.com/distribution/reference"
	"github.com/docker/docker/api/types"
	"github.com/docker/docker/api/types/backend"
	"github.com/docker/docker/api/types/registry"
	"github.com/docker/docker/plugin"
	v2 "github.com/docker/docker/plugin/v2"
	"github.com/opencontainers/go-digest"
)

// Backend is the interface for interacting with the plugin manager.
// Controller actions are passed to the configured backend to do the real work.
//
// The method set is exactly that of the upstream package
// (github.com/docker/docker/daemon/cluster/controllers/plugin), so moby's
// *plugin.Manager satisfies it, and so does the in-memory fake in the
// plugintest package.
//
// A Backend is shared by every Controller of a node and is called from many
// goroutines at once; implementations must be safe for concurrent use.
//
// The Controller relies on the Manager's observable rules: names are
// normalised by Pull ("vol" becomes "vol:latest"); Get resolves a full ID, a
// name or a unique ID prefix and fails with an error classified NotFound
// (github.com/containerd/errdefs) for an unknown plugin; a non-forced Disable
// or Remove is refused while the plugin is in use; SubscribeEvents delivers
// only events whose type and plugin ID match one of the given events, and its
// cancel function may be called more than once.
type Backend interface {
	Disable(name string, config *backend.PluginDisableConfig) error
	Enable(name string, config *backend.PluginEnableConfig) error
	Remove(name string, config *backend.PluginRmConfig) error
	Pull(ctx context.Context, ref reference.Named, name string, metaHeaders http.Header, authConfig *registry.AuthConfig, privileges types.PluginPrivileges, outStream io.Writer, opts ...plugin.CreateOpt) error
	Upgrade(ctx context.Context, ref reference.Named, name string, metaHeaders http.Header, authConfig *registry.AuthConfig, privileges types.PluginPrivileges, outStream io.Writer) error
	Get(name string) (*v2.Plugin, error)
	SubscribeEvents(buffer int, events ...plugin.Event) (eventCh <-chan interface{}, cancel func())
}

// Setter is implemented by backends that can change the environment of an
// installed plugin, as moby's *plugin.Manager does. It is optional: when the
// Backend given to a Controller also implements Setter, Prepare applies the
// spec's Env to a plugin it upgrades, which Upgrade alone cannot do.
//
// args are "KEY=VALUE" strings, the form of runtime.PluginSpec.Env.
type Setter interface {
	Set(name string, args []string) error
}

// Privileger is implemented by backends that can tell which privileges the
// plugin at a remote requires without installing it, as moby's
// *plugin.Manager does (its Privileges fetches only the manifest and the
// config). It is optional. When the Backend given to a Controller also
// implements Privileger, Prepare compares the remote's privileges with the
// service's grant before it pulls, and before it disables an installed
// plugin to upgrade it, so that a refused upgrade leaves the running
// version in service. With or without it, Prepare checks the installed
// config after every Pull and Upgrade (see ErrIncorrectPrivileges).
//
// An empty answer with a nil error is taken as "unknown" when the service
// grants privileges, because the Manager of docker v28.3.0 and of moby v2
// answers so when its fetch fails; the check after the pull then decides.
type Privileger interface {
	Privileges(ctx context.Context, ref reference.Named, metaHeader http.Header, authConfig *registry.AuthConfig) (types.PluginPrivileges, error)
}

// ManifestResolver is implemented by backends that can tell which manifest
// a remote names now without pulling it (one manifest request to the
// registry). It is optional. Prepare asks it before it disables an
// installed plugin of the service for a tag remote: a tag whose manifest
// is the installed one (v2.Plugin's Manifest) is not upgraded, so a new
// task of an unchanged spec takes nothing out of service, and a registry
// that cannot be reached leaves the installed version in service.
//
// For moby's *plugin.Manager, which has no such method, the Controller asks
// the registry itself (see WithRegistryHosts); for any other Backend that
// does not implement it, Prepare upgrades a tag on every new task, as
// upstream does.
type ManifestResolver interface {
	ResolveManifest(ctx context.Context, ref reference.Named, authConfig *registry.AuthConfig) (digest.Digest, error)
}

// PluginProber is implemented by backends that can ask an enabled plugin
// whether it answers, as the fake in package plugintest does to model slow
// and hung plugins. It is optional. Without it, the Controller probes a
// plugin itself over the socket the Manager gives it (v2.Plugin's Addr),
// with the handshake and a cheap call of each interface type (see
// WithHealthCheck), and a plugin with no socket address (a Backend that
// runs no process) is not probed at all, as upstream.
type PluginProber interface {
	ProbePlugin(ctx context.Context, id string) error
}
