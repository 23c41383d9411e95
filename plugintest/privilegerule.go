package plugintest

import (
	"fmt"

	"github.com/docker/docker/api/types"
	"github.com/seed-e85c93d5/plugin/internal/privileges"
)

// PrivilegeRule is how a Backend compares the privileges granted to Pull
// and Upgrade with those the remote's config requires. A mismatch fails
// with "incorrect privileges", unclassified, as in moby.
type PrivilegeRule int

const (
	// PrivilegesDockerV28 is the comparison of every docker/docker v28
	// release (v28.0.0 to v28.5.2), CVE-2026-33997 included: equal
	// lengths, both lists sorted by name, then compared by name and value
	// from index 1 on, so the first privilege is never compared and a
	// single one not at all; values are compared in the order given
	// (except those of elements the sort swapped) and nil differs from
	// empty. It is the default of this flavour's Backend.
	PrivilegesDockerV28 PrivilegeRule = iota + 1

	// PrivilegesMobyV2 is the comparison of moby v2 (docker v29.3.1 and
	// later): every index, values sorted, nil equal to empty. It is the
	// default of the moby v2 flavour's Backend.
	PrivilegesMobyV2
)

func (r PrivilegeRule) String() string {
	switch r {
	case PrivilegesDockerV28:
		return "PrivilegesDockerV28"
	case PrivilegesMobyV2:
		return "PrivilegesMobyV2"
	}
	return fmt.Sprintf("PrivilegeRule(%d)", int(r))
}

// SetPrivilegeRule makes Pull and Upgrade compare privileges by rule from
// now on. A test of code that must stay safe on a docker v28 daemon
// (whose Manager accepts a wrong grant of one privilege) sets
// PrivilegesDockerV28 in either flavour, and one that models a fixed daemon
// sets PrivilegesMobyV2. Any other value panics. Safe for concurrent use.
func (b *Backend) SetPrivilegeRule(rule PrivilegeRule) {
	if rule != PrivilegesDockerV28 && rule != PrivilegesMobyV2 {
		panic(fmt.Sprintf("plugintest: SetPrivilegeRule: unknown rule %v", rule))
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	b.rule = rule
}

// checkPrivileges compares granted with required by b's rule. Call with
// b.mu held.
func (b *Backend) checkPrivileges(required, granted types.PluginPrivileges) error {
	equal := privileges.EqualDockerV28
	if b.rule == PrivilegesMobyV2 {
		equal = privileges.EqualMobyV2
	}
	if !equal(required, granted) {
		return errIncorrectPrivileges
	}
	return nil
}
