package plugintest

import (
	"context"
	"fmt"
	"sync"
	"testing"

	cerrdefs "github.com/containerd/errdefs"
	"github.com/docker/docker/api/types"
	"github.com/docker/docker/plugin"
	"gotest.tools/v3/assert"
	is "gotest.tools/v3/assert/cmp"
)

// TestConcurrentUse hammers one Backend from many goroutines, the way the
// controllers of a node share the plugin manager, so that -race can check
// that reading state through v2.Plugin's accessors never races with the
// fake's writes, and checks the invariants that must survive: reference
// counts balance, events of one plugin alternate enable and disable in
// state order, and no subscription is left behind.
func TestConcurrentUse(t *testing.T) {
	const workers, iterations = 8, 150

	b := NewBackend()
	b.AddRemote("vol", Remote{Env: []string{"DEBUG=0"}})
	b.AddRemote("vol:v2", Remote{Env: []string{"DEBUG=0"}})
	a := mustPull(t, b, "vol", "a", plugin.WithSwarmService("svc-a"))
	mustPull(t, b, "vol", "b")
	aID := a.GetID()

	all, cancelAll := b.SubscribeEvents(workers * iterations * 4)

	// A Wait-like watcher of a's state changes, reading as events come.
	watchCtx, stopWatch := context.WithCancel(context.Background())
	watched, cancelWatched := b.SubscribeEvents(1,
		plugin.EventEnable{Plugin: types.Plugin{ID: aID}}, plugin.EventDisable{Plugin: types.Plugin{ID: aID}})
	watcherDone := make(chan struct{})
	go func() {
		defer close(watcherDone)
		defer cancelWatched()
		for {
			select {
			case <-watchCtx.Done():
				return
			case ev := <-watched:
				if ev, ok := ev.(plugin.EventEnable); ok && ev.Plugin.ID != aID {
					t.Errorf("watcher got an event of %s", ev.Plugin.ID)
				}
			}
		}
	}()

	ops := []func(w int) error{
		func(int) error { return b.Enable("a", enableConfig) },
		func(int) error { return b.Disable(aID, forceDisable) },
		func(int) error { return b.Disable("a", disableConfig) },
		func(int) error { return b.Enable("b", enableConfig) },
		func(int) error { return b.Disable("b", forceDisable) },
		func(int) error {
			p, err := b.Get(aID[:6])
			if err != nil {
				return err
			}
			p.Acquire()
			_ = p.IsEnabled()
			_ = p.GetID()
			_ = p.GetRefCount()
			p.Release()
			return nil
		},
		func(int) error {
			_, _, err := b.Plugin("a")
			return err
		},
		func(int) error {
			s, err := b.Snapshot(aID)
			if err == nil && (s.SwarmServiceID != "svc-a" || s.Name != "a:latest" || s.Refs < 0) {
				err = fmt.Errorf("snapshot of a: owner %q, name %q, %d references", s.SwarmServiceID, s.Name, s.Refs)
			}
			return err
		},
		func(int) error { return b.Set("b", []string{"DEBUG=1"}) },
		func(int) error { return upgrade(t, b, "vol:v2", "b", nil) },
		func(w int) error {
			name := fmt.Sprintf("tmp%d", w)
			if err := pull(t, b, "vol", name, nil, plugin.WithSwarmService(name)); err != nil {
				return err
			}
			return b.Remove(name, forceRemove)
		},
		func(int) error {
			ch, cancel := b.SubscribeEvents(0, plugin.EventRemove{Plugin: types.Plugin{ID: aID}})
			defer cancel()
			defer cancel()
			select {
			case ev := <-ch:
				return fmt.Errorf("unexpected %T", ev)
			default:
				return nil
			}
		},
	}

	var wg sync.WaitGroup
	for w := range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range iterations {
				err := ops[(w+i)%len(ops)](w)
				if err != nil && !cerrdefs.IsConflict(err) && err.Error() != "cannot set on an active plugin, disable plugin before setting" {
					t.Errorf("worker %d, op %d: %v", w, (w+i)%len(ops), err)
				}
				_ = a.IsEnabled() // a controller polling the shared plugin
			}
		}()
	}
	wg.Wait()
	stopWatch()
	<-watcherDone
	cancelAll()

	assert.Check(t, is.Equal(a.GetRefCount(), 0))
	assert.Check(t, is.Equal(b.Subscribers(), 0))

	// Events of a strictly alternate, starting with an enable, and agree
	// with its final state.
	want := "EventEnable"
	var last string
	for ev := range all {
		switch ev := ev.(type) {
		case plugin.EventEnable:
			if ev.Plugin.ID == aID {
				assert.Check(t, is.Equal("EventEnable", want))
				want, last = "EventDisable", "EventEnable"
			}
		case plugin.EventDisable:
			if ev.Plugin.ID == aID {
				assert.Check(t, is.Equal("EventDisable", want))
				want, last = "EventEnable", "EventDisable"
			}
		}
	}
	assert.Check(t, is.Equal(a.IsEnabled(), last == "EventEnable"))
}
