// Package remotedigest asks a registry which manifest a plugin remote
// names now, without fetching anything else: one resolve (a HEAD or GET
// of the manifest), as moby's plugin Manager does first in every pull and
// upgrade.
//
// The controller (package plugin) calls Resolve before it disables an
// installed plugin, to tell a tag whose content changed from one that did
// not, when its Backend is moby's *plugin.Manager itself. A Backend of
// your own that wraps the Manager (to count calls, say) is not the
// Manager's type, so the controller cannot know it may ask the registry:
// give it a ResolveManifest method that calls Resolve, and it satisfies
// plugin.ManifestResolver (see the example). Without one, the controller
// keeps upstream's rule and upgrades a tag, with its disable, on every new
// task. Resolve is safe for concurrent use.
package remotedigest

import (
	"context"
	"fmt"
	"net/http"
	"time"

	"github.com/containerd/containerd/v2/core/remotes/docker"
	"github.com/distribution/reference"
	"github.com/docker/docker/api/types/registry"
	"github.com/docker/docker/plugin"
	"github.com/opencontainers/go-digest"
)

// Resolve returns the digest of the manifest ref names at its registry.
// auth is the pull's credentials (nil or empty for anonymous access);
// hosts are the registry hosts to try, nil for the defaults of moby's
// Manager without daemon settings: HTTPS, and plain HTTP for localhost and
// the loopback addresses, which moby counts as insecure registries. Every
// host answers the registry's challenge with auth, as moby's Manager does
// with the pull's credentials, whatever authorizer hosts configured. It
// asks with the plugin repository scope moby's Manager asks with.
func Resolve(ctx context.Context, ref reference.Named, auth *registry.AuthConfig, hosts docker.RegistryHosts) (digest.Digest, error) {
	if hosts == nil {
		hosts = docker.ConfigureDefaultRegistries(
			docker.WithPlainHTTP(docker.MatchLocalhost),
			docker.WithClient(&http.Client{Timeout: 30 * time.Second, Transport: http.DefaultTransport}),
		)
	}
	hosts = withCreds(hosts, auth)
	ctx = docker.WithScope(ctx, "repository(plugin):"+reference.Path(reference.TrimNamed(ref))+":pull")
	r := docker.NewResolver(docker.ResolverOptions{Hosts: hosts})
	_, desc, err := r.Resolve(ctx, ref.String())
	if err != nil {
		return "", fmt.Errorf("error resolving plugin reference %s: %w", reference.FamiliarString(ref), err)
	}
	return desc.Digest, nil
}

// withCreds returns hosts with each host's authorizer answering from auth,
// over the host's own client.
func withCreds(hosts docker.RegistryHosts, auth *registry.AuthConfig) docker.RegistryHosts {
	return func(host string) ([]docker.RegistryHost, error) {
		hs, err := hosts(host)
		if err != nil {
			return nil, err
		}
		out := make([]docker.RegistryHost, len(hs))
		for i, h := range hs {
			opts := []docker.AuthorizerOpt{docker.WithAuthCreds(creds(auth))}
			if h.Client != nil {
				opts = append(opts, docker.WithAuthClient(h.Client))
			}
			h.Authorizer = docker.NewDockerAuthorizer(opts...)
			out[i] = h
		}
		return out, nil
	}
}

// creds answers the registry's authorizer from auth, as moby's Manager
// does: an identity token first, then user name and password.
func creds(auth *registry.AuthConfig) func(string) (string, string, error) {
	return func(string) (string, string, error) {
		if auth == nil {
			return "", "", nil
		}
		if auth.IdentityToken != "" {
			return "", auth.IdentityToken, nil
		}
		return auth.Username, auth.Password, nil
	}
}

// For returns how the controller learns which manifest a tag names now
// for Backend b: b's own ResolveManifest when it has one (the controller's
// plugin.ManifestResolver), Resolve with hosts when b is moby's
// *plugin.Manager itself, and nil for any other Backend, which keeps
// upstream's rule (a tag is upgraded on every new task).
func For(b any, hosts docker.RegistryHosts) func(context.Context, reference.Named, *registry.AuthConfig) (digest.Digest, error) {
	switch b := b.(type) {
	case interface {
		ResolveManifest(ctx context.Context, ref reference.Named, authConfig *registry.AuthConfig) (digest.Digest, error)
	}:
		return b.ResolveManifest
	case *plugin.Manager:
		return func(ctx context.Context, ref reference.Named, auth *registry.AuthConfig) (digest.Digest, error) {
			return Resolve(ctx, reference.TagNameOnly(ref), auth, hosts)
		}
	}
	return nil
}
