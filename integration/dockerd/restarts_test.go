//go:build linux

package dockerd_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/docker/docker/api/types/events"
	"github.com/docker/docker/api/types/filters"
)

// Plugin restarts, counted in every scenario on every daemon (issue 28:
// "no healthy plugin is ever restarted in any test", and the count of
// plugin restarts across the whole run).
//
// A plugin's process is volplugin, which prints "volplugin: started" when
// it starts; dockerd logs each line of a plugin's output with the
// plugin's ID (plugin=ID). So the start lines in a daemon's log, per
// plugin ID, count the plugin's processes: every one after the first of
// an ID is a restart, whatever its cause (an upgrade, a Disabled spec and
// its undoing, the daemon's restart, the controller's health check, the
// Manager restarting a process that exited). Those the health check makes
// are the ones the fork logs as "plugin does not answer; restarting it"
// (with plugin.id=ID) before it disables and enables the plugin, and the
// fork makes them only in scenario (r) (healthRestarts). Whether the
// restarted plugin was answering is the plugin's own word: volplugin logs
// "volplugin: hanging" when it stops answering (mode hang-after), and its
// start line names its mode (never: it never answers). A health restart
// of a process that had not hung fails the scenario on a fork.
//
// The count covers the scenario and what its cleanups and the reset
// after it did, on the scenario's daemon and on any worker it started
// (counted from the worker's log before the worker is closed).

// The lines of dockerd's log that the count reads.
var (
	// volplugin's output, as dockerd logs it: msg="volplugin: ..." plugin=ID.
	pluginOutputLine = regexp.MustCompile(`msg="volplugin: (started|hanging)(?:[^"\\]|\\.)*".* plugin=([0-9a-f]{64})`)
	// The mode in volplugin's start line: mode \"never\".
	startMode = regexp.MustCompile(`mode \\"([^"\\]*)\\"`)
	// The fork's health restart: msg="plugin does not answer; restarting it" ... plugin.id=ID.
	healthRestartLine = regexp.MustCompile(`msg="` + regexp.QuoteMeta(healthRestartMsg) + `".* plugin\.id=([0-9a-f]{64})`)
)

// healthRestartMsg is what the controller logs (at warn) when Start
// restarts a plugin that does not answer.
const healthRestartMsg = "plugin does not answer; restarting it"

// processCount is what a daemon's log says about plugin processes.
type processCount struct {
	plugins  int // distinct plugin IDs with at least one process
	starts   int // processes started
	restarts int // starts after the first of the same plugin ID
	// health is the health check's restarts: the controller's restart
	// lines.
	health int
	// healthy are the health restarts of a plugin whose process had not
	// hung: each a description.
	healthy []string
	// malformed are lines that name a plugin ID but did not parse.
	malformed int
}

func (c processCount) String() string {
	return fmt.Sprintf("%d restart(s) (%d by the health check) of %d plugin(s), %d process start(s)", c.restarts, c.health, c.plugins, c.starts)
}

func (c *processCount) add(o processCount) {
	c.plugins += o.plugins
	c.starts += o.starts
	c.restarts += o.restarts
	c.health += o.health
	c.healthy = append(c.healthy, o.healthy...)
	c.malformed += o.malformed
}

// countProcesses reads a daemon's log (the part a scenario covers).
func countProcesses(log string) processCount {
	type process struct {
		mode string
		hung bool
	}
	var c processCount
	current := map[string]*process{} // by plugin ID: its newest process
	for _, line := range strings.Split(log, "\n") {
		if m := pluginOutputLine.FindStringSubmatch(line); m != nil {
			id := m[2]
			switch m[1] {
			case "started":
				if _, ok := current[id]; ok {
					c.restarts++
				} else {
					c.plugins++
				}
				c.starts++
				p := &process{}
				if mm := startMode.FindStringSubmatch(line); mm != nil {
					p.mode = mm[1]
				} else {
					c.malformed++
				}
				p.hung = p.mode == "never"
				current[id] = p
			case "hanging":
				if p := current[id]; p != nil {
					p.hung = true
				}
			}
			continue
		}
		if m := healthRestartLine.FindStringSubmatch(line); m != nil {
			c.health++
			id := m[1]
			switch p := current[id]; {
			case p == nil:
				c.healthy = append(c.healthy, fmt.Sprintf("plugin %.12s, whose process started before the scenario", id))
			case !p.hung:
				c.healthy = append(c.healthy, fmt.Sprintf("plugin %.12s (mode %q), whose process had not hung", id, p.mode))
			}
		}
	}
	return c
}

// countRestarts counts the plugin processes in the daemon's log since the
// scenario began, adds the workers' (counted before they were closed),
// and checks the count against the daemon's enable events: every enable
// starts a process, so fewer start lines than enable events mean the log
// was not read right.
func (s *scenarioRun) countRestarts(ctx context.Context, since time.Time) (processCount, error) {
	log, _ := s.d.logSince(s.logStart)
	c := countProcesses(log)
	enables, err := s.allPluginEvents(ctx, since, events.ActionEnable)
	if err != nil {
		return c, err
	}
	var errs []error
	if c.starts < enables {
		errs = append(errs, fmt.Errorf("dockerd logged %d plugin process start(s) but %d enable event(s): the harness misreads its log", c.starts, enables))
	}
	if c.malformed > 0 {
		errs = append(errs, fmt.Errorf("%d volplugin start line(s) without a mode", c.malformed))
	}
	c.add(s.result.workers)
	return c, errors.Join(errs...)
}

// countWorker adds the plugin processes of a worker daemon d (its whole
// log: it was started by the scenario) to the scenario's count; called
// just before the worker is closed.
func (s *scenarioRun) countWorker(d *Daemon) {
	log, _ := d.logSince(0)
	s.result.workers.add(countProcesses(log))
}

// allPluginEvents counts the daemon's plugin events of the given action
// since since, of any plugin.
func (s *scenarioRun) allPluginEvents(ctx context.Context, since time.Time, action events.Action) (int, error) {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	stamp := func(t time.Time) string { return fmt.Sprintf("%d.%09d", t.Unix(), t.Nanosecond()) }
	msgs, errs := s.d.Client.Events(ctx, events.ListOptions{
		Since: stamp(since),
		Until: stamp(time.Now()),
		Filters: filters.NewArgs(
			filters.Arg("type", string(events.PluginEventType)),
			filters.Arg("event", string(action)),
		),
	})
	n := 0
	for {
		select {
		case m := <-msgs:
			if m.Action == action {
				n++
			}
		case err := <-errs:
			if errors.Is(err, io.EOF) {
				return n, nil
			}
			return n, fmt.Errorf("plugin events: %w", err)
		}
	}
}

// checkRestarts is the fork's rule: the health check restarts exactly as
// many plugins as the scenario declares (healthRestarts: (r)'s one heal,
// none elsewhere), and never one whose process had not hung.
func checkRestarts(sc *scenario, c processCount) error {
	var errs []error
	for _, h := range c.healthy {
		errs = append(errs, fmt.Errorf("the health check restarted a plugin that was answering: %s", h))
	}
	if c.health != sc.healthRestarts {
		errs = append(errs, fmt.Errorf("the health check restarted %d plugin(s), want %d", c.health, sc.healthRestarts))
	}
	return errors.Join(errs...)
}

// restartTotals sums the counts of every scenario on each build, for the
// table's last row.
func restartTotals(rs []*scenarioResult) processCount {
	var total processCount
	for _, r := range rs {
		total.add(r.processes)
	}
	total.healthy = slices.Clip(total.healthy)
	return total
}

// TestCountProcesses checks the count on log lines as dockerd writes them
// (no daemon): starts and restarts per plugin ID, the health check's
// restarts, and which of them restarted a plugin that had not hung.
func TestCountProcesses(t *testing.T) {
	a, b, c := strings.Repeat("a", 64), strings.Repeat("b", 64), strings.Repeat("c", 64)
	started := func(id, tag, mode string) string {
		return `time="2026-12-04T19:07:16.1Z" level=info msg="volplugin: started: tag ` + tag + `, mode \"` + mode + `\"" plugin=` + id
	}
	restart := func(id string) string {
		return `time="2026-12-04T19:07:17.1Z" level=warning msg="` + healthRestartMsg + `" controller=plugin error="Plugin.Activate: context deadline exceeded" module=node/agent/taskmanager plugin=vol-r plugin.id=` + id + ` probe="Plugin.Activate, VolumeDriver.Capabilities"`
	}
	log := strings.Join([]string{
		started(a, "1", ""),
		`time="2026-12-04T19:07:16.2Z" level=info msg="volplugin: not this: a volume" plugin=` + a,
		started(a, "2", ""), // an upgrade: a restart, not the health check's
		started(b, "hang", "hang-after:5"),
		`time="2026-12-04T19:07:21.1Z" level=info msg="volplugin: hanging: no request is answered from now on" plugin=` + b,
		restart(b), // of a hung process: fine
		started(b, "hang", "hang-after:5"),
		restart(b), // of the new process, which had not hung
		started(c, "never", "never"),
		restart(c), // never answers: fine
		restart(strings.Repeat("d", 64)),
		`time="2026-12-04T19:07:22.1Z" level=info msg="plugin enabled" plugin=vol-a plugin.id=` + a,
	}, "\n")
	got := countProcesses(log)
	if got.plugins != 3 || got.starts != 5 || got.restarts != 2 || got.health != 4 || got.malformed != 0 {
		t.Errorf("count %+v, want 3 plugins, 5 starts, 2 restarts, 4 by the health check", got)
	}
	if len(got.healthy) != 2 || !strings.Contains(got.healthy[0], "bbbbbbbbbbbb (mode \"hang-after:5\"), whose process had not hung") || !strings.Contains(got.healthy[1], "dddddddddddd, whose process started before") {
		t.Errorf("healthy restarts %q", got.healthy)
	}
	sc := &scenario{healthRestarts: 4}
	if err := checkRestarts(sc, got); err == nil || !strings.Contains(err.Error(), "restarted a plugin that was answering") {
		t.Errorf("checkRestarts: %v", err)
	}
	if err := checkRestarts(&scenario{}, countProcesses(started(a, "1", ""))); err != nil {
		t.Errorf("checkRestarts of no restart: %v", err)
	}
	if err := checkRestarts(&scenario{healthRestarts: 1}, countProcesses(started(a, "1", ""))); err == nil {
		t.Error("checkRestarts: a missing restart passed")
	}
}
