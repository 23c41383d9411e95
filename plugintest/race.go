package plugintest

import (
	"encoding/json"
	"reflect"
	"sync"
	"unsafe"

	"github.com/docker/docker/api/types"
	v2 "github.com/docker/docker/plugin/v2"
)

// muOffset is the offset of v2.Plugin's unexported "mu sync.RWMutex" field,
// the lock its exported accessors (IsEnabled, GetID, GetRefCount, Set, ...)
// take. It is resolved once, when the package is initialised, and the
// package panics right then if moby's struct no longer has that field, so a
// moby upgrade that breaks the design cannot go unnoticed.
var muOffset = func() uintptr {
	f, ok := reflect.TypeOf((*v2.Plugin)(nil)).Elem().FieldByName("mu")
	if !ok || f.Type != reflect.TypeOf((*sync.RWMutex)(nil)).Elem() {
		panic("plugintest: github.com/docker/docker/plugin/v2.Plugin has no field \"mu sync.RWMutex\"; " +
			"this fake writes plugin state under that lock and must be adapted to this moby version")
	}
	return f.Offset
}()

// pluginMu returns the plugin's own lock, the one v2.Plugin's methods take.
// Every write this package makes to a published plugin's PluginObj (Enabled,
// Config, PluginReference) or to its digests happens under pluginMu(p).Lock,
// so controllers that read through IsEnabled, GetID, GetRefCount and friends
// never race with it.
func pluginMu(p *v2.Plugin) *sync.RWMutex {
	return (*sync.RWMutex)(unsafe.Add(unsafe.Pointer(p), muOffset))
}

// snapshot returns a deep copy of p.PluginObj, read under the plugin's lock.
// The copy shares no memory with the plugin (Set rewrites Settings in place
// and the config holds pointers), so callers may keep and modify it.
func snapshot(p *v2.Plugin) types.Plugin {
	return snapshotOf(p).Plugin
}

// snapshotOf returns a deep copy of p.PluginObj and p's SwarmServiceID,
// read under the plugin's lock; Refs is left 0. SwarmServiceID is written
// only by the CreateOpts of Pull, before the plugin is published, but
// reading it under the lock keeps that an implementation detail.
func snapshotOf(p *v2.Plugin) Snapshot {
	mu := pluginMu(p)
	mu.RLock()
	defer mu.RUnlock()
	return Snapshot{Plugin: deepCopy(p.PluginObj), SwarmServiceID: p.SwarmServiceID}
}

// deepCopy copies a types.Plugin through its JSON form: every field of the
// API type round-trips, nil and empty slices included, and the copy stays
// correct if moby adds fields.
func deepCopy(obj types.Plugin) types.Plugin {
	data, err := json.Marshal(obj)
	if err != nil {
		panic("plugintest: copying plugin object: " + err.Error())
	}
	var out types.Plugin
	if err := json.Unmarshal(data, &out); err != nil {
		panic("plugintest: copying plugin object: " + err.Error())
	}
	return out
}
