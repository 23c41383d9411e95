package plugintest

import (
	"errors"
	"fmt"
	"strings"

	cerrdefs "github.com/containerd/errdefs"
	"github.com/distribution/reference"
	"github.com/docker/docker/api/types"
	"github.com/opencontainers/go-digest"
	"github.com/seed-e85c93d5/plugin/internal/privileges"
)

// Remote describes a plugin as a registry would serve it: what Pull and
// Upgrade install for a reference registered with AddRemote.
type Remote struct {
	// Privileges are the privileges the plugin requires. Pull and Upgrade
	// must be granted exactly these, compared the way moby compares them
	// (see the package documentation), or they fail with "incorrect
	// privileges". The fake also reflects them in the plugin's config
	// (Network.Type, IpcHost, PidHost, Mounts, Linux.Devices,
	// Linux.AllowAllDevices, Linux.Capabilities), the fields moby computes
	// privileges from.
	Privileges types.PluginPrivileges

	// Env is the default environment of the plugin config, as "KEY=VALUE"
	// strings. Each entry becomes a config Env whose value is settable
	// (Settable ["value"]), and Pull's plugin.WithEnv option merges over it
	// as in moby.
	Env []string

	// FixedEnv declares environment variables the plugin's config does not
	// let anyone change, as "KEY=VALUE" strings: each entry becomes a config
	// Env with that default value and no Settable field, as in a config.json
	// entry without "settable". Like Env, it initialises the plugin's
	// settings at Pull, and plugin.WithEnv overrides it there (moby's
	// WithEnv does not check Settable); afterwards Set refuses it with
	// "KEY" is not settable, as moby's does. Its entries follow Env's in the
	// config.
	FixedEnv []string

	// Digest is the manifest digest of the remote. It is stored as the
	// installed plugin's Manifest, and a canonical reference
	// ("name@sha256:...") of the same repository with this digest resolves
	// to this remote. The zero value means a digest derived
	// deterministically from the normalised reference.
	Digest digest.Digest
}

// remote is a registered entry of the fake registry.
type remote struct {
	Remote
	missing bool
}

// normalizeRemote returns the key a remote reference is registered under:
// the fully qualified reference, tagged ":latest" when it has neither tag
// nor digest, e.g. "docker.io/library/vol:latest" for "vol".
func normalizeRemote(ref reference.Named) string {
	return reference.TagNameOnly(ref).String()
}

func mustParseRemote(ref string) reference.Named {
	named, err := reference.ParseNormalizedNamed(ref)
	if err != nil {
		panic(fmt.Sprintf("plugintest: invalid remote reference %q: %v", ref, err))
	}
	return named
}

// AddRemote registers a remote under ref, replacing any earlier
// registration of the same reference (MissingRemote included). ref is
// normalised like moby's references: "vol" and "docker.io/library/vol:latest"
// are the same remote. It panics if ref is not a valid reference.
//
// A remote that was never registered can still be pulled: it installs a
// plugin with an empty config that needs no privileges.
//
// AddRemote is meant for test setup but is safe for concurrent use.
func (b *Backend) AddRemote(ref string, r Remote) {
	named := mustParseRemote(ref)
	r.Privileges = copyPrivileges(r.Privileges)
	r.Env = append([]string(nil), r.Env...)
	r.FixedEnv = append([]string(nil), r.FixedEnv...)
	if r.Digest == "" {
		if c, ok := named.(reference.Canonical); ok {
			r.Digest = c.Digest()
		} else {
			r.Digest = digest.FromString(normalizeRemote(named))
		}
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	b.remotes[normalizeRemote(named)] = remote{Remote: r}
}

// MissingRemote makes the registry answer "not found" for ref: Pull and
// Upgrade of it fail with an error classified NotFound
// (cerrdefs.IsNotFound) and change nothing. ref is normalised as in
// AddRemote, and a later AddRemote of the same reference replaces it. It
// panics if ref is not a valid reference. Safe for concurrent use.
func (b *Backend) MissingRemote(ref string) {
	named := mustParseRemote(ref)
	b.mu.Lock()
	defer b.mu.Unlock()
	b.remotes[normalizeRemote(named)] = remote{missing: true}
}

// resolve plays the registry for Pull and Upgrade. Call with b.mu held.
func (b *Backend) resolve(ref reference.Named) (Remote, error) {
	key := normalizeRemote(ref)
	r, ok := b.remotes[key]
	if !ok {
		if c, isCanonical := ref.(reference.Canonical); isCanonical {
			// A digest reference resolves to the registered remote of the
			// same repository with that digest.
			for k, candidate := range b.remotes {
				if !candidate.missing && candidate.Digest == c.Digest() && mustParseRemote(k).Name() == ref.Name() {
					return candidate.Remote, nil
				}
			}
			return Remote{Digest: c.Digest()}, nil
		}
		return Remote{Digest: digest.FromString(key)}, nil
	}
	if r.missing {
		// The words of moby's fetch wrapping containerd's resolver answer
		// to a registry 404.
		return Remote{}, fmt.Errorf("error resolving plugin reference: %s: %w", ref, cerrdefs.ErrNotFound)
	}
	return r.Remote, nil
}

// config builds the plugin config the remote describes: its default
// environment (Env settable, FixedEnv not) and the fields moby's
// computePrivileges derives each privilege from.
func (r Remote) config() types.PluginConfig {
	var c types.PluginConfig
	for _, kv := range r.Env {
		k, v, _ := strings.Cut(kv, "=")
		c.Env = append(c.Env, types.PluginEnv{Name: k, Value: &v, Settable: []string{"value"}})
	}
	for _, kv := range r.FixedEnv {
		k, v, _ := strings.Cut(kv, "=")
		c.Env = append(c.Env, types.PluginEnv{Name: k, Value: &v})
	}
	for _, p := range r.Privileges {
		value := func() string {
			if len(p.Value) == 0 {
				return ""
			}
			return p.Value[0]
		}
		switch p.Name {
		case "network":
			c.Network.Type = value()
		case "host ipc namespace":
			c.IpcHost = true
		case "host pid namespace":
			c.PidHost = true
		case "mount":
			src := value()
			c.Mounts = append(c.Mounts, types.PluginMount{Name: src, Source: &src, Destination: src})
		case "device":
			path := value()
			c.Linux.Devices = append(c.Linux.Devices, types.PluginDevice{Name: path, Path: &path})
		case "allow-all-devices":
			c.Linux.AllowAllDevices = true
		case "capabilities":
			c.Linux.Capabilities = append(c.Linux.Capabilities, p.Value...)
		}
	}
	return c
}

// required is what moby's computePrivileges derives from the remote's
// config: Privileges, in moby's order and words, less any privilege no
// config field expresses (a name other than moby's seven kinds, a network
// of type "bridge", "null" or "").
func (r Remote) required() types.PluginPrivileges {
	return privileges.Required(r.config())
}

// errIncorrectPrivileges has the words of moby's validatePrivileges. Like
// moby's, it has no error class.
var errIncorrectPrivileges = errors.New("incorrect privileges")

// copyPrivileges returns a deep copy of in, so that the comparison can sort
// without touching the caller's slices.
func copyPrivileges(in types.PluginPrivileges) types.PluginPrivileges {
	if in == nil {
		return nil
	}
	out := make(types.PluginPrivileges, len(in))
	for i, p := range in {
		if p.Value != nil { // keep nil and empty apart: docker v28 compares with reflect.DeepEqual
			p.Value = append(make([]string, 0, len(p.Value)), p.Value...)
		}
		out[i] = p
	}
	return out
}
