//go:build linux

package dockerd_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"sort"
	"strings"
	"time"

	cerrdefs "github.com/containerd/errdefs"
	"github.com/docker/docker/api/types/filters"
	"github.com/docker/docker/api/types/swarm"
	"github.com/docker/docker/api/types/swarm/runtime"
)

// workerHost is the loopback address of the worker daemon of (h); the
// manager is on 127.0.0.1. The two daemons share the host's network
// namespace, and libnetwork's gossip binds port 7946 on the host of each
// one's swarm listen address (see JoinSwarm).
const workerHost = "127.0.0.2"

// stepWorkerRestart is the step of (h) where the plugin kept by the
// worker's shutdown must go: its service was deleted meanwhile.
const stepWorkerRestart = "worker restart removes the plugin"

// swarmNode is a daemon of a scenario's swarm and its node ID.
type swarmNode struct {
	role string // "manager" or "worker", for messages
	d    *Daemon
	id   string
}

// serviceDeletedWhileDown is (h), issue 16: a second daemon of the same
// flavor joins the scenario's daemon's swarm as a worker; a plugin service
// (global) runs on both; the worker stops (SIGTERM), and the fork records
// the plugin instead of removing it; the service is removed on the manager
// while the worker is down; when the worker starts again, the plugin goes
// (its service has no task on the node), its directory and the record with
// it. A second service with the same plugin name then runs on both nodes
// with no "plugin already exists": no orphan is left in its way. Stock
// removes the plugin at every stop, so it has no plugin to lose.
func serviceDeletedWhileDown(s *scenarioRun) {
	const name = "vol-h"
	spec := runtime.PluginSpec{Name: name, Remote: s.plugins.v1}
	manager := &swarmNode{role: "manager", d: s.d}
	worker := &swarmNode{role: "worker"}
	nodes := []*swarmNode{manager, worker}
	var workerPlugin, workerTask string // on the worker, before its stop

	s.step("worker joins the swarm", func(ctx context.Context) error {
		start := time.Now()
		w, err := newDaemon(ctx, s.d.bin)
		if w != nil {
			worker.d = w
			s.onCleanup(func(ctx context.Context) error { return s.closeWorker(ctx, worker) })
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
		s.notef("worker (dockerd pid %d, swarm %s, docker_gwbridge's bridge %s) started in %.1f s, joined and ready in %.1f s more",
			w.dockerd.pid(), w.swarmAddr, w.gwBridge, started.Seconds(), (time.Since(start) - started).Seconds())
		return nil
	})

	s.step("create: plugin enabled on both nodes", func(ctx context.Context) error {
		got, err := s.createOnNodes(ctx, spec, name, nodes)
		if err != nil {
			return err
		}
		workerPlugin, workerTask = got[worker].plugin, got[worker].task
		return nil
	})

	s.step("worker stop (SIGTERM)", func(ctx context.Context) error {
		w := worker.d
		start := time.Now()
		if err := w.Stop(); err != nil {
			return err
		}
		s.notef("dockerd exited %.1f s after SIGTERM", time.Since(start).Seconds())
		for _, line := range w.logMessages(0, "plugin kept for the node's restart", "plugin removed") {
			s.notef("worker at the shutdown: %s", line)
		}
		record, recErr := os.ReadFile(w.keptRecord())
		_, dirErr := os.Stat(w.pluginDir(workerPlugin))
		if s.d.Flavor == stock {
			if recErr == nil {
				return fmt.Errorf("stock dockerd left %s: %s", w.keptRecord(), record)
			}
			if errors.Is(dirErr, os.ErrNotExist) {
				s.notef("stock removed the plugin at the shutdown: its directory %s is gone", w.pluginDir(workerPlugin))
			} else {
				s.notef("stock left the plugin's directory %s at the shutdown (%v)", w.pluginDir(workerPlugin), dirErr)
			}
			return nil
		}
		switch {
		case recErr != nil:
			return fmt.Errorf("no record of kept plugins after the shutdown: %w", recErr)
		case !bytes.Contains(record, []byte(workerPlugin)):
			return fmt.Errorf("the record of kept plugins after the shutdown does not name plugin %s: %s", workerPlugin, record)
		case dirErr != nil:
			return fmt.Errorf("the kept plugin's directory %s: %w", w.pluginDir(workerPlugin), dirErr)
		}
		s.notef("record after the shutdown: %s", strings.Join(strings.Fields(string(record)), " "))
		return nil
	})

	s.step("service rm while the worker is down", func(ctx context.Context) error {
		if err := s.removeService(ctx); err != nil {
			return err
		}
		if err := s.waitGone(ctx, name); err != nil {
			return err
		}
		s.notef("the manager's plugin is gone; the worker's task as the manager sees it: %s", s.describeTask(ctx, worker, workerTask))
		return nil
	})

	s.step(stepWorkerRestart, func(ctx context.Context) error {
		w := worker.d
		_, offset := w.logSince(0)
		start := time.Now()
		if err := w.Start(ctx); err != nil {
			return err
		}
		started := time.Now()
		err := poll(ctx, "the worker's plugin, its directory and the record gone", func(ctx context.Context) (bool, string, error) {
			p, _, err := w.Client.PluginInspectWithRaw(ctx, name)
			var state []string
			switch {
			case err == nil:
				state = append(state, fmt.Sprintf("plugin %.12s enabled=%v", p.ID, p.Enabled))
			case !cerrdefs.IsNotFound(err):
				return false, "", err
			}
			if _, err := os.Stat(w.pluginDir(workerPlugin)); !errors.Is(err, os.ErrNotExist) {
				state = append(state, "its directory is there")
			}
			if _, err := os.Stat(w.keptRecord()); !errors.Is(err, os.ErrNotExist) {
				state = append(state, "the record is there")
			}
			return len(state) == 0, strings.Join(state, "; "), nil
		})
		if err != nil {
			return err
		}
		s.notef("dockerd start until the API answered %.1f s; plugin, directory and record gone %.1f s after",
			started.Sub(start).Seconds(), time.Since(started).Seconds())
		lines := w.logMessages(offset, "kept across the restart", "plugin removed")
		for _, line := range lines {
			s.notef("worker: %s", line)
		}
		if len(lines) == 0 {
			s.notef("the worker's log has no line about a kept or removed plugin")
		}
		if err := w.waitSwarm(ctx, false); err != nil {
			return err
		}
		if err := s.waitNodesReady(ctx, nodes); err != nil {
			return err
		}
		s.notef("then the worker's old task as the manager sees it: %s", s.describeTask(ctx, worker, workerTask))
		return nil
	})

	s.step("another service of the name runs on both nodes", func(ctx context.Context) error {
		got, err := s.createOnNodes(ctx, spec, name, nodes)
		if err != nil {
			return err
		}
		if got[worker].plugin == workerPlugin {
			return fmt.Errorf("the worker's plugin is %.12s, the one of the deleted service", workerPlugin)
		}
		// One task per node: none was rejected or failed before.
		tasks, err := s.serviceTasks(ctx)
		if err != nil {
			return err
		}
		if len(tasks) != len(nodes) {
			return fmt.Errorf("the service has %d tasks, want one per node: %s", len(tasks), describeTasks(tasks))
		}
		return nil
	})

	s.step("service rm removes the plugin on both nodes", func(ctx context.Context) error {
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
	})
}

// failedStep is the scenario's failed step, or nil.
func (s *scenarioRun) failedStep() *stepResult {
	for _, st := range s.result.steps {
		if st.err != nil {
			return st
		}
	}
	return nil
}

// onNode is a plugin and the task of the scenario's service on one node.
type onNode struct{ plugin, task string }

// createOnNodes creates the scenario's service with spec and waits until
// its plugin, called name, runs on every node (waitOnNodes), noting each
// node's plugin and task.
func (s *scenarioRun) createOnNodes(ctx context.Context, spec runtime.PluginSpec, name string, nodes []*swarmNode) (map[*swarmNode]onNode, error) {
	if err := s.createService(ctx, spec); err != nil {
		return nil, err
	}
	got, err := s.waitOnNodes(ctx, name, nodes)
	if err != nil {
		return nil, err
	}
	for _, n := range nodes {
		s.notef("%s: plugin %.12s, task %.10s", n.role, got[n].plugin, got[n].task)
	}
	return got, nil
}

// waitOnNodes waits until the plugin called name is enabled on every node
// and the service's newest task on each node is RUNNING, and returns their
// IDs. It fails at once if a task says that the plugin already exists: a
// plugin of the name left on a node that no task of the service owns.
func (s *scenarioRun) waitOnNodes(ctx context.Context, name string, nodes []*swarmNode) (map[*swarmNode]onNode, error) {
	got := map[*swarmNode]onNode{}
	err := poll(ctx, fmt.Sprintf("plugin %s enabled with a RUNNING task on %d nodes", name, len(nodes)), func(ctx context.Context) (bool, string, error) {
		tasks, err := s.serviceTasks(ctx)
		if err != nil {
			return false, "", err
		}
		state := describeTasks(tasks)
		for _, t := range tasks {
			if strings.Contains(t.Status.Err, "already exists") {
				return false, state, fmt.Errorf("task %.10s: %s", t.ID, t.Status.Err)
			}
		}
		done := true
		for _, n := range nodes {
			p, _, err := n.d.Client.PluginInspectWithRaw(ctx, name)
			switch {
			case cerrdefs.IsNotFound(err):
				state += fmt.Sprintf("; %s: no plugin", n.role)
				done = false
				continue
			case err != nil:
				return false, state, fmt.Errorf("%s: %w", n.role, err)
			}
			state += fmt.Sprintf("; %s: plugin %.12s enabled=%v", n.role, p.ID, p.Enabled)
			var newest *swarm.Task
			for i := range tasks {
				if tasks[i].NodeID == n.id {
					newest = &tasks[i]
					break
				}
			}
			if !p.Enabled || newest == nil || newest.DesiredState != swarm.TaskStateRunning || newest.Status.State != swarm.TaskStateRunning {
				done = false
				continue
			}
			got[n] = onNode{plugin: p.ID, task: newest.ID}
		}
		return done, state, nil
	})
	return got, err
}

// serviceTasks lists the plugin tasks of the scenario's service, newest
// first.
func (s *scenarioRun) serviceTasks(ctx context.Context) ([]swarm.Task, error) {
	filter := pluginRuntime()
	filter.Add("service", s.svcID)
	tasks, err := s.d.Client.TaskList(ctx, swarm.TaskListOptions{Filters: filter})
	sort.Slice(tasks, func(i, j int) bool { return tasks[i].CreatedAt.After(tasks[j].CreatedAt) })
	return tasks, err
}

// describeTasks describes tasks in one line.
func describeTasks(tasks []swarm.Task) string {
	var parts []string
	for _, t := range tasks {
		part := fmt.Sprintf("task %.10s on %.10s %s/%s", t.ID, t.NodeID, t.Status.State, t.DesiredState)
		if t.Status.Err != "" {
			part += fmt.Sprintf(" err %q", t.Status.Err)
		}
		parts = append(parts, part)
	}
	if len(parts) == 0 {
		return "no tasks"
	}
	return strings.Join(parts, "; ")
}

// describeTask says what the manager knows of the task id on node n.
func (s *scenarioRun) describeTask(ctx context.Context, n *swarmNode, id string) string {
	tasks, err := s.d.Client.TaskList(ctx, swarm.TaskListOptions{Filters: filters.NewArgs(
		filters.Arg("runtime", string(swarm.RuntimePlugin)), filters.Arg("node", n.id))})
	if err != nil {
		return err.Error()
	}
	for _, t := range tasks {
		if t.ID == id {
			return describeTasks([]swarm.Task{t})
		}
	}
	return fmt.Sprintf("task %.10s no longer listed", id)
}

// waitNodesReady waits until the manager lists every node as ready.
func (s *scenarioRun) waitNodesReady(ctx context.Context, nodes []*swarmNode) error {
	return poll(ctx, "every node ready", func(ctx context.Context) (bool, string, error) {
		list, err := s.d.Client.NodeList(ctx, swarm.NodeListOptions{})
		if err != nil {
			return false, "", err
		}
		state := map[string]swarm.NodeState{}
		var desc []string
		for _, n := range list {
			state[n.ID] = n.Status.State
			desc = append(desc, fmt.Sprintf("node %.10s %s", n.ID, n.Status.State))
		}
		for _, n := range nodes {
			if state[n.id] != swarm.NodeStateReady {
				return false, strings.Join(desc, ", "), nil
			}
		}
		return true, "", nil
	})
}

// removedFrom waits until node n has no plugin called name, then checks
// that its directory (id is its ID) and any record of kept plugins are
// gone from n's data root.
func removedFrom(ctx context.Context, n *swarmNode, name, id string) error {
	err := poll(ctx, fmt.Sprintf("plugin %s removed from the %s", name, n.role), func(ctx context.Context) (bool, string, error) {
		p, _, err := n.d.Client.PluginInspectWithRaw(ctx, name)
		switch {
		case cerrdefs.IsNotFound(err):
			return true, "", nil
		case err != nil:
			return false, "", err
		}
		return false, fmt.Sprintf("plugin %.12s enabled=%v", p.ID, p.Enabled), nil
	})
	if err != nil {
		return err
	}
	if _, err := os.Stat(n.d.pluginDir(id)); !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("%s: plugin directory %s is still there (%v)", n.role, n.d.pluginDir(id), err)
	}
	if b, err := os.ReadFile(n.d.keptRecord()); !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("%s: %s exists (%v): %s", n.role, n.d.keptRecord(), err, b)
	}
	return nil
}

// closeWorker ends the worker daemon (it leaves the swarm first, see
// Close) and removes its node from the manager's swarm, so that the
// manager's swarm is again the one-node swarm the next scenario expects.
func (s *scenarioRun) closeWorker(ctx context.Context, n *swarmNode) error {
	if failed := s.failedStep(); failed != nil {
		log, _ := n.d.logSince(0)
		if excerpt := pluginLogExcerpt(log, 15); excerpt != "" {
			failed.notes = append(failed.notes, "the worker's warnings and errors about plugins: "+strings.ReplaceAll(strings.TrimSpace(excerpt), "\n", " | "))
		}
	}
	s.countWorker(n.d)
	errs := []error{n.d.Close()}
	if n.id != "" {
		err := s.d.Client.NodeRemove(ctx, n.id, swarm.NodeRemoveOptions{Force: true})
		if err != nil && !cerrdefs.IsNotFound(err) {
			errs = append(errs, fmt.Errorf("removing the worker's node: %w", err))
		}
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("closing the worker: %w", err)
	}
	return nil
}
