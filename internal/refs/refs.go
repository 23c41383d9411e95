// Package refs owns the process-wide bookkeeping that every plugin
// Controller of a process shares: which task holds a reference on which
// plugin (Holders), the locks that serialise the steps changing a plugin
// (Locks), and the key both go by, a plugin's name as moby's Manager stores
// it (Key). The controller (package plugin) calls it from its steps, and
// the restart-safety guard (package restart) when it removes a plugin kept
// across a restart. Everything here is safe for concurrent use.
package refs

import (
	"context"
	"strconv"
	"sync"
	"sync/atomic"

	"github.com/distribution/reference"
	v2 "github.com/docker/docker/plugin/v2"
)

// Key returns name as the Manager stores it ("vol:latest" for "vol" or
// "docker.io/library/vol"), or name itself if it is not a valid reference.
func Key(name string) string {
	ref, err := reference.ParseNormalizedNamed(name)
	if err != nil {
		return name
	}
	return reference.FamiliarString(reference.TagNameOnly(ref))
}

// Lock and Unlock take and release the holder table's lock, which the
// *Locked methods need held.
func (h *HolderTable) Lock()   { h.mu.Lock() }
func (h *HolderTable) Unlock() { h.mu.Unlock() }

// Holders records which tasks hold a reference on which plugin, so that
// each task holds exactly one reference however many Controllers swarmkit
// creates for it (a new one after every agent restart), and so that the
// Controller can tell this service's references from other users'. It is
// keyed by the plugin object itself, the *v2.Plugin that the Manager
// returns for a plugin on every Get and that holds its reference count, so
// it does not matter which Backend value (a wrapper per Controller, say)
// returned it. Acquire and Release on a plugin happen only under its lock (Lock,
// Unlock), which the *Locked methods need held.
var Holders = &HolderTable{tasks: make(map[holderTask]struct{})}

type HolderTable struct {
	mu    sync.Mutex
	tasks map[holderTask]struct{} // which task holds a reference on which plugin
}

type holderTask struct {
	plugin *v2.Plugin
	taskID string
}

// Count counts the tasks holding a reference on pl. It walks the table,
// which holds one entry per task of the node's plugin services; only a
// disable asks.
func (h *HolderTable) Count(pl *v2.Plugin) int {
	h.mu.Lock()
	defer h.mu.Unlock()
	n := 0
	for t := range h.tasks {
		if t.plugin == pl {
			n++
		}
	}
	return n
}

func (h *HolderTable) AcquireLocked(pl *v2.Plugin, taskID string) {
	t := holderTask{pl, taskID}
	if _, ok := h.tasks[t]; ok {
		return
	}
	h.tasks[t] = struct{}{}
	pl.Acquire()
}

func (h *HolderTable) ReleaseLocked(pl *v2.Plugin, taskID string) {
	if h.ForgetLocked(pl, taskID) {
		pl.Release()
	}
}

// ForgetLocked drops the record of taskID's reference on pl and reports
// whether there was one.
func (h *HolderTable) ForgetLocked(pl *v2.Plugin, taskID string) bool {
	if pl == nil {
		return false
	}
	t := holderTask{pl, taskID}
	if _, ok := h.tasks[t]; !ok {
		return false
	}
	delete(h.tasks, t)
	return true
}

// Locks serialise the steps that change a plugin (Prepare, Start,
// Remove, Wait's binding, and the removal of a plugin kept across a
// restart) across all the Controllers of a process, so that one task's
// disable-then-upgrade cannot interleave with another task's enable. A
// plugin's lock is chosen by its name as the Manager stores it, so "vol",
// "vol:latest" and "docker.io/library/vol" share one, and unrelated
// plugins never do. A lock exists while a step holds or waits for it. A
// Controller holds at most one of them at a time.
var Locks = &LockTable{locks: make(map[string]*keyedLock)}

// LockTable is a set of mutexes keyed by plugin name whose lock can give
// up when a context ends.
type LockTable struct {
	mu    sync.Mutex
	locks map[string]*keyedLock
}

type keyedLock struct {
	held  chan struct{} // holds one token while locked
	users int           // holders and waiters; guarded by LockTable.mu
}

// Lock takes key's lock and returns it held; the caller releases it with
// Held.Unlock, once. A free lock is always taken, even when ctx is done; a
// held one is waited for until ctx ends (never, for a context without a
// Done channel, such as context.Background()), and then Lock returns
// ctx.Err(). Taking a free lock allocates nothing once the table has
// warmed up.
func (t *LockTable) Lock(ctx context.Context, key string) (Held, error) {
	t.mu.Lock()
	l := t.locks[key]
	if l == nil {
		l = lockPool.Get().(*keyedLock)
		t.locks[key] = l
	}
	l.users++
	t.mu.Unlock()
	h := Held{t: t, key: key, l: l}
	select {
	case l.held <- struct{}{}:
		return h, nil
	default:
	}
	select {
	case l.held <- struct{}{}:
		return h, nil
	case <-ctx.Done():
		t.leave(key, l)
		return Held{}, ctx.Err()
	}
}

// Held is a lock Lock took. Its zero value holds nothing.
type Held struct {
	t   *LockTable
	key string
	l   *keyedLock
}

// Unlock releases the lock. It does nothing for the zero Held.
func (h Held) Unlock() {
	if h.l == nil {
		return
	}
	<-h.l.held
	h.t.leave(h.key, h.l)
}

// lockPool keeps the locks of keys no one holds or waits for, so that a
// lock taken and released over and over allocates nothing.
var lockPool = sync.Pool{New: func() any { return &keyedLock{held: make(chan struct{}, 1)} }}

// leave drops a holder or waiter of l, and l itself once it has none.
func (t *LockTable) leave(key string, l *keyedLock) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if l.users--; l.users == 0 {
		delete(t.locks, key)
		lockPool.Put(l)
	}
}

// HolderKey is the key of a task's reference in the holder table: its ID,
// so that every Controller swarmkit makes for a task shares the task's one
// reference. A task without an ID, which swarmkit never sends but tests
// ported from upstream's build (upstream's Controllers have no task), gets
// a key of its Controller's own: it counts once per Controller, as upstream.
func HolderKey(taskID string) string {
	if taskID != "" {
		return taskID
	}
	return "\x00untasked-" + strconv.FormatUint(untasked.Add(1), 10)
}

var untasked atomic.Uint64
