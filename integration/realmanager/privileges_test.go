// Not under -race: see main_test.go.

//go:build linux && !race

package realmanager_test

// CVE-2026-33997 against moby's real Manager. Every docker/docker v28
// release compares the granted privileges with the required ones in
// isEqual (plugin/manager.go), which sorts both lists by name and compares
// them from index 1: the first privilege is never compared, a single one
// not at all, and only the lengths must match. The controller enforces a
// service's grant itself (every entry, order-insensitive, values
// included), before it pulls a plugin and before it disables an installed
// one for an upgrade. The moby v2 flavour of these tests (generated into
// mobyv2/) drives moby v2's Manager, which compares every entry itself; the
// controller's refusal must look the same there.

import (
	"archive/tar"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"reflect"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/containerd/containerd/v2/core/remotes"
	cerrdefs "github.com/containerd/errdefs"
	"github.com/distribution/reference"
	"github.com/docker/docker/api/types"
	"github.com/docker/docker/api/types/backend"
	registrytypes "github.com/docker/docker/api/types/registry"
	"github.com/docker/docker/api/types/swarm/runtime"
	mobyplugin "github.com/docker/docker/plugin"
	"github.com/moby/swarmkit/v2/agent/exec"
	"github.com/moby/swarmkit/v2/api"
	"gotest.tools/v3/assert"
	is "gotest.tools/v3/assert/cmp"

	plugin "github.com/seed-e85c93d5/plugin"
	rm "github.com/seed-e85c93d5/plugin/internal/realmanager"
)

// The privileges these tests require and grant, with the names,
// descriptions and values of moby's computePrivileges
// (plugin/backend_linux.go).
var (
	netHost    = types.PluginPrivilege{Name: "network", Description: "permissions to access a network", Value: []string{"host"}}
	capSysAdm  = types.PluginPrivilege{Name: "capabilities", Description: "list of additional capabilities required", Value: []string{"CAP_SYS_ADMIN"}}
	capChown   = types.PluginPrivilege{Name: "capabilities", Description: "list of additional capabilities required", Value: []string{"CAP_CHOWN"}}
	mountTmp   = types.PluginPrivilege{Name: "mount", Description: "host path to mount", Value: []string{"/tmp"}}
	missingCap = "capabilities: [CAP_SYS_ADMIN]" // how the refusal names capSysAdm
)

// privPlugin is a volume-driver plugin whose config requires the
// privileges its network type and capabilities imply; the fixture's
// PluginDef knows only "none" and "host network plus CAP_SYS_ADMIN".
type privPlugin struct {
	name        string // repository:tag under the registry host
	description string // also in its rootfs, so that each has its own layer
	network     string // the config's network type; "" is "null"
	caps        []string
}

func (d privPlugin) ref() string { return reg.Host() + "/" + d.name }

// The plugins of these tests, in one repository, published on first use
// next to the standard plugins (the standard priv plugin requires host
// networking and CAP_SYS_ADMIN).
var (
	netOnly = privPlugin{name: "privileges/vol:net", description: "requires host networking", network: "host"}
	capOnly = privPlugin{name: "privileges/vol:cap", description: "requires CAP_SYS_ADMIN", caps: []string{"CAP_SYS_ADMIN"}}

	privOnce sync.Once
	privErr  error
)

// privFixture is fixture plus netOnly and capOnly in the registry.
func privFixture(t *testing.T) {
	t.Helper()
	fixture(t)
	privOnce.Do(func() {
		start := time.Now()
		privErr = publishPriv(context.Background(), netOnly, capOnly)
		t.Logf("published %s and %s in %v", netOnly.ref(), capOnly.ref(), time.Since(start).Round(time.Millisecond))
	})
	assert.NilError(t, privErr)
}

func (d privPlugin) config() types.PluginConfig {
	network := d.network
	if network == "" {
		network = "null"
	}
	caps := d.caps
	if caps == nil {
		caps = []string{}
	}
	return types.PluginConfig{
		Description:   "realmanager privileges test plugin: " + d.description,
		Documentation: "https://github.com/seed-e85c93d5/plugin/integration/realmanager",
		Entrypoint:    []string{"/plugin"},
		Env:           []types.PluginEnv{},
		Interface: types.PluginConfigInterface{
			Socket: "plugin.sock",
			Types:  []types.PluginInterfaceType{{Prefix: "docker", Capability: "volumedriver", Version: "1.0"}},
		},
		Network: types.PluginConfigNetwork{Type: network},
		Mounts:  []types.PluginMount{},
		WorkDir: "/",
		Args:    types.PluginConfigArgs{Settable: []string{}, Value: []string{}},
		Linux:   types.PluginConfigLinux{Capabilities: caps, Devices: []types.PluginDevice{}},
	}
}

// buildContext is the tar stream CreateFromContext takes: config.json and
// rootfs/ with a script /plugin and /description.
func (d privPlugin) buildContext() ([]byte, error) {
	cfg, err := json.Marshal(d.config())
	if err != nil {
		return nil, err
	}
	mtime := time.Unix(1700000000, 0)
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for _, f := range []struct {
		name string
		mode int64
		body string
	}{
		{"config.json", 0o644, string(cfg)},
		{"rootfs/", 0o755, ""},
		{"rootfs/plugin", 0o755, "#!/bin/sh\n# " + d.description + "\nexit 0\n"},
		{"rootfs/description", 0o644, d.description + "\n"},
	} {
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

// publishPriv pushes defs to the shared registry as rm.Publish does: with
// a Manager of its own, every create, then every push, then every remove
// and one garbage collection (NOTES.md: a Remove's background GC can lose
// a manifest a concurrent push still reads). Publishing a name again
// replaces what its tag points to.
func publishPriv(ctx context.Context, defs ...privPlugin) (retErr error) {
	ctx, cancel := context.WithCancel(ctx) // Push's progress goroutine ends with it
	defer cancel()
	ctx = remotes.WithMediaTypeKeyPrefix(ctx, "application/vnd.docker.plugin.v1+json", "docker-plugin")
	m, err := rm.NewManager()
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
			return fmt.Errorf("publish %s: %w", d.name, err)
		}
		if err := m.CreateFromContext(ctx, io.NopCloser(bytes.NewReader(tarCtx)), &types.PluginCreateOptions{RepoName: d.ref()}); err != nil {
			return fmt.Errorf("publish %s: create: %w", d.name, err)
		}
	}
	for _, d := range defs {
		if err := m.Push(ctx, d.ref(), nil, &registrytypes.AuthConfig{}, nil); err != nil {
			return fmt.Errorf("publish %s: push: %w", d.name, err)
		}
	}
	var errs []error
	for _, d := range defs {
		if err := m.Remove(d.ref(), &backend.PluginRmConfig{ForceRemove: true}); err != nil {
			errs = append(errs, fmt.Errorf("publish %s: remove: %w", d.name, err))
		}
	}
	m.GC()
	return errors.Join(errs...)
}

// grant is a spec's Privileges holding ps in that order.
func grant(ps ...types.PluginPrivilege) []*runtime.PluginPrivilege {
	out := make([]*runtime.PluginPrivilege, 0, len(ps))
	for _, p := range ps {
		out = append(out, &runtime.PluginPrivilege{Name: p.Name, Description: p.Description, Value: append([]string(nil), p.Value...)})
	}
	return out
}

func grantedSpec(remote string, ps ...types.PluginPrivilege) runtime.PluginSpec {
	spec := pluginSpec(remote)
	spec.Privileges = grant(ps...)
	return spec
}

// mobyV2 reports whether this test binary drives moby v2's Manager (the
// generated flavour under mobyv2/) rather than docker v28's. The prefix
// names no docker/docker package, so the generator leaves it as it is.
func mobyV2() bool {
	return strings.HasPrefix(reflect.TypeOf(mobyplugin.Manager{}).PkgPath(), "github.com/moby/moby/v2/")
}

// assertIncorrectPrivileges checks that err is the controller's refusal of
// a grant: permanent, ErrIncorrectPrivileges, classified permission
// denied, and naming each of named (privileges required but not granted,
// granted but not required).
func assertIncorrectPrivileges(t *testing.T, err error, named ...string) {
	t.Helper()
	t.Logf("Prepare: %v", err)
	assert.Check(t, !exec.IsTemporary(err), "a refused grant is not worth retrying: %v", err)
	assert.Check(t, errors.Is(err, plugin.ErrIncorrectPrivileges), "not ErrIncorrectPrivileges: %v", err)
	assert.Check(t, cerrdefs.IsPermissionDenied(err), "not classified permission denied: %v", err)
	assert.Check(t, is.ErrorContains(err, "incorrect privileges"))
	for _, n := range named {
		assert.Check(t, is.ErrorContains(err, n))
	}
}

// assertRejected checks what exec.Do makes of the refusal: the task is
// REJECTED and its status error names the same.
func (e *env) assertRejected(tk *api.Task, c exec.Controller, named ...string) {
	e.t.Helper()
	assert.NilError(e.t, e.do(tk, c))
	assert.Check(e.t, is.Equal(tk.Status.State, api.TaskStateRejected))
	assert.Check(e.t, is.Contains(tk.Status.Err, "incorrect privileges"))
	for _, n := range named {
		assert.Check(e.t, is.Contains(tk.Status.Err, n))
	}
}

// describe is the installed plugin called name in one line, for failures.
func (e *env) describe(name string) string {
	p, err := e.m.Get(name)
	if err != nil {
		return err.Error()
	}
	cfg := p.PluginObj.Config
	return fmt.Sprintf("plugin %s id %.12s ref %s network %q capabilities %q enabled %v running %v",
		p.Name(), p.GetID(), p.PluginObj.PluginReference, cfg.Network.Type, cfg.Linux.Capabilities, p.IsEnabled(), e.m.Running(p.GetID()))
}

// failAccepted ends the test when Prepare accepted an under-grant (the
// Manager's check is all there was), after Start, to show what the node
// then runs.
func (e *env) failAccepted(c exec.Controller, what string) {
	e.t.Helper()
	prepared := e.describe(pluginName)
	startErr := c.Start(e.ctx)
	e.t.Fatalf("Prepare accepted %s (CVE-2026-33997); after Prepare: %s; Start: %v; then: %s",
		what, prepared, startErr, e.describe(pluginName))
}

// A fresh install with a grant that lacks a required privilege: Prepare
// refuses it before pulling, permanently, naming the privileges required
// but not granted and granted but not required; the task is REJECTED and
// nothing is installed. docker v28's Manager alone would accept both
// grants.
func TestPrivilegesUnderGrantRefused(t *testing.T) {
	privFixture(t)
	for _, tc := range []struct {
		name    string
		remote  string
		granted []types.PluginPrivilege
		named   []string
	}{{
		// Required, sorted by name: capabilities [CAP_SYS_ADMIN], network
		// [host]. v28 compares only index 1, network, which matches.
		name:    "first privilege differs",
		remote:  priv,
		granted: []types.PluginPrivilege{capChown, netHost},
		named:   []string{missingCap, "capabilities: [CAP_CHOWN]"},
	}, {
		// A single privilege, which v28 does not compare at all.
		name:    "single privilege",
		remote:  capOnly.ref(),
		granted: []types.PluginPrivilege{mountTmp},
		named:   []string{missingCap, "mount: [/tmp]"},
	}} {
		t.Run(tc.name, func(t *testing.T) {
			e := newEnv(t)
			tk := newTask(t, "task-1", "svc-a", grantedSpec(tc.remote, tc.granted...))
			c := e.controller(tk)
			e.runTo(tk, c, api.TaskStatePreparing)

			err := c.Prepare(e.ctx)
			if err == nil {
				e.failAccepted(c, fmt.Sprintf("the grant %v for %s", tc.granted, tc.remote))
			}
			assertIncorrectPrivileges(t, err, tc.named...)
			e.assertRejected(tk, c, tc.named...)
			_, err = e.m.Get(pluginName)
			assert.Check(t, cerrdefs.IsNotFound(err), "installed after the refusal: %v", e.describe(pluginName))
			e.retire(c)
			_, err = e.m.Get(pluginName)
			assert.Check(t, cerrdefs.IsNotFound(err), "%v", err)
		})
	}
}

// A supply-chain upgrade: v1 requires host networking and runs with
// exactly that grant; the service's next task asks for a remote whose
// plugin requires CAP_SYS_ADMIN instead, with v1's grant (one privilege
// each: v28 compares none). Prepare refuses before disabling anything:
// v1 stays enabled with its ID and config, its process was never stopped
// (no disable event, and the old task's Wait is still waiting), and the
// new task is REJECTED. Once by a new tag of the repository, once by the
// same tag pushed again.
func TestPrivilegesUpgradeUnderGrantRefused(t *testing.T) {
	privFixture(t)
	t.Run("new tag", func(t *testing.T) {
		upgradeRefused(t, netOnly.ref(), func(*testing.T) string { return capOnly.ref() })
	})
	t.Run("same tag pushed again", func(t *testing.T) {
		// Its own tag, published afresh by each run: the test moves it.
		v1 := privPlugin{name: "privileges/repush:latest", description: "requires host networking (repush v1)", network: "host"}
		assert.NilError(t, publishPriv(context.Background(), v1))
		upgradeRefused(t, v1.ref(), func(t *testing.T) string {
			v2 := privPlugin{name: v1.name, description: "requires CAP_SYS_ADMIN (repush v2)", caps: []string{"CAP_SYS_ADMIN"}}
			assert.NilError(t, publishPriv(context.Background(), v2))
			return v2.ref()
		})
	})
}

// upgradeRefused runs a task of v1 (which requires netHost) granted
// netHost, then a second task of the service whose remote is the one
// next returns (a plugin that requires capSysAdm), with the same grant,
// and checks the refusal.
func upgradeRefused(t *testing.T, v1 string, next func(*testing.T) string) {
	e := newEnv(t)
	old := newTask(t, "task-v1", "svc-a", grantedSpec(v1, netHost))
	oldC := e.controller(old)
	e.runTo(old, oldC, api.TaskStateRunning)
	p := e.get(pluginName)
	id := p.GetID()
	e.assertRunning(p)
	assert.Check(t, is.Equal(p.PluginObj.Config.Network.Type, "host"))

	// The old task's Wait watches the plugin while the node prepares the
	// new task (NOTES.md, "Update race"); a disable would end it.
	w := e.wait(old, oldC)
	disables, stop := e.m.SubscribeEvents(8, mobyplugin.EventDisable{Plugin: p.PluginObj})
	defer stop()

	v2 := next(t)
	upd := newTask(t, "task-v2", "svc-a", grantedSpec(v2, netHost))
	updC := e.controller(upd)
	e.runTo(upd, updC, api.TaskStatePreparing)
	err := updC.Prepare(e.ctx)
	if err == nil {
		select {
		case ev := <-disables:
			t.Logf("the Manager disabled the plugin for the upgrade: %T", ev)
		default:
		}
		e.failAccepted(updC, fmt.Sprintf("the upgrade of %s to %s with v1's grant %v", v1, v2, []types.PluginPrivilege{netHost}))
	}
	assertIncorrectPrivileges(t, err, missingCap, "network: [host]")
	e.assertRejected(upd, updC, missingCap, "network: [host]")

	// Published synchronously into the subscription's buffer: a disable
	// during either Prepare would be there by now.
	select {
	case ev := <-disables:
		t.Errorf("the plugin was disabled during the refused upgrade: %+v", ev)
	default:
	}
	waitEnded := false
	select {
	case r := <-w.res:
		w.res <- r
		waitEnded = true
		t.Errorf("the old task's Wait ended during the refused upgrade: %v, status %+v", r.err, r.status)
	default:
	}
	kept := func(when string) {
		t.Helper()
		q := e.get(pluginName)
		assert.Check(t, is.Equal(q.GetID(), id), "%s: another plugin", when)
		assert.Check(t, is.Equal(q.PluginObj.PluginReference, v1), "%s: upgraded", when)
		assert.Check(t, is.Equal(q.PluginObj.Config.Network.Type, "host"), "%s: config changed", when)
		assert.Check(t, is.Len(q.PluginObj.Config.Linux.Capabilities, 0), "%s: config changed", when)
		e.assertRunning(q)
	}
	kept("after the refusal")

	w.cancel()
	if err := e.result(old, w); !waitEnded {
		assert.Check(t, is.ErrorIs(err, exec.ErrTaskRetry))
	}
	e.retire(updC)
	kept("after the refused task's Remove")
	e.retire(oldC)
	e.assertGone(pluginName, id)
}

// The control: the exact grant, given in another order than the Manager
// computes it, installs the plugin and runs it.
func TestPrivilegesExactGrantInAnotherOrder(t *testing.T) {
	e := newEnv(t)
	required, err := e.m.RequiredPrivileges(e.ctx, priv)
	assert.NilError(t, err)
	assert.Assert(t, is.DeepEqual(required, types.PluginPrivileges{netHost, capSysAdm}))

	tk := newTask(t, "task-1", "svc-a", grantedSpec(priv, capSysAdm, netHost))
	c := e.controller(tk)
	e.runTo(tk, c, api.TaskStateRunning)
	p := e.get(pluginName)
	assert.Check(t, is.DeepEqual(p.PluginObj.Config.Linux.Capabilities, []string{"CAP_SYS_ADMIN"}))
	e.assertRunning(p)
	e.retire(c)
	e.assertGone(pluginName, p.GetID())
}

// The CVE itself, on the Manager with no controller in between: docker
// v28's Pull accepts the under-grants that TestPrivilegesUnderGrantRefused
// refuses, and installs a plugin with a privilege nobody granted. This
// test passing on docker v28 demonstrates the Manager's bug, not ours.
// moby v2's Manager (the generated flavour) refuses them instead.
func TestPrivilegesManagerCheck(t *testing.T) {
	privFixture(t)
	for _, tc := range []struct {
		name    string
		remote  string
		granted types.PluginPrivileges
	}{
		{"first privilege differs", priv, types.PluginPrivileges{capChown, netHost}},
		{"single privilege", capOnly.ref(), types.PluginPrivileges{mountTmp}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			m := newEnv(t).m
			ctx := context.Background()
			err := m.Pull(ctx, parseRef(t, tc.remote), pluginName, nil, &registrytypes.AuthConfig{}, tc.granted, io.Discard)
			if mobyV2() {
				assert.Check(t, is.ErrorContains(err, "incorrect privileges"), "moby v2's Manager accepted %v for %s", tc.granted, tc.remote)
				_, err := m.Get(pluginName)
				assert.Check(t, cerrdefs.IsNotFound(err), "%v", err)
				return
			}
			assert.NilError(t, err, "docker v28's Manager refused %v for %s: is CVE-2026-33997 fixed in this release?", tc.granted, tc.remote)
			p, err := m.Get(pluginName)
			assert.NilError(t, err)
			assert.Check(t, is.DeepEqual(p.PluginObj.Config.Linux.Capabilities, []string{"CAP_SYS_ADMIN"}), "installed with CAP_SYS_ADMIN, granted %v", tc.granted)
			assert.NilError(t, m.Remove(pluginName, &backend.PluginRmConfig{}))
		})
	}
}

// parseRef is ref as the Manager's Pull takes it.
func parseRef(t *testing.T, ref string) reference.Named {
	t.Helper()
	n, err := reference.ParseNormalizedNamed(ref)
	assert.NilError(t, err)
	return n
}
