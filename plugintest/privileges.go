package plugintest

// This file holds the one rule of the fake that differs between the daemon
// generations: moby v2 rewrote validatePrivileges. The moby v2 flavour has a
// hand-written mobyv2/plugintest/privileges.go in its place.

import (
	"reflect"
	"sort"

	"github.com/docker/docker/api/types"
)

// validatePrivileges compares the granted privileges with the required ones
// exactly as docker v28's validatePrivileges/isEqual (plugin/manager.go) do:
// the lengths must match, both lists are sorted by name (swapping sorts
// the swapped elements' values), and then elements are compared by name and
// value from index 1 on; moby's loop skips index 0. Unlike moby, it sorts
// copies, not the caller's slices.
func validatePrivileges(required, granted types.PluginPrivileges) error {
	if len(required) != len(granted) {
		return errIncorrectPrivileges
	}
	required, granted = copyPrivileges(required), copyPrivileges(granted)
	sort.Sort(required)
	sort.Sort(granted)
	for i := 1; i < len(required); i++ {
		if required[i].Name != granted[i].Name || !reflect.DeepEqual(required[i].Value, granted[i].Value) {
			return errIncorrectPrivileges
		}
	}
	return nil
}
