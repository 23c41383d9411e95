// Command demo shows the plugin controller at work in a real, in-process
// swarmkit cluster: it starts one manager and some workers, each with its own
// plugin backend and executor, then deploys a global plugin service, changes
// its environment, restarts a node the way a daemon restarts (the plugin
// stays installed with its ID and the task resumes, without a pull),
// disables the plugin and removes the service, and prints a table of every
// node's task and plugin state each time that state changes, then a summary.
//
//	go run ./cmd/demo [-workers N] [-backend fake|moby] [-v]
//
// The fake backend (the default) is package plugintest's in-memory plugin
// manager and runs anywhere. The moby backend is moby's real plugin.Manager,
// pulling from an in-process registry with a fake plugin executor; it needs
// root with CAP_SYS_ADMIN, and the demo says so and exits 1 when it is
// missing. -v shows swarmkit's logs on stderr.
//
// Exit status: 0 when every step reached its expected state, 1 on failure,
// 2 on bad usage (a line saying what is wrong, then the usage), 130 when
// interrupted (SIGINT or SIGTERM; the swarm is stopped cleanly first, and a
// second signal kills the demo at once).
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"reflect"
	"slices"
	"strings"
	"syscall"
	"text/tabwriter"
	"time"

	cerrdefs "github.com/containerd/errdefs"
	"github.com/docker/docker/api/types"
	"github.com/docker/docker/api/types/swarm/runtime"
	"github.com/moby/swarmkit/v2/api"
	"github.com/sirupsen/logrus"

	"github.com/seed-e85c93d5/plugin"
	"github.com/seed-e85c93d5/plugin/internal/swarmtest"
	"github.com/seed-e85c93d5/plugin/plugintest"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	go func() {
		<-ctx.Done()
		stop() // a second signal kills the demo at once
	}()
	code := run(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	os.Exit(code)
}

const (
	pluginName  = "vol"
	serviceName = "vol"
	stepTimeout = 30 * time.Second
	// settleTime is how long the state loop lets a burst of changes (a
	// task moving through several states within milliseconds) settle
	// before printing one table for them.
	settleTime = 40 * time.Millisecond
)

// run is the demo; it returns the exit status.
func run(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("demo", flag.ContinueOnError)
	workers := fs.Int("workers", 2, "`number` of worker nodes besides the manager")
	backendName := fs.String("backend", "fake", "plugin backend of every node: fake (in-memory, runs anywhere) or moby (moby's real plugin.Manager; needs root)")
	verbose := fs.Bool("v", false, "show swarmkit's logs on stderr")
	// Parse reports nothing itself: run says what is wrong, then the usage.
	fs.SetOutput(io.Discard)
	fs.Usage = func() {}
	usage := func() {
		fmt.Fprintln(stderr, "usage: demo [-workers N] [-backend fake|moby] [-v]")
		fs.SetOutput(stderr)
		fs.PrintDefaults()
	}
	var problems []string
	switch err := fs.Parse(args); {
	case errors.Is(err, flag.ErrHelp):
		usage()
		return 0
	case err != nil:
		problems = []string{err.Error()}
	default:
		problems = badUsage(*workers, *backendName, fs.Args())
	}
	if len(problems) > 0 {
		for _, p := range problems {
			fmt.Fprintf(stderr, "demo: %s\n", p)
		}
		usage()
		return 2
	}
	if !*verbose {
		logrus.SetOutput(io.Discard)
	}

	d := &demo{out: stdout, verbose: *verbose, stderr: stderr}
	err := d.run(ctx, *workers, *backendName)
	switch {
	case err == nil:
		return 0
	case ctx.Err() != nil:
		fmt.Fprintln(stderr, "demo: interrupted; the swarm was stopped")
		return 130
	default:
		fmt.Fprintf(stderr, "demo: %v\n", err)
		return 1
	}
}

// badUsage returns what is wrong with the parsed flags and arguments, one
// sentence each; none when they are usable.
func badUsage(workers int, backendName string, args []string) []string {
	var problems []string
	if workers < 0 {
		problems = append(problems, fmt.Sprintf("-workers must be 0 or more, got %d", workers))
	}
	if backendName != "fake" && backendName != "moby" {
		problems = append(problems, fmt.Sprintf("-backend must be fake or moby, got %q", backendName))
	}
	switch len(args) {
	case 0:
	case 1:
		problems = append(problems, fmt.Sprintf("unexpected argument %q: the demo takes flags only", args[0]))
	default:
		quoted := make([]string, len(args))
		for i, a := range args {
			quoted[i] = fmt.Sprintf("%q", a)
		}
		problems = append(problems, fmt.Sprintf("unexpected arguments %s: the demo takes flags only", strings.Join(quoted, " ")))
	}
	return problems
}

// count returns n and noun, in the plural unless n is 1: "1 node",
// "2 nodes", "0 workers".
func count(n int, noun string) string {
	if n == 1 {
		return "1 " + noun
	}
	return fmt.Sprintf("%d %ss", n, noun)
}

// kit is a kind of plugin backend: where the plugin comes from and how each
// node gets its backend.
type kit struct {
	name       string
	remote     string // the plugin's image reference
	newBackend func(hostname string) (plugin.Backend, error)
	close      func() // releases what the kit and its backends hold
}

type demo struct {
	out     io.Writer
	stderr  io.Writer
	verbose bool

	c       *swarmtest.Cluster
	remote  string
	service string        // the service's ID, once created
	poke    chan struct{} // something may have changed
	start   time.Time     // of the current step
	last    string        // the table last printed
}

// step is one stage of the demo: an action on the service and the state that
// ends it.
type step struct {
	name   string // for the summary
	title  string
	action func(ctx context.Context) error
	// done reports whether the snapshot shows the step complete, and a
	// one-line result.
	done func(s snapshot) (bool, string)
	// check, if set, fails the step at once on a snapshot that must never
	// happen during it.
	check func(s snapshot) error
}

type result struct {
	name    string
	elapsed time.Duration
	outcome string
}

func (d *demo) run(ctx context.Context, workers int, backendName string) (retErr error) {
	var k *kit
	var err error
	switch backendName {
	case "moby":
		k, err = mobyKit(ctx)
	default:
		k = fakeKit()
	}
	if err != nil {
		return err
	}
	defer k.close()
	d.remote = k.remote

	total := time.Now()
	fmt.Fprintf(d.out, "Starting an in-process swarm: 1 manager + %s, plugin backend %q ...\n", count(workers, "worker"), k.name)
	startCtx, cancel := context.WithTimeout(ctx, stepTimeout)
	d.c, err = swarmtest.Start(startCtx, swarmtest.Options{
		Workers:    workers,
		NewBackend: k.newBackend,
		// Every node's executor is plugin.RestartSafe, as in a daemon
		// with integration/dockerd/daemon-v28.3.0.patch.
		RestartSafe: true,
		Verbose:     d.verbose,
		LogOutput:   d.stderr,
	})
	cancel()
	if err != nil {
		if ctx.Err() != nil {
			return ctx.Err()
		}
		return fmt.Errorf("starting the swarm: %w", err)
	}
	fmt.Fprintf(d.out, "Swarm ready in %s: %s.\n", since(total), count(len(d.c.Nodes()), "node"))
	defer func() {
		if ctx.Err() != nil {
			fmt.Fprintln(d.out, "\nInterrupted: stopping the swarm ...")
		}
		t := time.Now()
		stopCtx, cancel := context.WithTimeout(context.Background(), stepTimeout)
		defer cancel()
		if err := d.c.Stop(stopCtx); err != nil {
			retErr = errors.Join(retErr, err)
			return
		}
		fmt.Fprintf(d.out, "Swarm stopped in %s. Total %s.\n", since(t), since(total))
	}()

	// Wake the state loop on every task change and every plugin event.
	watchCtx, stopWatching := context.WithCancel(ctx)
	defer stopWatching()
	d.poke = make(chan struct{}, 1)
	changed, err := d.c.WatchTasks(watchCtx, "")
	if err != nil {
		return err
	}
	go func() {
		for range changed {
			d.wake()
		}
	}()
	for _, n := range d.c.Nodes() {
		events, unsubscribe := n.Backend.SubscribeEvents(64)
		defer unsubscribe()
		go func() {
			for range events {
				d.wake()
			}
		}()
	}

	spec := runtime.PluginSpec{Name: pluginName, Remote: d.remote, Env: []string{"DEBUG=1"}}
	steps := []step{
		{
			name:  "deploy",
			title: fmt.Sprintf("Deploy: create global plugin service %q (remote %s, env DEBUG=1)", serviceName, d.remote),
			action: func(ctx context.Context) (err error) {
				d.service, err = d.c.CreatePluginService(ctx, serviceName, spec)
				return err
			},
			done: func(s snapshot) (bool, string) { return d.converged(s, spec) },
		},
		{
			name:  "env update",
			title: "Update: change the plugin's env to DEBUG=2",
			action: func(ctx context.Context) error {
				spec.Env = []string{"DEBUG=2"}
				return d.c.UpdateService(ctx, d.service, spec)
			},
			done: func(s snapshot) (bool, string) { return d.converged(s, spec) },
		},
		d.restartStep(&spec),
		{
			name:  "disable",
			title: "Update: disable the plugin (Disabled=true)",
			action: func(ctx context.Context) error {
				spec.Disabled = true
				return d.c.UpdateService(ctx, d.service, spec)
			},
			done: func(s snapshot) (bool, string) { return d.converged(s, spec) },
		},
		{
			name:   "remove",
			title:  fmt.Sprintf("Remove the service %q", serviceName),
			action: func(ctx context.Context) error { return d.c.RemoveService(ctx, d.service) },
			done: func(s snapshot) (bool, string) {
				for _, v := range s.views {
					if v.present || v.err != nil {
						return false, ""
					}
				}
				return true, fmt.Sprintf("plugin removed from %d/%s", len(s.views), count(len(s.views), "node"))
			},
		},
	}

	var results []result
	for i, st := range steps {
		r, err := d.runStep(ctx, i+1, st)
		if err != nil {
			return err
		}
		results = append(results, r)
	}

	fmt.Fprintln(d.out, "\n== Summary")
	tw := tabwriter.NewWriter(d.out, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "STEP\tTIME\tRESULT")
	for i, r := range results {
		fmt.Fprintf(tw, "%d. %s\t%s\t%s\n", i+1, r.name, r.elapsed.Round(10*time.Millisecond), r.outcome)
	}
	tw.Flush()
	fmt.Fprintf(d.out, "Final state: plugin %s removed from every node.\n", pluginName)
	return nil
}

// runStep runs one step: its action, then the state loop until the step is
// done, printing the table whenever it changes.
func (d *demo) runStep(ctx context.Context, n int, st step) (result, error) {
	fmt.Fprintf(d.out, "\n== %d. %s\n", n, st.title)
	d.start = time.Now()
	ctx, cancel := context.WithTimeout(ctx, stepTimeout)
	defer cancel()
	if err := st.action(ctx); err != nil {
		return result{}, fmt.Errorf("step %d: %w", n, err)
	}
	// A fallback tick: a reference count can change without any event.
	tick := time.NewTicker(250 * time.Millisecond)
	defer tick.Stop()
	for {
		s, err := d.snapshot(ctx)
		if err == nil {
			d.print(s)
			if st.check != nil {
				if err := st.check(s); err != nil {
					return result{}, fmt.Errorf("step %d (%s): %w", n, st.title, err)
				}
			}
			if ok, outcome := st.done(s); ok {
				elapsed := time.Since(d.start)
				fmt.Fprintf(d.out, "-> done in %s: %s\n", elapsed.Round(10*time.Millisecond), outcome)
				return result{name: st.name, elapsed: elapsed, outcome: outcome}, nil
			}
		}
		select {
		case <-d.poke:
			// Let a burst of changes settle into one table.
			settle := time.NewTimer(settleTime)
			select {
			case <-settle.C:
			case <-ctx.Done():
				settle.Stop()
			}
		case <-tick.C:
		case <-ctx.Done():
			if err == nil {
				err = ctx.Err()
			}
			return result{}, fmt.Errorf("step %d (%s) did not complete within %s: %w", n, st.title, stepTimeout, err)
		}
	}
}

func (d *demo) wake() {
	select {
	case d.poke <- struct{}{}:
	default:
	}
}

// converged reports whether every node runs a task of spec and has the
// plugin in spec's state.
func (d *demo) converged(s snapshot, spec runtime.PluginSpec) (bool, string) {
	running := swarmtest.RunningOn(d.c.NodeIDs(), func(t *api.Task) bool {
		got, err := swarmtest.PluginSpecOf(t)
		return err == nil && reflect.DeepEqual(got, spec)
	})
	if !running(s.tasks) {
		return false, ""
	}
	for _, v := range s.views {
		if !v.present || v.enabled == spec.Disabled {
			return false, ""
		}
		for _, e := range spec.Env {
			if !slices.Contains(v.env, e) {
				return false, ""
			}
		}
	}
	state := "enabled"
	if spec.Disabled {
		state = "disabled"
	}
	return true, fmt.Sprintf("new task RUNNING on %d/%s; plugin %s, %s everywhere", len(s.views), count(len(s.views), "node"), state, strings.Join(spec.Env, " "))
}

// restartStep restarts the swarm's last node (a worker, or the manager of a
// swarm of one) as a daemon restarts: plugin.ShuttingDown, the node stops,
// the node starts again. Its plugin must stay installed and enabled with
// the same ID throughout, and the same task must run again, without a pull.
func (d *demo) restartStep(spec *runtime.PluginSpec) step {
	var node *swarmtest.Node
	var taskID, pluginID string
	var pullsBefore int
	lost := func(v pluginView) error {
		if !v.present || !v.enabled || v.id != pluginID {
			return fmt.Errorf("the plugin on %s was not kept: %s", node.Hostname, v)
		}
		return nil
	}
	return step{
		name:  "restart",
		title: "Restart the last node as a daemon restarts (plugin.ShuttingDown, stop, start)",
		action: func(ctx context.Context) error {
			nodes := d.c.Nodes()
			node = nodes[len(nodes)-1]
			s, err := d.snapshot(ctx)
			if err != nil {
				return err
			}
			if t := newestOn(s.tasks, node.ID()); t != nil {
				taskID = t.ID
			}
			pluginID, pullsBefore = s.views[len(nodes)-1].id, pulls(node.Backend)
			if err := node.Shutdown(ctx); err != nil {
				return err
			}
			v := inspect(node.Backend)
			fmt.Fprintf(d.out, "  %s stopped: plugin %s\n", node.Hostname, v)
			if err := lost(v); err != nil {
				return err
			}
			return node.Restart(ctx)
		},
		check: func(s snapshot) error { return lost(s.views[len(s.views)-1]) },
		done: func(s snapshot) (bool, string) {
			if ok, _ := d.converged(s, *spec); !ok {
				return false, ""
			}
			t := newestOn(s.tasks, node.ID())
			if t == nil || t.ID != taskID || s.views[len(s.views)-1].refs != 1 {
				return false, "" // the resumed task's Wait holds its reference
			}
			outcome := fmt.Sprintf("%s back: same task %s RUNNING, plugin %s kept, enabled throughout", node.Hostname, short(taskID), short(pluginID))
			if n := pulls(node.Backend); n >= 0 {
				outcome += fmt.Sprintf(", %d pulls", n-pullsBefore)
			}
			return true, outcome
		},
	}
}

// newestOn returns the newest of tasks on the node nodeID, or nil.
func newestOn(tasks []*api.Task, nodeID string) *api.Task {
	var newest *api.Task
	for _, t := range tasks {
		if t.NodeID == nodeID {
			newest = t
		}
	}
	return newest
}

// pulls counts the Pull and Upgrade calls b has answered, or -1 if b does
// not record its calls (moby's Manager).
func pulls(b plugin.Backend) int {
	r, ok := b.(interface{ Calls() []plugintest.Call })
	if !ok {
		return -1
	}
	n := 0
	for _, c := range r.Calls() {
		if c.Method == "Pull" || c.Method == "Upgrade" {
			n++
		}
	}
	return n
}

// pluginView is one node's plugin, as its backend shows it.
type pluginView struct {
	id      string
	present bool
	enabled bool
	refs    int
	ref     string
	env     []string
	err     error
}

// snapshotter is implemented by plugintest.Backend: a race-free copy.
type snapshotter interface {
	Plugin(name string) (types.Plugin, int, error)
}

func inspect(b plugin.Backend) pluginView {
	if s, ok := b.(snapshotter); ok {
		obj, refs, err := s.Plugin(pluginName)
		return view(obj, refs, err)
	}
	p, err := b.Get(pluginName)
	if err != nil {
		return view(types.Plugin{}, 0, err)
	}
	// moby's *v2.Plugin has no race-free copy; the accessors lock, and the
	// reference and env change only while the plugin is disabled.
	obj := types.Plugin{ID: p.GetID(), Enabled: p.IsEnabled(), PluginReference: p.PluginObj.PluginReference}
	obj.Settings.Env = slices.Clone(p.PluginObj.Settings.Env)
	return view(obj, p.GetRefCount(), nil)
}

func view(obj types.Plugin, refs int, err error) pluginView {
	if cerrdefs.IsNotFound(err) {
		return pluginView{}
	}
	if err != nil {
		return pluginView{err: err}
	}
	return pluginView{id: obj.ID, present: true, enabled: obj.Enabled, refs: refs, ref: obj.PluginReference, env: obj.Settings.Env}
}

func (v pluginView) String() string {
	switch {
	case v.err != nil:
		return "error: " + v.err.Error()
	case !v.present:
		return "absent"
	case v.enabled:
		return short(v.id) + " enabled"
	}
	return short(v.id) + " disabled"
}

// snapshot is the state of every node: the service's tasks and each node's
// plugin.
type snapshot struct {
	nodes []*swarmtest.Node
	tasks []*api.Task
	views []pluginView // per node, as nodes
}

func (d *demo) snapshot(ctx context.Context) (snapshot, error) {
	s := snapshot{nodes: d.c.Nodes()}
	if d.service != "" {
		tasks, err := d.c.Tasks(ctx, d.service)
		if err != nil {
			return s, err
		}
		s.tasks = tasks
	}
	for _, n := range s.nodes {
		s.views = append(s.views, inspect(n.Backend))
	}
	return s, nil
}

// print prints the table of s if it differs from the last one printed.
func (d *demo) print(s snapshot) {
	var b strings.Builder
	tw := tabwriter.NewWriter(&b, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "  NODE\tTASKS\tTASK\tDESIRED\tCURRENT\tPLUGIN\tREFS\tREFERENCE\tENV")
	for i, n := range s.nodes {
		var mine []*api.Task
		for _, t := range s.tasks {
			if t.NodeID == n.ID() {
				mine = append(mine, t)
			}
		}
		task, desired, current := "-", "-", "-"
		if len(mine) > 0 {
			t := mine[len(mine)-1] // the newest
			task, desired, current = short(t.ID), t.DesiredState.String(), t.Status.State.String()
			if t.Status.Err != "" {
				current += " (" + truncate(t.Status.Err, 48) + ")"
			}
		}
		v := s.views[i]
		state, refs, ref, env := "absent", "-", "-", "-"
		switch {
		case v.err != nil:
			state = "error: " + truncate(v.err.Error(), 40)
		case v.present:
			state = "disabled"
			if v.enabled {
				state = "enabled"
			}
			refs, ref = fmt.Sprint(v.refs), v.ref
			if len(v.env) > 0 {
				env = strings.Join(v.env, ",")
			}
		}
		fmt.Fprintf(tw, "  %s\t%d\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n", n.Hostname, len(mine), task, desired, current, state, refs, ref, env)
	}
	tw.Flush()
	table := b.String()
	if table == d.last {
		return
	}
	d.last = table
	fmt.Fprintf(d.out, "[+%s]\n%s", since(d.start), table)
}

func since(t time.Time) string {
	return time.Since(t).Round(10 * time.Millisecond).String()
}

func short(id string) string {
	if len(id) > 10 {
		return id[:10]
	}
	return id
}

func truncate(s string, n int) string {
	if len(s) > n {
		return s[:n-3] + "..."
	}
	return s
}
