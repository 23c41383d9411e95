//go:build linux

package dockerd_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"time"

	cerrdefs "github.com/containerd/errdefs"
	"github.com/docker/docker/api/types/events"
	"github.com/docker/docker/api/types/swarm"
	"github.com/docker/docker/api/types/swarm/runtime"
)

// Issue 24's restart faults, on real daemons: (j) a worker restarted after
// the managers marked it down, (j2) one restarted before, and (k) a swarm
// leave while a plugin task runs, five times in a row.

const (
	// stepWorkerKept is the step of (j) and (j2) where stock fails: it
	// removed the worker's plugin at the shutdown, so when the restarted
	// worker's API answers the plugin is missing (or pulled again under a
	// new ID).
	stepWorkerKept = "worker start: plugin kept, same ID, enabled"
	// downPatience bounds the wait for the manager to mark a stopped worker
	// down: three missed heartbeats of 5 s, measured 9–12 s after SIGTERM.
	downPatience = 60 * time.Second
	// settle is how long (j) and (j2) keep checking the worker's plugin once
	// a task of the service runs on the worker again.
	settle = 2 * time.Second
	// leaveRounds is how many times (k) leaves the swarm.
	leaveRounds = 5
)

// workerRestartPastGrace is (j): a worker of a global plugin service is
// stopped (SIGTERM) until the manager marks its node down (its task gets
// desired state SHUTDOWN), then started again. The managers give the node
// a new task of the service, with the same spec; the fork's worker keeps
// its plugin at the shutdown, has it enabled with the same ID when its API
// answers, and its new task's Prepare finds the installed manifest still
// the one the tag names, so the plugin is never disabled and no blob is
// pulled.
func workerRestartPastGrace(s *scenarioRun) { s.workerRestart("vol-j", true) }

// workerRestartWithinGrace is (j2): (j) with the worker started again right
// after its dockerd exited, before the manager marks it down, so that its
// task from before the restart is still the one meant to run.
func workerRestartWithinGrace(s *scenarioRun) { s.workerRestart("vol-j2", false) }

// workerRestart runs (j) (pastGrace) or (j2) with a plugin called name.
func (s *scenarioRun) workerRestart(name string, pastGrace bool) {
	spec := runtime.PluginSpec{Name: name, Remote: s.plugins.v1}
	manager := &swarmNode{role: "manager", d: s.d}
	worker := &swarmNode{role: "worker"}
	nodes := []*swarmNode{manager, worker}
	var beforeClose []func(context.Context) // cleanups that need the worker
	var plugin, task string                 // on the worker, before its stop
	var installed pulls                     // the registry's counts after the installs
	var sigterm time.Time

	s.joinWorkerStep(worker, nodes, &beforeClose)

	s.step("create: plugin enabled on both nodes", func(ctx context.Context) error {
		before := s.reg.pulls()
		got, err := s.createOnNodes(ctx, spec, name, nodes)
		if err != nil {
			return err
		}
		plugin, task = got[worker].plugin, got[worker].task
		installed = s.reg.pulls()
		s.notef("the two installs made %v", installed.minus(before))
		if installed.blobs == before.blobs {
			// Without this, "no blob request" would prove nothing.
			return fmt.Errorf("the registry counted no blob request for the installs (%v, then %v)", before, installed)
		}
		return nil
	})

	s.step("worker stop (SIGTERM)", func(ctx context.Context) error {
		w := worker.d
		sigterm = time.Now()
		if err := w.Stop(); err != nil {
			return err
		}
		s.notef("dockerd exited %.1f s after SIGTERM", time.Since(sigterm).Seconds())
		return s.checkWorkerKept(w, plugin)
	})

	if pastGrace {
		s.step("manager marks the worker down", func(ctx context.Context) error {
			exited := time.Now()
			err := pollFor(ctx, downPatience, "the manager to mark the worker down", func(ctx context.Context) (bool, string, error) {
				state, err := s.nodeState(ctx, worker)
				return state == swarm.NodeStateDown, fmt.Sprintf("worker node %.10s %s", worker.id, state), err
			})
			if err != nil {
				return err
			}
			s.notef("worker node down %.1f s after SIGTERM (%.1f s after dockerd exited); its task as the manager sees it: %s",
				time.Since(sigterm).Seconds(), time.Since(exited).Seconds(), s.describeTask(ctx, worker, task))
			return nil
		})
	} else {
		s.step("worker not marked down", func(ctx context.Context) error {
			state, err := s.nodeState(ctx, worker)
			if err != nil {
				return err
			}
			since := time.Since(sigterm)
			s.notef("worker node %s %.1f s after SIGTERM", state, since.Seconds())
			if state == swarm.NodeStateDown {
				return fmt.Errorf("the manager marked the worker down already, %.1f s after SIGTERM: this variant needs the worker back within the heartbeat grace", since.Seconds())
			}
			return nil
		})
	}

	var start, started time.Time // the worker's start, and when its API answered
	var logOffset int64          // the worker's log at its start
	s.step(stepWorkerKept, func(ctx context.Context) error {
		w := worker.d
		_, logOffset = w.logSince(0)
		start = time.Now()
		if err := w.Start(ctx); err != nil {
			return err
		}
		started = time.Now()
		s.notef("dockerd start until the API answered %.1f s (%.1f s after SIGTERM)", started.Sub(start).Seconds(), started.Sub(sigterm).Seconds())
		err := nodeSamePlugin(ctx, worker, name, plugin)
		if err != nil {
			// Before the worker is closed, so that this step's time is the
			// check's; the notes still go to this step.
			st := s.current
			beforeClose = append(beforeClose, func(ctx context.Context) {
				s.current = st
				defer func() { s.current = nil }()
				s.workerAfterLoss(ctx, worker, name, plugin, task, installed)
			})
		}
		return err
	})

	s.step("enabled at every poll until a task runs on the worker, and 2 s after", func(ctx context.Context) error {
		var running *swarm.Task
		var runningAt time.Time
		polls := 0
		err := pollFor(ctx, patience+settle, "a RUNNING task on the worker, with its plugin enabled at every poll", func(ctx context.Context) (bool, string, error) {
			polls++
			if err := nodeSamePlugin(ctx, worker, name, plugin); err != nil {
				return false, "", err
			}
			tasks, err := s.serviceTasks(ctx)
			if err != nil {
				return false, "", err
			}
			state := describeTasks(tasks)
			t := runningOn(tasks, worker)
			switch {
			case running == nil && t != nil:
				running, runningAt = t, time.Now()
			case running == nil:
			case t == nil || t.ID != running.ID:
				return false, state, fmt.Errorf("task %.10s is no longer the worker's RUNNING task", running.ID)
			case time.Since(runningAt) >= settle:
				return true, state, nil
			}
			return false, state, nil
		})
		if err != nil {
			return err
		}
		s.notef("task %.10s RUNNING on the worker %.1f s after its API answered; plugin %.12s enabled at each of %d polls",
			running.ID, runningAt.Sub(started).Seconds(), plugin, polls)
		if running.ID == task {
			s.notef("the task from before the restart runs again (%.10s)", task)
		} else {
			s.notef("a new task runs: %.10s (the one from before the restart: %s)", running.ID, s.describeTask(ctx, worker, task))
		}
		w := worker.d
		for _, line := range w.logMessages(logOffset, "kept across the restart", "plugin removed", "cannot check the remote",
			"plugin disabled", "plugin upgraded", "plugin pulled", "plugin env updated") {
			s.notef("worker: %s", line)
		}
		if _, err := os.Stat(w.keptRecord()); err == nil {
			s.notef("the worker's record of kept plugins is still there")
		} else if errors.Is(err, os.ErrNotExist) {
			s.notef("the worker's record of kept plugins is gone")
		}
		disables, err := s.on(w).pluginEvents(ctx, start, plugin, events.ActionDisable)
		if err != nil {
			return err
		}
		if len(disables) > 0 {
			return fmt.Errorf("the worker logged %d disable event(s) of plugin %.12s since its start", len(disables), plugin)
		}
		return nil
	})

	s.step("no blob request since the install", func(ctx context.Context) error {
		since := s.reg.pulls().minus(installed)
		s.notef("the registry got %v since the installs", since)
		if since.blobs != 0 {
			return fmt.Errorf("the registry got %v since the installs: the plugin was pulled again", since)
		}
		return nil
	})

	s.step("service rm removes the plugin on both nodes", func(ctx context.Context) error {
		return s.removeOnNodes(ctx, name, nodes)
	})
}

// joinWorkerStep is the step that starts worker, a second daemon of the
// scenario's build, and joins it to the scenario's daemon's swarm on
// workerHost, as (h) does. Its cleanup runs the functions in *beforeClose,
// then closes the worker and removes its node.
func (s *scenarioRun) joinWorkerStep(worker *swarmNode, nodes []*swarmNode, beforeClose *[]func(context.Context)) {
	s.step("worker joins the swarm", func(ctx context.Context) error {
		start := time.Now()
		w, err := newDaemon(ctx, s.d.bin)
		if w != nil {
			worker.d = w
			s.onCleanup(func(ctx context.Context) error {
				for _, fn := range *beforeClose {
					fn(ctx)
				}
				return s.closeWorker(ctx, worker)
			})
		}
		if err != nil {
			return err
		}
		if err := w.Start(ctx); err != nil {
			return err
		}
		started := time.Since(start)
		if err := w.JoinSwarm(ctx, s.d, workerHost); err != nil {
			return err
		}
		for _, n := range nodes {
			info, err := n.d.Client.Info(ctx)
			if err != nil {
				return err
			}
			n.id = info.Swarm.NodeID
		}
		if err := s.waitNodesReady(ctx, nodes); err != nil {
			return err
		}
		s.notef("worker (dockerd pid %d, swarm %s) started in %.1f s, joined and ready in %.1f s more",
			w.dockerd.pid(), w.swarmAddr, started.Seconds(), (time.Since(start) - started).Seconds())
		return nil
	})
}

// checkWorkerKept checks what the stopped worker w left of its plugin
// (ID id): the fork a record naming it and its directory; stock no record
// (the note says whether stock left the directory).
func (s *scenarioRun) checkWorkerKept(w *Daemon, id string) error {
	record, recErr := os.ReadFile(w.keptRecord())
	_, dirErr := os.Stat(w.pluginDir(id))
	if s.d.Flavor == stock {
		if recErr == nil {
			return fmt.Errorf("stock dockerd left %s: %s", w.keptRecord(), record)
		}
		if errors.Is(dirErr, os.ErrNotExist) {
			s.notef("stock removed the plugin at the shutdown: its directory is gone")
		} else {
			s.notef("stock left the plugin's directory %s at the shutdown (%v)", w.pluginDir(id), dirErr)
		}
		return nil
	}
	switch {
	case recErr != nil:
		return fmt.Errorf("no record of kept plugins after the shutdown: %w", recErr)
	case !bytes.Contains(record, []byte(id)):
		return fmt.Errorf("the record of kept plugins after the shutdown does not name plugin %s: %s", id, record)
	case dirErr != nil:
		return fmt.Errorf("the kept plugin's directory %s: %w", w.pluginDir(id), dirErr)
	}
	s.notef("the worker's record names plugin %.12s", id)
	return nil
}

// nodeState is node n's state as the scenario's daemon (the manager) sees
// it.
func (s *scenarioRun) nodeState(ctx context.Context, n *swarmNode) (swarm.NodeState, error) {
	node, _, err := s.d.Client.NodeInspectWithRaw(ctx, n.id)
	return node.Status.State, err
}

// nodeSamePlugin checks that the plugin called name on node n has the ID
// id and is enabled.
func nodeSamePlugin(ctx context.Context, n *swarmNode, name, id string) error {
	p, _, err := n.d.Client.PluginInspectWithRaw(ctx, name)
	switch {
	case cerrdefs.IsNotFound(err):
		return fmt.Errorf("%s: plugin %s is not installed", n.role, name)
	case err != nil:
		return fmt.Errorf("%s: %w", n.role, err)
	case p.ID != id:
		return fmt.Errorf("%s: plugin %s has the ID %.12s, not %.12s: it was installed again", n.role, name, p.ID, id)
	case !p.Enabled:
		return fmt.Errorf("%s: plugin %s (%.12s) is disabled", n.role, name, id)
	}
	return nil
}

// runningOn returns the newest of tasks on node n that is meant to run and
// runs, or nil.
func runningOn(tasks []swarm.Task, n *swarmNode) *swarm.Task {
	for i, t := range tasks {
		if t.NodeID == n.id && t.DesiredState == swarm.TaskStateRunning && t.Status.State == swarm.TaskStateRunning {
			return &tasks[i]
		}
	}
	return nil
}

// workerAfterLoss notes what happens on the worker after its restart lost
// the plugin (id, used by the task task): as in (f), stock's worker pulls
// it again under a new ID for a task of the service.
func (s *scenarioRun) workerAfterLoss(ctx context.Context, worker *swarmNode, name, id, task string, installed pulls) {
	start := time.Now()
	var got string
	err := poll(ctx, "the worker's plugin installed again with a RUNNING task", func(ctx context.Context) (bool, string, error) {
		tasks, err := s.serviceTasks(ctx)
		if err != nil {
			return false, "", err
		}
		state := describeTasks(tasks)
		p, _, err := worker.d.Client.PluginInspectWithRaw(ctx, name)
		if err != nil {
			return false, state + "; worker: " + err.Error(), nil
		}
		got = fmt.Sprintf("plugin %.12s (was %.12s) enabled=%v", p.ID, id, p.Enabled)
		t := runningOn(tasks, worker)
		if t != nil {
			got += fmt.Sprintf(", task %.10s RUNNING (was %.10s)", t.ID, task)
		}
		return p.Enabled && t != nil, state + "; worker: " + got, nil
	})
	if err != nil {
		s.notef("then: %v", err)
		return
	}
	s.notef("then, %.1f s later: %s; the old task: %s; the registry got %v since the installs",
		time.Since(start).Seconds(), got, s.describeTask(ctx, worker, task), s.reg.pulls().minus(installed))
}

// removeOnNodes removes the scenario's service and waits until the plugin
// called name, its directory and any record are gone from every node.
func (s *scenarioRun) removeOnNodes(ctx context.Context, name string, nodes []*swarmNode) error {
	ids := map[*swarmNode]string{}
	for _, n := range nodes {
		p, _, err := n.d.Client.PluginInspectWithRaw(ctx, name)
		if err != nil {
			return fmt.Errorf("%s: %w", n.role, err)
		}
		ids[n] = p.ID
	}
	if err := s.removeService(ctx); err != nil {
		return err
	}
	for _, n := range nodes {
		if err := removedFrom(ctx, n, name, ids[n]); err != nil {
			return err
		}
	}
	return nil
}

// on returns a copy of s that drives the daemon d instead, for the
// helpers that ask s.d (its steps and notes are s's).
func (s *scenarioRun) on(d *Daemon) *scenarioRun {
	c := *s
	c.d = d
	return &c
}

// leaveWithTaskRunning is (k): leaveRounds times, a plugin service runs
// on the daemon, which leaves the swarm by force while the task runs (the
// leave cancels the agent's context early, and the task's Remove must
// still remove the plugin); the plugin, its directory and any record must
// be gone; then the daemon makes a new one-node swarm.
func leaveWithTaskRunning(s *scenarioRun) {
	const name = "vol-k"
	for round := 1; round <= leaveRounds; round++ {
		s.step(fmt.Sprintf("round %d: create, leave, removed, init again", round), func(ctx context.Context) error {
			start := time.Now()
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
			id, task := st.plugin.ID, st.newestTask().ID
			created := time.Now()
			if err := s.d.Client.SwarmLeave(ctx, true); err != nil {
				return err
			}
			s.svcID = "" // gone with the swarm: observe asks for the plugin only
			if err := s.removedForGood(ctx, name, id); err != nil {
				return err
			}
			removed := time.Now()
			if err := s.d.reinitSwarm(ctx); err != nil {
				return err
			}
			s.notef("plugin %.12s, task %.10s RUNNING after %.1f s; leave until plugin, directory and record gone %.1f s; swarm init again %.1f s",
				id, task, created.Sub(start).Seconds(), removed.Sub(created).Seconds(), time.Since(removed).Seconds())
			return nil
		})
	}
}
