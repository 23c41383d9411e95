//go:build linux

package dockerd_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"strings"
	"time"

	cerrdefs "github.com/containerd/errdefs"
	"github.com/docker/docker/api/types/swarm"
	"github.com/docker/docker/api/types/swarm/runtime"
)

// stepKeptAtStart is the step of (f) where stock dockerd fails, per issue
// 16: its shutdown removed the plugin, so when the restarted daemon's API
// answers the plugin is missing (or already pulled again, with a new ID).
const stepKeptAtStart = "plugin kept: same ID, enabled"

// restartKeepsPlugin is (f), issue 16: a dockerd restart (SIGTERM, start
// again on the same data root) keeps the swarm's plugin. The fork records
// the plugin at the shutdown instead of removing it; the restarted daemon
// has the same plugin, enabled, as soon as its API answers; the task from
// before the restart resumes RUNNING without a pull, and the record is
// gone once it runs. Removing the service then removes the plugin.
func restartKeepsPlugin(s *scenarioRun) {
	const name = "vol-f"
	var id, taskID string
	var installed pulls // the registry's counts after the install
	s.step("create", func(ctx context.Context) error {
		before := s.reg.pulls()
		if err := s.createService(ctx, runtime.PluginSpec{Name: name, Remote: s.plugins.v1}); err != nil {
			return err
		}
		if err := s.waitPlugin(ctx, name, pluginWant{enabled: true}); err != nil {
			return err
		}
		st := s.observe(ctx, name)
		if st.plugin == nil || st.newestTask() == nil {
			return fmt.Errorf("plugin or task gone right after the install: %s", st)
		}
		id, taskID = st.plugin.ID, st.newestTask().ID
		installed = s.reg.pulls()
		s.notef("plugin %.12s, task %.10s; the install made %v", id, taskID, installed.minus(before))
		if installed.manifests == before.manifests {
			// Without this, "no pull during the restart" would prove nothing.
			return fmt.Errorf("the registry counted no manifest request for the install (%v, then %v)", before, installed)
		}
		return nil
	})
	s.step("dockerd restart", func(ctx context.Context) error {
		start := time.Now()
		if err := s.d.Stop(); err != nil {
			return err
		}
		stopped := time.Since(start)
		record, recErr := os.ReadFile(s.d.keptRecord())
		start = time.Now()
		if err := s.d.Start(ctx); err != nil {
			return err
		}
		s.notef("stop (SIGTERM until dockerd exited) %.1f s, start until the API answered %.1f s", stopped.Seconds(), time.Since(start).Seconds())
		for _, line := range s.logMessages("plugin kept for the node's restart") {
			s.notef("at the shutdown: %s", line)
		}
		switch {
		case s.d.Flavor == stock && errors.Is(recErr, os.ErrNotExist):
			return nil
		case s.d.Flavor == stock:
			return fmt.Errorf("stock dockerd left %s (%v): %s", s.d.keptRecord(), recErr, record)
		case recErr != nil:
			return fmt.Errorf("no record of kept plugins after the shutdown: %w", recErr)
		case !bytes.Contains(record, []byte(id)):
			return fmt.Errorf("the record of kept plugins after the shutdown does not name plugin %s: %s", id, record)
		}
		s.notef("record after the shutdown: %s", strings.Join(strings.Fields(string(record)), " "))
		return nil
	})
	s.step(stepKeptAtStart, func(ctx context.Context) error {
		err := s.samePlugin(ctx, name, id)
		if err != nil {
			// After the scenario, so that this step's time is the check's;
			// the notes still go to this step.
			st := s.current
			s.onCleanup(func(ctx context.Context) error {
				s.current = st
				defer func() { s.current = nil }()
				s.afterLoss(ctx, name, id, taskID, installed)
				return nil
			})
		}
		return err
	})
	var back time.Time
	s.step("task RUNNING again, record gone", func(ctx context.Context) error {
		start := time.Now()
		err := poll(ctx, "the swarm manager, the task RUNNING and the record gone", func(ctx context.Context) (bool, string, error) {
			if err := s.samePlugin(ctx, name, id); err != nil {
				return false, "", err
			}
			info, err := s.d.Client.Info(ctx)
			if err != nil {
				return false, "", err
			}
			if sw := info.Swarm; sw.LocalNodeState != swarm.LocalNodeStateActive || !sw.ControlAvailable {
				return false, fmt.Sprintf("swarm %s, manager %v, error %q", sw.LocalNodeState, sw.ControlAvailable, sw.Error), nil
			}
			_, recErr := os.Stat(s.d.keptRecord())
			st := s.observe(ctx, "")
			state := fmt.Sprintf("record present %v; %s", recErr == nil, st)
			for _, t := range st.tasks {
				if t.ID == taskID && ended(t.Status.State) {
					return false, state, fmt.Errorf("the task from before the restart ended %s", t.Status.State)
				}
			}
			t := st.newestTask()
			running := t != nil && t.DesiredState == swarm.TaskStateRunning && t.Status.State == swarm.TaskStateRunning
			return st.err == nil && errors.Is(recErr, os.ErrNotExist) && running, state, nil
		})
		if err != nil {
			return err
		}
		back = time.Now()
		s.notef("%.1f s after the API answered", back.Sub(start).Seconds())
		for _, line := range s.logMessages("kept across the restart", "plugin removed") {
			s.notef("dockerd: %s", line)
		}
		return nil
	})
	s.step("stays enabled and RUNNING", func(ctx context.Context) error {
		return s.stable(ctx, name, id, 2*time.Second)
	})
	s.step("the task from before resumes", func(ctx context.Context) error {
		st := s.observe(ctx, name)
		var seen []string
		for _, t := range st.tasks {
			seen = append(seen, fmt.Sprintf("%.10s %s/%s", t.ID, t.Status.State, t.DesiredState))
		}
		s.notef("tasks after the restart, newest first: %s (before: %.10s)", strings.Join(seen, ", "), taskID)
		if t := st.newestTask(); t == nil || t.ID != taskID {
			return fmt.Errorf("the RUNNING task is not %.10s, the one from before the restart: %s", taskID, st)
		}
		return nil
	})
	s.step("no pull during the restart", func(ctx context.Context) error {
		if now := s.reg.pulls(); now != installed {
			return fmt.Errorf("the registry got %v since the install", now.minus(installed))
		}
		return nil
	})
	s.step("service rm removes the plugin", func(ctx context.Context) error {
		if err := s.removeService(ctx); err != nil {
			return err
		}
		return s.removedForGood(ctx, name, id)
	})
}

// afterLoss records what the daemon does after a restart that lost the
// plugin (id, used by the task taskID), for the notes under the table: per
// issue 16, the task from before the restart resumes and fails, and a new
// task pulls the plugin again, with a new ID.
func (s *scenarioRun) afterLoss(ctx context.Context, name, id, taskID string, installed pulls) {
	start := time.Now()
	var last observed
	err := poll(ctx, "the plugin installed again with a RUNNING task", func(ctx context.Context) (bool, string, error) {
		last = s.observe(ctx, name)
		t := last.newestTask()
		return last.plugin != nil && last.plugin.Enabled && t != nil && t.Status.State == swarm.TaskStateRunning, last.String(), nil
	})
	for _, t := range last.tasks {
		if t.ID == taskID {
			s.notef("then the task from before the restart is %s/%s, error %q", t.Status.State, t.DesiredState, t.Status.Err)
		}
	}
	if err != nil {
		s.notef("then: %v", err)
		return
	}
	s.notef("then, %.1f s later: plugin %.12s (was %.12s) enabled, task %.10s RUNNING (was %.10s); the registry got %v since the install",
		time.Since(start).Seconds(), last.plugin.ID, id, last.newestTask().ID, taskID, s.reg.pulls().minus(installed))
}

// leaveRemovesPlugin is (g), issue 16: leaving the swarm (the fork calls no
// plugin.ShuttingDown for it) removes the plugin as before, and keeps no
// record of it. The daemon then makes a new one-node swarm, as the next
// scenario expects.
func leaveRemovesPlugin(s *scenarioRun) {
	const name = "vol-g"
	var id string
	s.step("create", func(ctx context.Context) error {
		if err := s.createService(ctx, runtime.PluginSpec{Name: name, Remote: s.plugins.v1}); err != nil {
			return err
		}
		if err := s.waitPlugin(ctx, name, pluginWant{enabled: true}); err != nil {
			return err
		}
		p, err := s.inspect(ctx, name)
		if err != nil {
			return err
		}
		id = p.ID
		return nil
	})
	s.step("swarm leave --force removes the plugin", func(ctx context.Context) error {
		if err := s.d.Client.SwarmLeave(ctx, true); err != nil {
			return err
		}
		s.svcID = "" // gone with the swarm: observe asks for the plugin only
		return s.removedForGood(ctx, name, id)
	})
	s.step("swarm init again", func(ctx context.Context) error {
		return s.d.reinitSwarm(ctx)
	})
}

// samePlugin checks that the plugin called name is installed, has the ID
// id and is enabled.
func (s *scenarioRun) samePlugin(ctx context.Context, name, id string) error {
	p, err := s.inspect(ctx, name)
	switch {
	case cerrdefs.IsNotFound(err):
		return fmt.Errorf("plugin %s is not installed", name)
	case err != nil:
		return err
	case p.ID != id:
		return fmt.Errorf("plugin %s has the ID %.12s, not %.12s: it was installed again", name, p.ID, id)
	case !p.Enabled:
		return fmt.Errorf("plugin %s (%.12s) is disabled", name, id)
	}
	return nil
}

// logMessages returns the lines of dockerd's log since the scenario began
// whose message holds one of msgs, without their time.
func (s *scenarioRun) logMessages(msgs ...string) []string {
	return s.d.logMessages(s.logStart, msgs...)
}

func (p pulls) minus(q pulls) pulls {
	return pulls{manifests: p.manifests - q.manifests, blobs: p.blobs - q.blobs}
}
