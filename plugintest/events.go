package plugintest

import (
	"context"
	"slices"
	"sync"

	"github.com/docker/docker/plugin"
)

// matches reports whether the manager would deliver observed to a
// subscriber watching watch. It re-implements moby's unexported
// plugin.Event.matches methods (plugin/events.go) and the topic function of
// Manager.SubscribeEvents:
//
//   - EventCreate matches any EventCreate when its Interfaces are empty, else
//     one whose plugin config implements one of those capabilities;
//   - EventEnable, EventDisable and EventRemove match the event of the same
//     type for the plugin with the same ID;
//   - a nil watch list matches everything, a non-nil empty one nothing.
func matches(watch []plugin.Event, observed plugin.Event) bool {
	for _, w := range watch {
		switch w := w.(type) {
		case plugin.EventCreate:
			if matchCreate(w, observed) {
				return true
			}
		case *plugin.EventCreate:
			if matchCreate(*w, observed) {
				return true
			}
		case plugin.EventEnable:
			if o, ok := observed.(plugin.EventEnable); ok && o.Plugin.ID == w.Plugin.ID {
				return true
			}
		case *plugin.EventEnable:
			if o, ok := observed.(plugin.EventEnable); ok && o.Plugin.ID == w.Plugin.ID {
				return true
			}
		case plugin.EventDisable:
			if o, ok := observed.(plugin.EventDisable); ok && o.Plugin.ID == w.Plugin.ID {
				return true
			}
		case *plugin.EventDisable:
			if o, ok := observed.(plugin.EventDisable); ok && o.Plugin.ID == w.Plugin.ID {
				return true
			}
		case plugin.EventRemove:
			if o, ok := observed.(plugin.EventRemove); ok && o.Plugin.ID == w.Plugin.ID {
				return true
			}
		case *plugin.EventRemove:
			if o, ok := observed.(plugin.EventRemove); ok && o.Plugin.ID == w.Plugin.ID {
				return true
			}
		}
	}
	return watch == nil
}

func matchCreate(w plugin.EventCreate, observed plugin.Event) bool {
	o, ok := observed.(plugin.EventCreate)
	if !ok {
		return false
	}
	if len(w.Interfaces) == 0 {
		return true
	}
	for _, typ := range o.Plugin.Config.Interface.Types {
		if w.Interfaces[typ.Capability] {
			return true
		}
	}
	return false
}

// SubscribeEvents returns a channel of the events (plugin.EventCreate,
// EventEnable, EventDisable, EventRemove) that match one of watch, or of
// every event when watch is nil, and a function that ends the subscription
// and closes the channel. The channel has the given buffer; as in moby,
// whose publisher sends without waiting, an event that finds the buffer
// full is dropped for that subscriber, so publishing never blocks. Each
// event carries a deep copy of the plugin object as it was right after the
// change. cancel may be called any number of times, from any goroutine.
//
// Part of plugin.Backend; safe for concurrent use.
func (b *Backend) SubscribeEvents(buffer int, watch ...plugin.Event) (eventCh <-chan interface{}, cancel func()) {
	events := slices.Clone(watch) // keeps nil and empty apart, see matches
	topic := func(v interface{}) bool { return matches(events, v.(plugin.Event)) }
	ch := b.publisher.SubscribeTopicWithBuffer(topic, buffer)
	b.subscribed(+1)

	var once sync.Once
	cancel = func() {
		once.Do(func() {
			b.publisher.Evict(ch)
			b.subscribed(-1)
		})
	}
	b.record(Call{Method: "SubscribeEvents", Events: events})
	return ch, cancel
}

// subscribed adds delta to the count of active subscriptions and wakes up
// the goroutines in WaitSubscribers.
func (b *Backend) subscribed(delta int) {
	b.subMu.Lock()
	defer b.subMu.Unlock()
	b.subs += delta
	close(b.subChanged)
	b.subChanged = make(chan struct{})
}

// Subscribers returns the number of active subscriptions: those made by
// SubscribeEvents and not yet cancelled. Safe for concurrent use.
func (b *Backend) Subscribers() int {
	b.subMu.Lock()
	defer b.subMu.Unlock()
	return b.subs
}

// WaitSubscribers blocks until at least n subscriptions are active, or ctx
// is done, in which case it returns ctx.Err(). It lets a test wait for the
// code under test to subscribe (e.g. a controller's Wait) before it causes
// an event. It wakes up on each subscribe and cancel; it does not poll.
// Safe for concurrent use.
func (b *Backend) WaitSubscribers(ctx context.Context, n int) error {
	for {
		b.subMu.Lock()
		subs, changed := b.subs, b.subChanged
		b.subMu.Unlock()
		if subs >= n {
			return nil
		}
		select {
		case <-changed:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

// publish sends ev to the subscribers. Call it with b.mu held, so events
// reach subscribers in the order of the state changes; moby's publisher
// never blocks, so this cannot deadlock.
func (b *Backend) publish(ev plugin.Event) {
	b.publisher.Publish(ev)
}
