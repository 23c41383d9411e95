// Package restart owns restart safety: it keeps a swarm node's plugins
// installed and enabled across a daemon restart while a leave still removes
// them. swarmkit stops a node the same way for "docker swarm leave" and
// for a shutdown (the agent leaves, so every task's Remove runs); only the
// daemon knows which it is doing, and it tells package plugin's
// RestartSafe, ShuttingDown and LeftSwarm, thin entries over this package.
//
// A Guard is one node's: its record of kept plugins (package keptplugins,
// in a directory that survives a leave) and the plugin Controllers its
// executor handed out, each seen through the small Task interface that
// package plugin's Controller satisfies by an adapter, so that neither side
// reaches into the other's fields. The Controller calls Settled (Prepare),
// Keep (Remove) and Forget (Remove, Close); swarmkit's worker reaches the
// guard through the executor Wrap returns. The removal of kept plugins no
// task claims runs on a goroutine the guard owns. Everything here is safe
// for concurrent use.
package restart

import (
	"context"
	"path/filepath"
	"sync"
	"time"

	"github.com/containerd/log"
	"github.com/docker/docker/api/types/backend"
	v2 "github.com/docker/docker/plugin/v2"
	"github.com/moby/swarmkit/v2/api"
	"github.com/seed-e85c93d5/plugin/internal/keptplugins"
)

// Backend is what a guard needs of the node's plugin Backend (package
// plugin's Backend has these two methods).
type Backend interface {
	Get(name string) (*v2.Plugin, error)
	Remove(name string, config *backend.PluginRmConfig) error
}

// Task is a plugin task's Controller as a guard sees it. Its methods are
// cheap and safe for concurrent use. Each Controller is one Task value for
// its whole life (a pointer), which the guard uses as a map key.
type Task interface {
	// TaskID is the task's ID; Service its service's ID.
	TaskID() string
	Service() string
	// Name is the spec's plugin name, Key that name as the Manager stores
	// it (refs.Key).
	Name() string
	Key() string
	// BoundID is the ID of the plugin the task is bound to, "" if none.
	BoundID() string
	// Owns reports whether the task's service owns pl.
	Owns(pl *v2.Plugin) bool
	// Log logs a line of the Controller's, with its fields.
	Log(ctx context.Context, level log.Level, msg string, kv ...string)
	// Closed is closed when the Controller is closed.
	Closed() <-chan struct{}
}

// New returns the guard of the node whose record is in dir, having read the
// record (see loadRecord), and makes it dir's guard for ShuttingDown and
// LeftSwarm, in place of any earlier one, whose sweep it stops.
func New(b Backend, dir string) *Guard {
	g := &Guard{
		backend: b,
		file:    keptplugins.Open(dir),
		live:    make(map[Task]api.TaskState),
		swept:   make(chan struct{}),
		changed: make(chan struct{}),
	}
	g.pending = loadRecord(g.file)
	guards.Lock()
	old := guards.m[filepath.Clean(dir)]
	guards.m[filepath.Clean(dir)] = g
	guards.Unlock()
	if old != nil {
		old.stopSweep()
	}
	return g
}

// ShuttingDown tells dir's guard, if any, that the node stops for a daemon
// shutdown: see Guard.ShuttingDown.
func ShuttingDown(dir string) {
	if g := guardFor(dir); g != nil {
		g.shutdown()
	}
}

// LeftSwarm removes what dir's record keeps, through dir's guard if this
// process has one, else through a guard of its own for the record; it
// returns the removals' errors, joined.
func LeftSwarm(b Backend, dir string) error {
	g := guardFor(dir)
	if g == nil {
		f := keptplugins.Open(dir)
		g = &Guard{backend: b, file: f, swept: make(chan struct{}), changed: make(chan struct{})}
		g.pending = loadRecord(f)
	}
	return g.leftSwarm(b)
}

// Settled returns once a Prepare of t may look at the plugins; see
// settled.
func (g *Guard) Settled(ctx context.Context, t Task) error { return g.settled(ctx, t) }

// Keep records pl, which t's Remove is about to remove, if the node is
// shutting down, and reports whether it did; see keep.
func (g *Guard) Keep(ctx context.Context, t Task, pl *v2.Plugin) bool { return g.keep(ctx, t, pl) }

// Forget drops t: its task is no longer assigned.
func (g *Guard) Forget(t Task) { g.forget(t) }

// loadRecord reads the record of kept plugins, after removing the
// temporary files of a Save that a crash interrupted. A record it cannot
// read is never overwritten or deleted: it is set aside (see
// keptplugins.File.SetAside), logged at error with its new path, and the
// plugins it listed stay installed for a person to look at.
func loadRecord(f *keptplugins.File) []keptplugins.Plugin {
	l := log.G(context.Background()).WithField("controller", "plugin")
	if err := f.RemoveTemps(); err != nil {
		l.WithError(err).Warn("cannot remove the temporary files of an interrupted write of the kept-plugin record")
	}
	kept, err := f.Load()
	if err == nil {
		return kept
	}
	aside, aerr := f.SetAside(time.Now())
	if aerr != nil {
		l.WithError(err).WithField("error.aside", aerr.Error()).
			Error("the record of plugins kept at the last shutdown is unreadable and cannot be set aside; the plugins it lists stay installed")
		return nil
	}
	l.WithError(err).WithField("record", aside).
		Error("the record of plugins kept at the last shutdown is unreadable: set aside; the plugins it lists stay installed, remove them by hand if their services are gone")
	return nil
}

func guardFor(dir string) *Guard {
	guards.Lock()
	defer guards.Unlock()
	return guards.m[filepath.Clean(dir)]
}

// guards maps each RestartSafe directory to its node's guard.
var guards = struct {
	sync.Mutex
	m map[string]*Guard
}{m: make(map[string]*Guard)}
