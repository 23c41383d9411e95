//go:build linux

package dockerd_test

import (
	"archive/tar"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"time"

	"github.com/docker/docker/api/types"
	"github.com/docker/docker/client"
	"github.com/docker/docker/pkg/jsonmessage"
)

// published are the references of the two versions of volplugin in the
// registry.
type published struct {
	v1, v2 string
}

// Plugin settings the scenarios rely on (pluginConfig declares them).
const (
	// settableEnv is declared with "value" settable, default "1".
	settableEnv = "VERSION"
	// propagatedMount holds the volumes (volplugin's dataDir).
	propagatedMount = "/data"
)

// publish creates volplugin's two versions through the daemon c, pushes
// them to the registry at host and removes them from the daemon again:
// every create first, then every push, then every remove (NOTES.md: a
// remove's background garbage collection can lose a manifest that a
// concurrent push still reads).
func publish(ctx context.Context, c *client.Client, host, pluginBin string) (*published, error) {
	p := &published{v1: host + "/dockerd-it/vol:1", v2: host + "/dockerd-it/vol:2"}
	refs := map[string]string{"1": p.v1, "2": p.v2}
	for _, tag := range []string{"1", "2"} {
		buildCtx, err := pluginContext(pluginBin, tag)
		if err != nil {
			return nil, err
		}
		if err := c.PluginCreate(ctx, bytes.NewReader(buildCtx), types.PluginCreateOptions{RepoName: refs[tag]}); err != nil {
			return nil, fmt.Errorf("plugin create %s: %w", refs[tag], err)
		}
	}
	for _, ref := range []string{p.v1, p.v2} {
		if err := push(ctx, c, ref); err != nil {
			return nil, err
		}
	}
	for _, ref := range []string{p.v1, p.v2} {
		if err := c.PluginRemove(ctx, ref, types.PluginRemoveOptions{}); err != nil {
			return nil, fmt.Errorf("plugin rm %s: %w", ref, err)
		}
	}
	return p, nil
}

func push(ctx context.Context, c *client.Client, ref string) error {
	r, err := c.PluginPush(ctx, ref, "")
	if err != nil {
		return fmt.Errorf("plugin push %s: %w", ref, err)
	}
	defer r.Close()
	if err := jsonmessage.DisplayJSONMessagesStream(r, io.Discard, 0, false, nil); err != nil {
		return fmt.Errorf("plugin push %s: %w", ref, err)
	}
	return nil
}

// pluginConfig is volplugin's config.json for version tag.
func pluginConfig(tag string) types.PluginConfig {
	def := "1"
	return types.PluginConfig{
		Description:   "volume driver of the forked-daemon harness, version " + tag,
		Documentation: "https://github.com/seed-e85c93d5/plugin/tree/main/integration/dockerd",
		Entrypoint:    []string{"/plugin"},
		WorkDir:       "/",
		Interface: types.PluginConfigInterface{
			Socket: "p.sock",
			Types:  []types.PluginInterfaceType{{Prefix: "docker", Capability: "volumedriver", Version: "1.0"}},
		},
		Network:         types.PluginConfigNetwork{Type: "null"},
		PropagatedMount: propagatedMount,
		Env: []types.PluginEnv{{
			Name:        settableEnv,
			Description: "a setting the service's Env can change; volplugin reports it",
			Settable:    []string{"value"},
			Value:       &def,
		}},
		Mounts: []types.PluginMount{},
		Args:   types.PluginConfigArgs{Settable: []string{}, Value: []string{}},
		Linux:  types.PluginConfigLinux{Capabilities: []string{}, Devices: []types.PluginDevice{}},
	}
}

// pluginContext returns the tar stream `docker plugin create` sends:
// config.json and rootfs/, which holds only the static volplugin binary
// and /tag, the version volplugin reports.
func pluginContext(pluginBin, tag string) ([]byte, error) {
	cfg, err := json.Marshal(pluginConfig(tag))
	if err != nil {
		return nil, err
	}
	bin, err := os.ReadFile(pluginBin)
	if err != nil {
		return nil, err
	}
	mtime := time.Unix(1700000000, 0)
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for _, f := range []struct {
		name string
		mode int64
		body []byte
	}{
		{"config.json", 0o644, cfg},
		{"rootfs/", 0o755, nil},
		{"rootfs/plugin", 0o755, bin},
		{"rootfs/tag", 0o644, []byte(tag + "\n")},
	} {
		h := &tar.Header{Name: f.name, Mode: f.mode, ModTime: mtime, Typeflag: tar.TypeReg, Size: int64(len(f.body))}
		if f.body == nil {
			h.Typeflag = tar.TypeDir
		}
		if err := tw.WriteHeader(h); err != nil {
			return nil, err
		}
		if _, err := tw.Write(f.body); err != nil {
			return nil, err
		}
	}
	if err := tw.Close(); err != nil {
		return nil, err
	}
	return buf.Bytes(), nil
}
