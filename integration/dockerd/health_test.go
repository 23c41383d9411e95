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
	"net"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"time"

	cerrdefs "github.com/containerd/errdefs"
	"github.com/docker/docker/api/types"
	"github.com/docker/docker/api/types/events"
	"github.com/docker/docker/api/types/swarm"
	"github.com/docker/docker/api/types/swarm/runtime"
)

// Scenarios (q), (r) and (s), issue 28: readiness and liveness. The fork's
// Start returns only once the plugin answers its protocol over its socket
// (Plugin.Activate, then VolumeDriver.Capabilities), with a temporary
// error while it does not and a permanent one after the enable timeout
// (30 s); its Wait probes the plugin every 10 s (5 s timeout) and fails
// the task after 3 misses in a row; the next task's Start restarts a
// plugin so failed if it still does not answer. Stock's controller only
// enables: the Manager's own readiness check dials the socket, nothing
// more.
//
// The plugins are volplugin with a mode in /mode (see volplugin's doc),
// published as more tags of the repository of :1 and :2, so that a service moves
// between them by an upgrade in place (the plugin keeps its ID). The test
// asks the plugin itself whether it answers, over the socket moby binds
// for it on the host, as the daemon would (healthActivate): the test runs
// as root in the daemon's mount namespace.
//
// Each scenario notes the plugin's process starts it saw: the daemon's
// enable events of the plugin, and the "volplugin: started" lines the
// daemon logged from the plugin's output (one per process).

// Steps where stock fails.
const (
	stepRolledBack  = "broken release rolled back to :1"
	stepHangHealed  = "hung plugin's task fails, the next restarts it"
	stepSlowRunning = "RUNNING only once the plugin answers"
)

// Modes of the health tags; hangAfter is long enough for the create step
// to see the plugin answer first.
const (
	healthSlowFor   = 5 * time.Second
	healthHangAfter = 5 * time.Second
)

// The daemon's health check is the controller's default (the daemon's
// executor passes no option): a probe every 10 s, each given 5 s, and a
// task fails after 3 misses in a row. These mirror plugin.DefaultHealthCheck
// (the test does not import the module it builds into the forks).
const (
	daemonCheckInterval  = 10 * time.Second
	daemonCheckTimeout   = 5 * time.Second
	daemonCheckThreshold = 3
)

// healRestartDelay is (r)'s restart policy delay (swarmkit's default is
// 5 s): the pause between the failed task and the next one.
const healRestartDelay = time.Second

// healWithin bounds (r)'s wait for the heal, from the moment the test
// first gets no answer: the fork's Wait misses its first check at most an
// interval after the hang, fails the task at the third, a timeout after
// the third check began; swarmkit starts the next task after the restart
// delay, whose Start probes once more (a timeout) and then disables and
// enables the plugin (about 1.5 s); 8 s of slack on top. Measured: the
// task failed 30.8-30.9 s after the hang and the next one RUNNING 37.4-37.5
// s after it (41.3-41.5 s with swarmkit's default delay of 5 s). Stock
// never heals; its step fails when this has passed.
const healWithin = daemonCheckThreshold*daemonCheckInterval + daemonCheckTimeout + healRestartDelay + daemonCheckTimeout + 8*time.Second

// healthyFor is how long (r) and (s) watch a healthy plugin after it
// answered: longer than the check's interval, so that the fork's Wait
// probes it at least once.
const healthyFor = daemonCheckInterval + time.Second

// healthPublished are the references of volplugin's health tags, in the
// repository of :1 and :2: :never (mode never), :hang (hang-after:5) and
// :slow (slow:5).
type healthPublished struct{ never, hang, slow string }

// healthPlugins is published once per test binary, through the first
// daemon that runs one of the scenarios, to the registry every daemon
// shares.
var healthPlugins struct {
	mu sync.Mutex
	p  *healthPublished
}

// publishHealth publishes the health tags through the scenario's daemon,
// once per test binary: every create, then every push, then every remove,
// as publish does.
func (s *scenarioRun) publishHealth(ctx context.Context) (*healthPublished, error) {
	healthPlugins.mu.Lock()
	defer healthPlugins.mu.Unlock()
	if healthPlugins.p != nil {
		return healthPlugins.p, nil
	}
	repo := s.reg.Host() + "/dockerd-it/vol:"
	hp := &healthPublished{never: repo + "never", hang: repo + "hang", slow: repo + "slow"}
	defs := []struct{ ref, tag, mode string }{
		{hp.never, "never", "never"},
		{hp.hang, "hang", fmt.Sprintf("hang-after:%g", healthHangAfter.Seconds())},
		{hp.slow, "slow", fmt.Sprintf("slow:%g", healthSlowFor.Seconds())},
	}
	for _, d := range defs {
		buildCtx, err := healthPluginContext(shared.bins.plugin, d.tag, d.mode)
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
	healthPlugins.p = hp
	return hp, nil
}

// healthPluginContext is pluginContext for tag with volplugin's mode in
// /mode: config.json (volplugin's, unchanged) and rootfs/ with the static
// volplugin binary, /tag and /mode. The mode is a file rather than an env
// default of the config: an upgrade in place keeps the installed plugin's
// env, but replaces its rootfs.
func healthPluginContext(pluginBin, tag, mode string) ([]byte, error) {
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
		{"rootfs/mode", 0o644, []byte(mode + "\n")},
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

// healthPublishStep is each scenario's first step.
func (s *scenarioRun) healthPublishStep(hp **healthPublished) {
	s.step("publish :never, :hang, :slow", func(ctx context.Context) error {
		p, err := s.publishHealth(ctx)
		if err == nil {
			*hp = p
		}
		return err
	})
}

// healthAnswer is what a plugin answered to POST /Plugin.Activate.
type healthAnswer struct {
	status int
	body   string
	err    error // no answer
	took   time.Duration
}

// ok reports whether the plugin answered as an activated volume driver.
func (a healthAnswer) ok() bool {
	return a.err == nil && a.status == http.StatusOK && strings.Contains(a.body, "VolumeDriver")
}

func (a healthAnswer) String() string {
	if a.err != nil {
		return fmt.Sprintf("no answer after %.1f s: %v", a.took.Seconds(), a.err)
	}
	return fmt.Sprintf("%d %s", a.status, strings.TrimSpace(a.body))
}

// healthSocket is the plugin's socket on the host: moby keeps each
// plugin's socket directory at /run/docker/plugins/<id> (hard-coded on
// Linux: getPluginExecRoot) and binds it to /run/docker/plugins in the
// plugin's rootfs, where volplugin serves p.sock.
func healthSocket(id string) string { return filepath.Join("/run/docker/plugins", id, "p.sock") }

// healthActivate asks the plugin with the given ID POST /Plugin.Activate
// over its socket, giving it timeout to answer.
func healthActivate(ctx context.Context, id string, timeout time.Duration) healthAnswer {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	start := time.Now()
	c := &http.Client{Transport: &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			return (&net.Dialer{}).DialContext(ctx, "unix", healthSocket(id))
		},
		DisableKeepAlives: true,
	}}
	defer c.CloseIdleConnections()
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, "http://plugin/Plugin.Activate", strings.NewReader("{}"))
	if err != nil {
		return healthAnswer{err: err}
	}
	req.Header.Set("Accept", "application/vnd.docker.plugins.v1.2+json")
	resp, err := c.Do(req)
	if err != nil {
		return healthAnswer{err: err, took: time.Since(start)}
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, 1<<16))
	return healthAnswer{status: resp.StatusCode, body: string(body), err: err, took: time.Since(start)}
}

// healthSpec is the scenario's service spec with the update config uc
// and a rollback config whose monitor is as short as serviceSpec's.
func (s *scenarioRun) healthSpec(p runtime.PluginSpec, uc *swarm.UpdateConfig) swarm.ServiceSpec {
	spec := s.serviceSpec(p)
	if uc != nil {
		spec.UpdateConfig = uc
	}
	spec.RollbackConfig = &swarm.UpdateConfig{
		Parallelism:   1,
		Monitor:       200 * time.Millisecond,
		FailureAction: swarm.UpdateFailureActionPause,
	}
	return spec
}

// healthCleanup removes the service and then the plugin called name, if
// still there, before the daemon's reset: the reset lists volumes first,
// which asks every enabled volume driver, and a plugin that does not
// answer would hold each such call until its timeout.
func (s *scenarioRun) healthCleanup(name string) {
	s.onCleanup(func(ctx context.Context) error {
		if s.svcID != "" {
			if err := s.removeService(ctx); err != nil && !cerrdefs.IsNotFound(err) {
				return err
			}
		}
		if _, err := s.inspect(ctx, name); cerrdefs.IsNotFound(err) {
			return nil
		}
		if err := s.waitGone(ctx, name); err == nil {
			return nil
		}
		err := s.d.Client.PluginRemove(ctx, name, types.PluginRemoveOptions{Force: true})
		if err != nil && !cerrdefs.IsNotFound(err) {
			return err
		}
		return nil
	})
}

// healthStarts describes the plugin's process starts since since: the
// daemon's enable and disable events of it, and the volplugin start lines
// the daemon logged for it since the scenario began. It returns the
// number of enable events.
func (s *scenarioRun) healthStarts(ctx context.Context, since time.Time, id string) (int, string) {
	enables, err := s.pluginEvents(ctx, since, id, events.ActionEnable)
	if err != nil {
		return -1, err.Error()
	}
	disables, err := s.pluginEvents(ctx, since, id, events.ActionDisable)
	if err != nil {
		return -1, err.Error()
	}
	started := 0
	for _, l := range s.logMessages("volplugin: started") {
		if strings.Contains(l, id) {
			started++
		}
	}
	return len(enables), fmt.Sprintf("plugin %.12s: %d process start(s) by enable events, %d disable event(s), %d 'volplugin: started' line(s) in dockerd's log", id, len(enables), len(disables), started)
}

// brokenReleaseRollsBack is (q): a service of :1 with an update config
// that rolls back on a failed task; an update to :never, whose plugin
// binds its socket but never answers. The fork's Start retries while the
// plugin does not answer, and fails the task after the enable timeout; the
// update rolls back, and :1, upgraded in place again (the same plugin
// ID), is enabled and answers. Stock: the update completes with :never
// enabled and not answering.
func brokenReleaseRollsBack(s *scenarioRun) {
	const name = "vol-q"
	var hp *healthPublished
	s.healthPublishStep(&hp)
	s.healthCleanup(name)
	// A task of the update that fails within Monitor rolls it back; one
	// that never reached RUNNING counts whenever it fails (swarmkit's
	// updater). The rollback's own monitor is short, so that it completes
	// as soon as the task of :1 runs.
	rollback := &swarm.UpdateConfig{
		Parallelism:   1,
		Monitor:       2 * time.Second,
		FailureAction: swarm.UpdateFailureActionRollback,
	}
	var id string
	var created time.Time
	s.step("create :1 (rollback on failure)", func(ctx context.Context) error {
		created = time.Now().Round(0)
		resp, err := s.d.Client.ServiceCreate(ctx, s.healthSpec(runtime.PluginSpec{Name: name, Remote: s.plugins.v1}, rollback), swarm.ServiceCreateOptions{})
		if err != nil {
			return err
		}
		s.svcID = resp.ID
		if err := s.waitPlugin(ctx, name, pluginWant{enabled: true, remote: s.plugins.v1}); err != nil {
			return err
		}
		p, err := s.inspect(ctx, name)
		if err != nil {
			return err
		}
		id = p.ID
		a := healthActivate(ctx, id, 5*time.Second)
		s.notef("plugin %.12s answers: %s", id, a)
		if !a.ok() {
			return fmt.Errorf(":1 does not answer: %s", a)
		}
		return nil
	})
	s.step(stepRolledBack, func(ctx context.Context) error {
		svc, _, err := s.d.Client.ServiceInspectWithRaw(ctx, s.svcID, swarm.ServiceInspectOptions{})
		if err != nil {
			return err
		}
		since := time.Now().Round(0)
		spec := s.healthSpec(runtime.PluginSpec{Name: name, Remote: hp.never}, rollback)
		if _, err := s.d.Client.ServiceUpdate(ctx, s.svcID, svc.Version, spec, swarm.ServiceUpdateOptions{}); err != nil {
			return err
		}
		var waiting, failed string
		var failedAt time.Duration
		err = pollFor(ctx, 150*time.Second, "the update to :never to roll back", func(ctx context.Context) (bool, string, error) {
			st := s.observe(ctx, name)
			if st.err != nil {
				return false, st.String(), st.err
			}
			for _, t := range st.tasks {
				if t.CreatedAt.Before(since) || t.Spec.PluginSpec == nil || t.Spec.PluginSpec.Remote != hp.never {
					continue
				}
				if waiting == "" && t.Status.State == swarm.TaskStateStarting && strings.Contains(t.Status.Err, "waiting for") {
					waiting = fmt.Sprintf("task %.10s starting, %.1f s after the update: %q", t.ID, time.Since(since).Seconds(), t.Status.Err)
				}
				if failed == "" && ended(t.Status.State) && t.Status.Err != "" {
					failed, failedAt = fmt.Sprintf("task %.10s %s: %q", t.ID, t.Status.State, t.Status.Err), time.Since(since)
				}
			}
			u := st.update
			if u == nil || u.StartedAt == nil || u.StartedAt.Before(since) {
				return false, st.String(), nil
			}
			switch u.State {
			case swarm.UpdateStateRollbackCompleted:
				if !strings.Contains(failed, "Plugin.Activate") {
					return false, st.String(), fmt.Errorf("rolled back, but no task of %s failed naming the probe (%q)", hp.never, failed)
				}
				return true, st.String(), nil
			case swarm.UpdateStateCompleted:
				a := healthActivate(ctx, id, 2*time.Second)
				return false, st.String(), fmt.Errorf("the update completed with %s (seen %.1f s after the update); the plugin's answer to Plugin.Activate: %s", hp.never, time.Since(since).Seconds()-a.took.Seconds(), a)
			case swarm.UpdateStatePaused, swarm.UpdateStateRollbackPaused:
				return false, st.String(), fmt.Errorf("update %s: %s", u.State, u.Message)
			}
			return false, st.String(), nil
		})
		if waiting != "" {
			s.notef("%s", waiting)
		}
		if failed != "" {
			s.notef("%s, %.1f s after the update", failed, failedAt.Seconds())
		}
		if err != nil {
			_, starts := s.healthStarts(ctx, created, id)
			s.notef("%s", starts)
			return err
		}
		s.notef("rollback completed %.1f s after the update", time.Since(since).Seconds())
		return nil
	})
	s.step(":1 enabled and answering again", func(ctx context.Context) error {
		if err := s.waitPlugin(ctx, name, pluginWant{enabled: true, remote: s.plugins.v1}); err != nil {
			return err
		}
		if err := s.samePlugin(ctx, name, id); err != nil {
			return err
		}
		svc, _, err := s.d.Client.ServiceInspectWithRaw(ctx, s.svcID, swarm.ServiceInspectOptions{})
		if err != nil {
			return err
		}
		if p := svc.Spec.TaskTemplate.PluginSpec; p == nil || p.Remote != s.plugins.v1 {
			return fmt.Errorf("the service's spec after the rollback: %+v", p)
		}
		a := healthActivate(ctx, id, 5*time.Second)
		if !a.ok() {
			return fmt.Errorf(":1 rolled back but does not answer: %s", a)
		}
		_, starts := s.healthStarts(ctx, created, id)
		s.notef("the plugin answers: %s; %s", a, starts)
		return nil
	})
	s.removeStep("service rm", name)
}

// hangHealed is (r): a service of :hang (restart delay healRestartDelay),
// whose plugin answers for 5 s after its start and then hangs (once: a
// restarted process answers). The fork's Wait misses 3 health checks
// (every 10 s, 5 s each) and fails the task; the next task's Start finds
// the plugin still hung and restarts it (a disable and an enable of the
// same plugin), and the plugin answers again and keeps its new task
// RUNNING with no further restart through another check. Stock keeps the
// task RUNNING with the plugin hung: its step fails once healWithin has
// passed since the hang.
func hangHealed(s *scenarioRun) {
	const name = "vol-r"
	var hp *healthPublished
	s.healthPublishStep(&hp)
	s.healthCleanup(name)
	var id, first string
	var created, hung time.Time
	s.step("create :hang", func(ctx context.Context) error {
		created = time.Now().Round(0)
		spec := s.healthSpec(runtime.PluginSpec{Name: name, Remote: hp.hang}, nil)
		delay := healRestartDelay
		spec.TaskTemplate.RestartPolicy = &swarm.RestartPolicy{Condition: swarm.RestartPolicyConditionAny, Delay: &delay}
		resp, err := s.d.Client.ServiceCreate(ctx, spec, swarm.ServiceCreateOptions{})
		if err != nil {
			return err
		}
		s.svcID = resp.ID
		if err := s.waitPlugin(ctx, name, pluginWant{enabled: true, remote: hp.hang}); err != nil {
			return err
		}
		st := s.observe(ctx, name)
		if st.plugin == nil || st.newestTask() == nil {
			return fmt.Errorf("no plugin or task: %s", st)
		}
		id, first = st.plugin.ID, st.newestTask().ID
		a := healthActivate(ctx, id, 2*time.Second)
		s.notef("plugin %.12s, task %.10s; it answers: %s", id, first, a)
		if !a.ok() {
			return fmt.Errorf("the plugin does not answer before its hang: %s", a)
		}
		return nil
	})
	s.step("the plugin hangs", func(ctx context.Context) error {
		var last healthAnswer
		err := poll(ctx, "the plugin to stop answering", func(ctx context.Context) (bool, string, error) {
			last = healthActivate(ctx, id, time.Second)
			return last.err != nil && errors.Is(last.err, context.DeadlineExceeded), last.String(), nil
		})
		if err != nil {
			return err
		}
		hung = time.Now().Add(-last.took)
		st := s.observe(ctx, name)
		if t := st.newestTask(); t == nil || t.ID != first || t.Status.State != swarm.TaskStateRunning {
			return fmt.Errorf("the task is not RUNNING when the plugin hangs: %s", st)
		}
		s.notef("no answer from %.1f s after the create (%s); the task is still RUNNING", hung.Sub(created).Seconds(), last)
		return nil
	})
	var next string
	s.step(stepHangHealed, func(ctx context.Context) error {
		var failedAt time.Duration
		var last healthAnswer
		err := pollFor(ctx, (healWithin - time.Since(hung)).Round(100*time.Millisecond), "the hung plugin's task to fail and the next task to run", func(ctx context.Context) (bool, string, error) {
			st := s.observe(ctx, name)
			if st.err != nil {
				return false, st.String(), st.err
			}
			var old, newest *swarm.Task
			for i := range st.tasks {
				t := &st.tasks[i]
				switch {
				case t.ID == first:
					old = t
				case newest == nil:
					newest = t
				}
			}
			if old == nil {
				return false, st.String(), fmt.Errorf("task %.10s is gone", first)
			}
			if !ended(old.Status.State) {
				last = healthActivate(ctx, id, 500*time.Millisecond)
				return false, fmt.Sprintf("%s; the plugin: %s", st, last), nil
			}
			if failedAt == 0 {
				failedAt = time.Since(hung)
				s.notef("task %.10s %s %.1f s after the hang: %q", old.ID, old.Status.State, failedAt.Seconds(), old.Status.Err)
			}
			if old.Status.State != swarm.TaskStateFailed || !strings.Contains(old.Status.Err, "health checks") {
				return false, st.String(), fmt.Errorf("task %.10s ended %s (%q), not failed by the health check", old.ID, old.Status.State, old.Status.Err)
			}
			if newest == nil || newest.Status.State != swarm.TaskStateRunning || newest.DesiredState != swarm.TaskStateRunning {
				return false, st.String(), nil
			}
			last = healthActivate(ctx, id, 2*time.Second)
			if !last.ok() {
				return false, st.String(), fmt.Errorf("task %.10s RUNNING, but the plugin does not answer: %s", newest.ID, last)
			}
			next = newest.ID
			s.notef("task %.10s RUNNING %.1f s after the hang; the plugin answers: %s", next, time.Since(hung).Seconds(), last)
			return true, st.String(), nil
		})
		if err != nil {
			_, starts := s.healthStarts(ctx, created, id)
			s.notef("%s", starts)
			return err
		}
		if err := s.samePlugin(ctx, name, id); err != nil {
			return err
		}
		n, starts := s.healthStarts(ctx, created, id)
		s.notef("%s", starts)
		if n != 2 {
			return fmt.Errorf("want 2 process starts (the create, the restart): %s", starts)
		}
		return nil
	})
	s.step("healthy after the restart: no more restarts", func(ctx context.Context) error {
		if err := s.stable(ctx, name, id, healthyFor); err != nil {
			return err
		}
		if t := s.observe(ctx, name).newestTask(); t == nil || t.ID != next {
			return fmt.Errorf("the task RUNNING after the restart, %.10s, was replaced", next)
		}
		a := healthActivate(ctx, id, 2*time.Second)
		n, starts := s.healthStarts(ctx, created, id)
		s.notef("the plugin answers: %s; %s", a, starts)
		switch {
		case !a.ok():
			return fmt.Errorf("the restarted plugin does not answer: %s", a)
		case n != 2:
			return fmt.Errorf("want still 2 process starts: %s", starts)
		}
		return nil
	})
	s.removeStep("service rm", name)
}

// answeringFrom matches volplugin's slow-start refusal and its start line.
var answeringFrom = regexp.MustCompile(`answering from (\S+?)[",]`)

// slowStart is (s): a service of :slow, whose plugin answers 503 "starting"
// for 5 s after its start. The task turns RUNNING only once the plugin
// answers: when the test first sees it RUNNING, the plugin answers the
// test's own Plugin.Activate, the task's RUNNING status is timed after the
// moment the plugin said it would answer from, and the task was seen
// STARTING with a status that says what it waits for. No task fails, and
// the plugin is started once, through a health check of the fork's Wait
// (healthyFor).
func slowStart(s *scenarioRun) {
	const name = "vol-s"
	var hp *healthPublished
	s.healthPublishStep(&hp)
	s.healthCleanup(name)
	var id, task string
	var created time.Time
	s.step(stepSlowRunning, func(ctx context.Context) error {
		created = time.Now().Round(0)
		if err := s.createService(ctx, runtime.PluginSpec{Name: name, Remote: hp.slow}); err != nil {
			return err
		}
		var readyAt time.Time
		var refused, starting string
		err := poll(ctx, "a RUNNING task", func(ctx context.Context) (bool, string, error) {
			st := s.observe(ctx, name)
			if st.err != nil {
				return false, st.String(), st.err
			}
			for _, t := range st.tasks {
				if ended(t.Status.State) {
					return false, st.String(), fmt.Errorf("task %.10s ended %s: %q", t.ID, t.Status.State, t.Status.Err)
				}
			}
			t := st.newestTask()
			if t != nil && t.Status.State == swarm.TaskStateStarting && strings.Contains(t.Status.Err, "waiting for") && starting == "" {
				starting = fmt.Sprintf("task %.10s starting, %.1f s after the create: %q", t.ID, time.Since(created).Seconds(), t.Status.Err)
			}
			if st.plugin == nil || !st.plugin.Enabled {
				return false, st.String(), nil
			}
			id = st.plugin.ID
			a := healthActivate(ctx, id, time.Second)
			if m := answeringFrom.FindStringSubmatch(a.body + ","); a.status == http.StatusServiceUnavailable && m != nil {
				if at, err := time.Parse(time.RFC3339Nano, m[1]); err == nil {
					readyAt = at
				}
				if refused == "" {
					refused = a.String()
				}
			}
			if t == nil || t.Status.State != swarm.TaskStateRunning {
				return false, st.String(), nil
			}
			task = t.ID
			if !a.ok() {
				return false, st.String(), fmt.Errorf("task %.10s RUNNING, but the plugin does not answer: %s", t.ID, a)
			}
			if readyAt.IsZero() {
				readyAt = s.healthReadyAt(id)
			}
			if readyAt.IsZero() {
				return false, st.String(), errors.New("the plugin never said when it would answer (no 503 seen, no start line in dockerd's log)")
			}
			if starting == "" {
				return false, st.String(), fmt.Errorf("task %.10s RUNNING, but was never seen STARTING with a status that says what it waits for", t.ID)
			}
			running := t.Status.Timestamp
			s.notef("task %.10s RUNNING at +%.1f s, the plugin answering from +%.1f s (after the create)", t.ID, running.Sub(created).Seconds(), readyAt.Sub(created).Seconds())
			if running.Before(readyAt) {
				return false, st.String(), fmt.Errorf("task %.10s RUNNING at %s, %.1f s before the plugin's first answer (%s)", t.ID, running.Format(time.RFC3339Nano), readyAt.Sub(running).Seconds(), readyAt.Format(time.RFC3339Nano))
			}
			return true, st.String(), nil
		})
		if refused != "" {
			s.notef("the plugin while starting: %s", refused)
		}
		if starting != "" {
			s.notef("%s", starting)
		}
		if err != nil && id != "" {
			_, starts := s.healthStarts(ctx, created, id)
			s.notef("%s", starts)
		}
		return err
	})
	s.step("no task fails, one process start", func(ctx context.Context) error {
		if err := s.stable(ctx, name, id, healthyFor); err != nil {
			return err
		}
		st := s.observe(ctx, name)
		if len(st.tasks) != 1 || st.tasks[0].ID != task {
			return fmt.Errorf("want only task %.10s: %s", task, st)
		}
		n, starts := s.healthStarts(ctx, created, id)
		s.notef("%s", starts)
		if n != 1 {
			return fmt.Errorf("want 1 process start: %s", starts)
		}
		return nil
	})
	s.removeStep("service rm", name)
}

// healthReadyAt returns when the plugin with the given ID said, in the
// start line dockerd logged from its output, that it would answer from;
// zero if no such line.
func (s *scenarioRun) healthReadyAt(id string) time.Time {
	var at time.Time
	for _, l := range s.logMessages("volplugin: started") {
		if !strings.Contains(l, id) {
			continue
		}
		if m := answeringFrom.FindStringSubmatch(l); m != nil {
			if t, err := time.Parse(time.RFC3339Nano, m[1]); err == nil {
				at = t
			}
		}
	}
	return at
}
