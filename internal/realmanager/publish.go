//go:build linux

package realmanager

import (
	"archive/tar"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"strings"
	"time"

	"github.com/containerd/containerd/v2/core/remotes"
	"github.com/docker/docker/api/types"
	"github.com/docker/docker/api/types/backend"
	registrytypes "github.com/docker/docker/api/types/registry"
)

// mediaTypePluginConfig is the media type of a plugin's config blob.
const mediaTypePluginConfig = "application/vnd.docker.plugin.v1+json"

// PluginDef describes a test plugin for [Publish]. Every plugin is a
// volume driver (interface type docker.volumedriver/1.0, socket
// "plugin.sock", entrypoint ["/plugin"]) whose rootfs holds a shell script
// /plugin and a file /description with Description in it, so plugins with
// different descriptions also have different layers.
type PluginDef struct {
	// Name is the repository and tag under the registry host, such as
	// "realmanager/vol:v1"; a missing tag means "latest".
	Name string
	// Description is the config's Description.
	Description string
	// Privileged makes the plugin require privileges: host networking and
	// the CAP_SYS_ADMIN capability (see [PrivilegedPrivileges]).
	Privileged bool
	// Env declares settable environment variables, as "KEY=DEFAULT".
	Env []string
	// FixedEnv declares environment variables that are not settable, as
	// "KEY=DEFAULT": config.json entries without "settable", which the
	// Manager's Set refuses (`"KEY" is not settable`).
	FixedEnv []string
}

// Ref returns the plugin's reference in the registry at host
// ("127.0.0.1:PORT"), the remote and name a Pull takes.
func (d PluginDef) Ref(host string) string { return host + "/" + d.Name }

// StandardPlugins returns the fixture's usual plugins: v1 and v2 of one
// repository, differing in description and layer, both declaring the
// settable variable DEBUG=0 and the fixed (not settable) MODE=ro, in that
// order, and priv, which requires privileges.
func StandardPlugins() (v1, v2, priv PluginDef) {
	v1 = PluginDef{Name: "realmanager/vol:v1", Description: "realmanager test volume plugin v1", Env: []string{"DEBUG=0"}, FixedEnv: []string{"MODE=ro"}}
	v2 = PluginDef{Name: "realmanager/vol:v2", Description: "realmanager test volume plugin v2", Env: []string{"DEBUG=0"}, FixedEnv: []string{"MODE=ro"}}
	priv = PluginDef{Name: "realmanager/privvol:latest", Description: "realmanager test volume plugin needing privileges", Privileged: true}
	return v1, v2, priv
}

// PrivilegedPrivileges returns the privileges that a plugin defined with
// Privileged: true requires, in the order in which the Manager computes them
// (see [Manager.RequiredPrivileges]).
func PrivilegedPrivileges() types.PluginPrivileges {
	return types.PluginPrivileges{
		{Name: "network", Description: "permissions to access a network", Value: []string{"host"}},
		{Name: "capabilities", Description: "list of additional capabilities required", Value: []string{"CAP_SYS_ADMIN"}},
	}
}

func (d PluginDef) config() types.PluginConfig {
	cfg := types.PluginConfig{
		Description:   d.Description,
		Documentation: "https://github.com/seed-e85c93d5/plugin/internal/realmanager",
		Entrypoint:    []string{"/plugin"},
		Env:           []types.PluginEnv{},
		Interface: types.PluginConfigInterface{
			Socket: "plugin.sock",
			Types:  []types.PluginInterfaceType{{Prefix: "docker", Capability: "volumedriver", Version: "1.0"}},
		},
		Mounts:  []types.PluginMount{},
		WorkDir: "/",
		Args:    types.PluginConfigArgs{Settable: []string{}, Value: []string{}},
		Linux:   types.PluginConfigLinux{Capabilities: []string{}, Devices: []types.PluginDevice{}},
	}
	for _, kv := range d.Env {
		k, v, _ := strings.Cut(kv, "=")
		cfg.Env = append(cfg.Env, types.PluginEnv{Name: k, Settable: []string{"value"}, Value: &v})
	}
	for _, kv := range d.FixedEnv {
		k, v, _ := strings.Cut(kv, "=")
		cfg.Env = append(cfg.Env, types.PluginEnv{Name: k, Value: &v})
	}
	if d.Privileged {
		cfg.Network.Type = "host"
		cfg.Linux.Capabilities = []string{"CAP_SYS_ADMIN"}
	}
	return cfg
}

// buildContext returns the tar stream that CreateFromContext takes:
// config.json and rootfs/.
func (d PluginDef) buildContext() ([]byte, error) {
	cfg, err := json.Marshal(d.config())
	if err != nil {
		return nil, err
	}
	script := "#!/bin/sh\n# " + d.Description + "\nexit 0\n"
	mtime := time.Unix(1700000000, 0)
	files := []struct {
		name string
		mode int64
		body string
	}{
		{"config.json", 0o644, string(cfg)},
		{"rootfs/", 0o755, ""},
		{"rootfs/plugin", 0o755, script},
		{"rootfs/description", 0o644, d.Description + "\n"},
	}
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for _, f := range files {
		h := &tar.Header{Name: f.name, Mode: f.mode, ModTime: mtime, Typeflag: tar.TypeReg, Size: int64(len(f.body))}
		if strings.HasSuffix(f.name, "/") {
			h.Typeflag, h.Size = tar.TypeDir, 0
		}
		if err := tw.WriteHeader(h); err != nil {
			return nil, err
		}
		if _, err := io.WriteString(tw, f.body); err != nil {
			return nil, err
		}
	}
	if err := tw.Close(); err != nil {
		return nil, err
	}
	return buf.Bytes(), nil
}

// Publish builds the plugins defs describe and pushes them to the registry
// at host ("127.0.0.1:PORT", see [Registry.Host]), each to
// [PluginDef.Ref](host). It uses a temporary [Manager] of its own, closed
// before it returns, so the caller's Managers never hold the plugins
// locally. It needs [Supported].
//
// Following NOTES.md, it creates every plugin, then pushes every one, then
// removes every one and garbage-collects once: interleaving a push with a
// Remove's background GC can lose the manifest being pushed.
func Publish(ctx context.Context, host string, defs ...PluginDef) (retErr error) {
	// Push leaves a progress goroutine running until its context ends.
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	// Give plugin configs a ref key, as the Manager's own fetch does, or
	// containerd warns about an unknown media type for every push.
	ctx = remotes.WithMediaTypeKeyPrefix(ctx, mediaTypePluginConfig, "docker-plugin")

	m, err := NewManager()
	if err != nil {
		return err
	}
	defer func() {
		if err := m.Close(); err != nil && retErr == nil {
			retErr = err
		}
	}()

	for _, d := range defs {
		tarCtx, err := d.buildContext()
		if err != nil {
			return fmt.Errorf("realmanager: publish %s: %w", d.Name, err)
		}
		if err := m.CreateFromContext(ctx, io.NopCloser(bytes.NewReader(tarCtx)), &types.PluginCreateOptions{RepoName: d.Ref(host)}); err != nil {
			return fmt.Errorf("realmanager: publish %s: create: %w", d.Name, err)
		}
	}
	for _, d := range defs {
		if err := m.Push(ctx, d.Ref(host), nil, &registrytypes.AuthConfig{}, nil); err != nil {
			return fmt.Errorf("realmanager: publish %s: push: %w", d.Name, err)
		}
	}
	var errs []error
	for _, d := range defs {
		if err := m.Remove(d.Ref(host), &backend.PluginRmConfig{ForceRemove: true}); err != nil {
			errs = append(errs, fmt.Errorf("realmanager: publish %s: remove: %w", d.Name, err))
		}
	}
	m.GC()
	return errors.Join(errs...)
}
