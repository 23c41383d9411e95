//go:build linux

package dockerd_test

import (
	"archive/tar"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/docker/docker/api/types"
	"github.com/docker/docker/api/types/events"
	"github.com/docker/docker/api/types/filters"
	"github.com/docker/docker/api/types/swarm"
	"github.com/docker/docker/api/types/swarm/runtime"
)

// Scenario (i), issue 23: CVE-2026-33997. Every docker/docker v28
// release compares the privileges a plugin requires with those a service
// grants in isEqual (plugin/manager.go), which sorts both by name and
// compares from index 1: a single privilege is not compared at all, only
// the lengths must match. The fork's controller compares every entry
// itself, before it pulls a plugin and before it disables an installed one
// for an upgrade.

// stepUnderGrantRefused is the step of (i) where stock dockerd v28 fails:
// it installs and enables a plugin whose CAP_SYS_ADMIN nobody granted.
const stepUnderGrantRefused = "under-grant refused, nothing installed"

// privPublished are the references of volplugin's privileged variants, in
// one repository: :cap requires CAP_SYS_ADMIN, :net host networking (one
// privilege each, so stock v28 compares neither).
type privPublished struct{ cap, net string }

// privPlugins is published once per test binary, through the first daemon
// that runs (i), to the harness's registry, which every daemon shares.
var privPlugins struct {
	mu sync.Mutex
	p  *privPublished
}

// The grants of (i), as the service spec carries them.
var (
	grantNetAdmin = runtime.PluginPrivilege{Name: "capabilities", Description: "list of additional capabilities required", Value: []string{"CAP_NET_ADMIN"}}
	grantNetHost  = runtime.PluginPrivilege{Name: "network", Description: "permissions to access a network", Value: []string{"host"}}
)

// privilegeGrant is (i), issue 23. (1) A service whose plugin requires
// CAP_SYS_ADMIN and whose grant names another capability instead (one
// privilege each): the task is refused, its error names CAP_SYS_ADMIN and
// "incorrect privileges", and no plugin is installed. (2) A service runs
// :net granted exactly network=[host]; an update to :cap, which requires
// CAP_SYS_ADMIN, with the same grant: the new task is refused naming
// CAP_SYS_ADMIN, and the plugin stays the same, enabled, on :net with its
// config at every poll, with no disable event. When (1) fails (stock v28),
// a cleanup runs (2) and notes what the daemon does.
func privilegeGrant(s *scenarioRun) {
	const fresh, upgraded = "vol-i", "vol-iu"
	var pp *privPublished
	s.step("publish :cap and :net", func(ctx context.Context) error {
		var err error
		pp, err = s.publishPriv(ctx)
		if err == nil {
			s.notef("%s requires CAP_SYS_ADMIN, %s host networking", pp.cap, pp.net)
		}
		return err
	})
	s.step(stepUnderGrantRefused, func(ctx context.Context) error {
		err := s.underGrantRefused(ctx, fresh, pp)
		if err != nil {
			// What the daemon does on (2), noted under this step.
			st := s.current
			s.onCleanup(func(ctx context.Context) error {
				s.current = st
				defer func() { s.current = nil }()
				s.replayUpgrade(ctx, fresh, upgraded, pp)
				return nil
			})
		}
		return err
	})
	s.removeStep("service rm", fresh)
	s.step("create :net granted network=[host]", func(ctx context.Context) error {
		return s.createNet(ctx, upgraded, pp)
	})
	s.step("update to :cap refused, :net kept", func(ctx context.Context) error {
		return s.upgradeRefused(ctx, upgraded, pp)
	})
	s.removeStep("remove", upgraded)
}

// underGrantRefused creates the service of (1) and waits for its task's
// refusal, failing at once if the plugin is enabled; then it checks for
// 2 s that nothing is installed.
func (s *scenarioRun) underGrantRefused(ctx context.Context, name string, pp *privPublished) error {
	spec := runtime.PluginSpec{Name: name, Remote: pp.cap, Privileges: []*runtime.PluginPrivilege{&grantNetAdmin}}
	if err := s.createService(ctx, spec); err != nil {
		return err
	}
	refused, err := s.waitRefused(ctx, name, "", time.Time{}, func(st observed) error {
		if p := st.plugin; p != nil && p.Enabled {
			return fmt.Errorf("plugin %s enabled with capabilities %q, granted only %v (CVE-2026-33997)", name, p.Config.Linux.Capabilities, grantNetAdmin.Value)
		}
		return nil
	})
	if err != nil {
		return err
	}
	s.notef("task %.10s %s: %q", refused.ID, refused.Status.State, refused.Status.Err)
	return s.absentFor(ctx, name, 2*time.Second)
}

// waitRefused waits until a task of the service, other than skip and not
// created before since, has ended with an error that says "incorrect
// privileges" and names CAP_SYS_ADMIN, and returns it. check sees every
// observation first and fails the wait with its error.
func (s *scenarioRun) waitRefused(ctx context.Context, name, skip string, since time.Time, check func(observed) error) (*swarm.Task, error) {
	var refused *swarm.Task
	err := poll(ctx, "a task refused for its privileges", func(ctx context.Context) (bool, string, error) {
		st := s.observe(ctx, name)
		if st.err != nil {
			return false, st.String(), st.err
		}
		if err := check(st); err != nil {
			return false, st.String(), err
		}
		for _, t := range st.tasks {
			if t.ID == skip || t.CreatedAt.Before(since) || !ended(t.Status.State) || t.Status.Err == "" {
				continue
			}
			if !strings.Contains(t.Status.Err, "incorrect privileges") || !strings.Contains(t.Status.Err, "CAP_SYS_ADMIN") {
				return false, st.String(), fmt.Errorf("task %.10s ended %s with an error that does not name the missing CAP_SYS_ADMIN as incorrect privileges: %q", t.ID, t.Status.State, t.Status.Err)
			}
			refused = &t
			return true, st.String(), nil
		}
		return false, st.String(), nil
	})
	return refused, err
}

// absentFor checks at every poll for period that no plugin called name is
// installed: swarmkit retries a refused task after its restart delay.
func (s *scenarioRun) absentFor(ctx context.Context, name string, period time.Duration) error {
	return s.holdsFor(ctx, name, period, func(st observed) error {
		if st.plugin != nil {
			return fmt.Errorf("plugin %s installed after the refusal", name)
		}
		return nil
	})
}

// holdsFor checks at every poll for period that check passes.
func (s *scenarioRun) holdsFor(ctx context.Context, name string, period time.Duration, check func(observed) error) error {
	deadline := time.Now().Add(period)
	tick := time.NewTicker(pollInterval)
	defer tick.Stop()
	for {
		st := s.observe(ctx, name)
		if st.err != nil {
			return st.err
		}
		if err := check(st); err != nil {
			return fmt.Errorf("%w: %s", err, st)
		}
		if time.Now().After(deadline) {
			return nil
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-tick.C:
		}
	}
}

// createNet creates the service of (2), :net granted exactly what it
// requires, and waits for it to run.
func (s *scenarioRun) createNet(ctx context.Context, name string, pp *privPublished) error {
	spec := runtime.PluginSpec{Name: name, Remote: pp.net, Privileges: []*runtime.PluginPrivilege{&grantNetHost}}
	if err := s.createService(ctx, spec); err != nil {
		return err
	}
	return s.waitPlugin(ctx, name, pluginWant{enabled: true, remote: pp.net})
}

// upgradeRefused updates the service of (2) to :cap with :net's grant and
// checks at every poll that :net's plugin stays as it was while it waits
// for the new task's refusal, and for 3 s after it; then that the daemon
// logged no disable of the plugin since the update.
func (s *scenarioRun) upgradeRefused(ctx context.Context, name string, pp *privPublished) error {
	before := s.observe(ctx, name)
	if before.err != nil || before.plugin == nil || before.newestTask() == nil {
		return fmt.Errorf("no plugin or task before the update: %s", before)
	}
	id, oldTask := before.plugin.ID, before.newestTask().ID
	kept := func(st observed) error {
		switch p := st.plugin; {
		case p == nil:
			return errors.New("plugin removed")
		case p.ID != id:
			return fmt.Errorf("plugin replaced, was %.12s", id)
		case !p.Enabled:
			return errors.New("plugin disabled")
		case p.PluginReference != pp.net || p.Config.Network.Type != "host" || slices.Contains(p.Config.Linux.Capabilities, "CAP_SYS_ADMIN"):
			return fmt.Errorf("plugin upgraded: network %q, capabilities %q", p.Config.Network.Type, p.Config.Linux.Capabilities)
		}
		return nil
	}

	spec := runtime.PluginSpec{Name: name, Remote: pp.cap, Privileges: []*runtime.PluginPrivilege{&grantNetHost}}
	since, err := s.updateService(ctx, spec)
	if err != nil {
		return err
	}
	refused, err := s.waitRefused(ctx, name, oldTask, since, kept)
	if err != nil {
		return err
	}
	s.notef("task %.10s %s: %q", refused.ID, refused.Status.State, refused.Status.Err)
	if err := s.holdsFor(ctx, name, 3*time.Second, kept); err != nil {
		return err
	}
	disables, err := s.pluginEvents(ctx, since, id, events.ActionDisable)
	if err != nil {
		return err
	}
	if len(disables) > 0 {
		return fmt.Errorf("the daemon logged %d disable event(s) of plugin %.12s since the update", len(disables), id)
	}
	s.notef("plugin %.12s enabled on %s at every poll, no disable event since the update", id, pp.net)
	return nil
}

// pluginEvents returns the daemon's events of the plugin with the given ID
// and action between since and now.
func (s *scenarioRun) pluginEvents(ctx context.Context, since time.Time, id string, action events.Action) ([]events.Message, error) {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	stamp := func(t time.Time) string { return fmt.Sprintf("%d.%09d", t.Unix(), t.Nanosecond()) }
	msgs, errs := s.d.Client.Events(ctx, events.ListOptions{
		Since:   stamp(since),
		Until:   stamp(time.Now()),
		Filters: filters.NewArgs(filters.Arg("type", string(events.PluginEventType))),
	})
	var out []events.Message
	for {
		select {
		case m := <-msgs:
			if m.Actor.ID == id && m.Action == action {
				out = append(out, m)
			}
		case err := <-errs:
			if errors.Is(err, io.EOF) {
				return out, nil
			}
			return out, fmt.Errorf("plugin events: %w", err)
		}
	}
}

// replayUpgrade runs (2) after (1) failed and notes what the daemon does:
// per issue 23, stock v28 upgrades :net to :cap under :net's grant and
// runs it.
func (s *scenarioRun) replayUpgrade(ctx context.Context, fresh, upgraded string, pp *privPublished) {
	if s.svcID != "" {
		if err := s.removeService(ctx); err != nil {
			s.notef("then: service rm: %v", err)
			return
		}
		if err := s.waitGone(ctx, fresh); err != nil {
			s.notef("then: %v", err)
			return
		}
		s.svcID = ""
	}
	if err := s.createNet(ctx, upgraded, pp); err != nil {
		s.notef("then: create :net granted network=[host]: %v", err)
		return
	}
	since := time.Now().Round(0)
	err := s.upgradeRefused(ctx, upgraded, pp)
	if err == nil {
		s.notef("then the update to :cap with :net's grant was refused and :net kept")
		return
	}
	s.notef("then the update to :cap with :net's grant: %v", err)
	// Shorter than patience: only a note depends on it.
	err = pollFor(ctx, 15*time.Second, ":cap enabled with a RUNNING task", func(ctx context.Context) (bool, string, error) {
		st := s.observe(ctx, upgraded)
		t := st.newestTask()
		running := t != nil && t.DesiredState == swarm.TaskStateRunning && t.Status.State == swarm.TaskStateRunning
		return st.plugin != nil && st.plugin.Enabled && st.plugin.PluginReference == pp.cap && running, st.String(), nil
	})
	if err != nil {
		s.notef("then: %v", err)
		return
	}
	p, err := s.inspect(ctx, upgraded)
	if err != nil {
		s.notef("then: %v", err)
		return
	}
	s.notef("then it runs %s (plugin %.12s) with capabilities %q, a RUNNING task and the grant network=[host] only", p.PluginReference, p.ID, p.Config.Linux.Capabilities)
	disables, err := s.pluginEvents(ctx, since, p.ID, events.ActionDisable)
	s.notef("the daemon logged %d disable event(s) of the plugin for the upgrade (%v)", len(disables), err)
}

// publishPriv publishes :cap and :net through the scenario's daemon, once
// per test binary.
func (s *scenarioRun) publishPriv(ctx context.Context) (*privPublished, error) {
	privPlugins.mu.Lock()
	defer privPlugins.mu.Unlock()
	if privPlugins.p != nil {
		return privPlugins.p, nil
	}
	host := s.reg.Host()
	pp := &privPublished{cap: host + "/dockerd-it/privvol:cap", net: host + "/dockerd-it/privvol:net"}
	defs := []struct {
		ref, tag string
		edit     func(*types.PluginConfig)
	}{
		{pp.cap, "cap", func(c *types.PluginConfig) { c.Linux.Capabilities = []string{"CAP_SYS_ADMIN"} }},
		{pp.net, "net", func(c *types.PluginConfig) { c.Network.Type = "host" }},
	}
	// As publish does: every create, then every push, then every remove.
	for _, d := range defs {
		cfg := pluginConfig(d.tag)
		d.edit(&cfg)
		buildCtx, err := privPluginContext(shared.bins.plugin, d.tag, cfg)
		if err != nil {
			return nil, err
		}
		if err := s.d.Client.PluginCreate(ctx, bytes.NewReader(buildCtx), types.PluginCreateOptions{RepoName: d.ref}); err != nil {
			return nil, fmt.Errorf("plugin create %s: %w", d.ref, err)
		}
	}
	for _, d := range defs {
		if err := push(ctx, s.d.Client, d.ref); err != nil {
			return nil, err
		}
	}
	for _, d := range defs {
		if err := s.d.Client.PluginRemove(ctx, d.ref, types.PluginRemoveOptions{}); err != nil {
			return nil, fmt.Errorf("plugin rm %s: %w", d.ref, err)
		}
	}
	privPlugins.p = pp
	return pp, nil
}

// privPluginContext is pluginContext with the config cfg: config.json and
// rootfs/ with the static volplugin binary and /tag.
func privPluginContext(pluginBin, tag string, cfg types.PluginConfig) ([]byte, error) {
	cfgJSON, err := json.Marshal(cfg)
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
		{"config.json", 0o644, cfgJSON},
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
