package plugintest

// Written by hand: the moby v2 counterpart of ../../plugintest/privileges.go,
// the one rule of the fake that differs between the daemon generations (see
// mobyv2/README.md).

import (
	"cmp"
	"slices"

	plugintypes "github.com/moby/moby/api/types/plugin"
)

// validatePrivileges compares the granted privileges with the required ones
// exactly as moby v2's validatePrivileges (daemon/pkg/plugin/manager.go)
// does: the lengths must match, then both lists, each value list sorted
// and the privileges sorted by name, must have the same names and values at
// every index (a nil value list equals an empty one). Like moby's, it sorts
// copies, not the caller's slices.
func validatePrivileges(required, granted plugintypes.Privileges) error {
	if len(required) != len(granted) {
		return errIncorrectPrivileges
	}
	a, b := normalizePrivileges(required), normalizePrivileges(granted)
	for i := range a {
		if a[i].Name != b[i].Name || !slices.Equal(a[i].Value, b[i].Value) {
			return errIncorrectPrivileges
		}
	}
	return nil
}

// normalizePrivileges returns a copy of privileges with each value list
// sorted and the privileges sorted by name, as moby v2's does.
func normalizePrivileges(privileges plugintypes.Privileges) plugintypes.Privileges {
	out := copyPrivileges(privileges)
	for _, p := range out {
		slices.Sort(p.Value)
	}
	slices.SortFunc(out, func(a, b plugintypes.Privilege) int { return cmp.Compare(a.Name, b.Name) })
	return out
}
