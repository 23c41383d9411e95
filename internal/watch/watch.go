// Package watch subscribes a Controller's Wait to its plugin's events:
// the disable, remove and enable events of one plugin, the only ones Wait
// acts on. The Controller's Wait is its only caller.
package watch

import (
	"github.com/docker/docker/api/types"
	"github.com/docker/docker/plugin"
)

// Subscriber is the Backend's SubscribeEvents.
type Subscriber interface {
	SubscribeEvents(buffer int, events ...plugin.Event) (eventCh <-chan interface{}, cancel func())
}

// Subscribe subscribes to the disable, remove and enable events of the
// plugin id, with a buffer of 1, as upstream's Wait. A types.Plugin is
// about 700 bytes: the events are built one at a time, each in a function
// of its own, rather than three at once in one frame, so that they do not
// grow the stack of each of a node's many waiting goroutines (measured in
// bench's fan-out: upstream's Wait builds them in its own frame).
func Subscribe(b Subscriber, id string) (<-chan interface{}, func()) {
	return b.SubscribeEvents(1, disable(id), remove(id), enable(id))
}

//go:noinline
func disable(id string) plugin.Event { return plugin.EventDisable{Plugin: types.Plugin{ID: id}} }

//go:noinline
func remove(id string) plugin.Event { return plugin.EventRemove{Plugin: types.Plugin{ID: id}} }

//go:noinline
func enable(id string) plugin.Event { return plugin.EventEnable{Plugin: types.Plugin{ID: id}} }
