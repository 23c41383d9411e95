// Command demo shows the plugin controller at work in a real, in-process
// swarmkit cluster: it starts one manager and some workers, each with its own
// plugin backend and executor, then deploys a global plugin service, changes
// its environment, disables it and removes it, and prints a table of every
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
// 2 on bad usage, 130 when interrupted (SIGINT or SIGTERM; the swarm is
// stopped cleanly first, and a second signal kills the demo at once).
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
	fs.SetOutput(stderr)
	workers := fs.Int("workers", 2, "`number` of worker nodes besides the manager")
	backendName := fs.String("backend", "fake", "plugin backend of every node: fake (in-memory, runs anywhere) or moby (moby's real plugin.Manager; needs root)")
	verbose := fs.Bool("v", false, "show swarmkit's logs on stderr")
	fs.Usage = func() {
		fmt.Fprintln(stderr, "usage: demo [-workers N] [-backend fake|moby] [-v]")
		fs.PrintDefaults()
	}
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0
		}
		return 2
	}
	if fs.NArg() > 0 || *workers < 0 || (*backendName != "fake" && *backendName != "moby") {
		fs.Usage()
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
	fmt.Fprintf(d.out, "Starting an in-process swarm: 1 manager + %d worker(s), plugin backend %q ...\n", workers, k.name)
	startCtx, cancel := context.WithTimeout(ctx, stepTimeout)
	d.c, err = swarmtest.Start(startCtx, swarmtest.Options{
		Workers:    workers,
		NewBackend: k.newBackend,
		Verbose:    d.verbose,
		LogOutput:  d.stderr,
	})
	cancel()
	if err != nil {
		if ctx.Err() != nil {
			return ctx.Err()
		}
		return fmt.Errorf("starting the swarm: %w", err)
	}
	fmt.Fprintf(d.out, "Swarm ready in %s: %d nodes.\n", since(total), len(d.c.Nodes()))
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
				return true, fmt.Sprintf("plugin removed from %d/%d nodes", len(s.views), len(s.views))
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
	return true, fmt.Sprintf("new task RUNNING on %d/%d nodes; plugin %s, %s everywhere", len(s.views), len(s.views), state, strings.Join(spec.Env, " "))
}

// pluginView is one node's plugin, as its backend shows it.
type pluginView struct {
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
	obj := types.Plugin{Enabled: p.IsEnabled(), PluginReference: p.PluginObj.PluginReference}
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
	return pluginView{present: true, enabled: obj.Enabled, refs: refs, ref: obj.PluginReference, env: obj.Settings.Env}
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
