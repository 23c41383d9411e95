// Package privileges owns the one definition of what a plugin may do on its
// host: the privileges a plugin config requires, computed exactly as moby's
// plugin Manager computes them, and the comparison of those with what a
// swarm service grants.
//
// The controller (package plugin) calls Required and Diff to enforce a
// service's grant itself, whatever the daemon's Manager checks, because
// every docker/docker v28 release compares wrongly (CVE-2026-33997, see
// EqualDockerV28). The fake Manager of package plugintest calls Required,
// EqualDockerV28 and EqualMobyV2 to play the Manager of either daemon
// generation. Everything here is pure: no state, safe for concurrent use.
package privileges

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"net/http"
	"reflect"
	"slices"
	"sort"
	"strings"

	"github.com/containerd/log"
	"github.com/distribution/reference"
	"github.com/docker/docker/api/types"
	"github.com/docker/docker/api/types/registry"
	"github.com/docker/docker/api/types/swarm/runtime"

	"github.com/seed-e85c93d5/plugin/internal/errs"
	"github.com/seed-e85c93d5/plugin/internal/logging"
)

// Required returns the privileges a plugin with config c needs, in the
// order and with the names, descriptions and values of moby's
// computePrivileges (plugin/backend_linux.go, the same in docker v28.3.0
// and moby v2): a network type other than "null", "bridge" or empty, the
// host IPC and PID namespaces, each mount with a source, each device with
// a path, access to all devices, and the added capabilities. A config that
// needs none gives nil.
func Required(c types.PluginConfig) types.PluginPrivileges {
	var out types.PluginPrivileges
	if c.Network.Type != "null" && c.Network.Type != "bridge" && c.Network.Type != "" {
		out = append(out, types.PluginPrivilege{
			Name:        "network",
			Description: "permissions to access a network",
			Value:       []string{c.Network.Type},
		})
	}
	if c.IpcHost {
		out = append(out, types.PluginPrivilege{
			Name:        "host ipc namespace",
			Description: "allow access to host ipc namespace",
			Value:       []string{"true"},
		})
	}
	if c.PidHost {
		out = append(out, types.PluginPrivilege{
			Name:        "host pid namespace",
			Description: "allow access to host pid namespace",
			Value:       []string{"true"},
		})
	}
	for _, m := range c.Mounts {
		if m.Source != nil {
			out = append(out, types.PluginPrivilege{
				Name:        "mount",
				Description: "host path to mount",
				Value:       []string{*m.Source},
			})
		}
	}
	for _, d := range c.Linux.Devices {
		if d.Path != nil {
			out = append(out, types.PluginPrivilege{
				Name:        "device",
				Description: "host device to access",
				Value:       []string{*d.Path},
			})
		}
	}
	if c.Linux.AllowAllDevices {
		out = append(out, types.PluginPrivilege{
			Name:        "allow-all-devices",
			Description: "allow 'rwm' access to all devices",
			Value:       []string{"true"},
		})
	}
	if len(c.Linux.Capabilities) > 0 {
		out = append(out, types.PluginPrivilege{
			Name:        "capabilities",
			Description: "list of additional capabilities required",
			Value:       slices.Clone(c.Linux.Capabilities),
		})
	}
	return out
}

// Diff compares what a plugin requires with what its service grants and
// returns the privileges required but not granted (missing) and those
// granted but not required (extra); both are empty exactly when the grant
// is right. A privilege is its name and its set of values: the order of
// the privileges and of each one's values does not matter, a nil value
// list equals an empty one, descriptions are ignored, and a privilege
// listed twice must be granted twice.
//
// Diff accepts every grant moby v2's validatePrivileges accepts (and, of
// those it refuses, only grants that list the same privileges in another
// order of equal names, such as two mounts swapped), so a controller that
// enforces Diff never refuses what moby v2's Manager installs.
func Diff(required, granted types.PluginPrivileges) (missing, extra types.PluginPrivileges) {
	pending := make(map[string][]types.PluginPrivilege, len(granted))
	for _, g := range granted {
		k := key(g)
		pending[k] = append(pending[k], g)
	}
	for _, r := range required {
		k := key(r)
		if len(pending[k]) == 0 {
			missing = append(missing, r)
			continue
		}
		pending[k] = pending[k][1:]
	}
	for _, g := range granted {
		k := key(g)
		if len(pending[k]) > 0 {
			extra = append(extra, pending[k][0])
			pending[k] = pending[k][1:]
		}
	}
	return missing, extra
}

// key identifies a privilege for Diff: its name and sorted values.
func key(p types.PluginPrivilege) string {
	values := slices.Clone(p.Value)
	slices.Sort(values)
	var b strings.Builder
	b.WriteString(p.Name)
	for _, v := range values {
		b.WriteByte(0)
		b.WriteString(v)
	}
	return b.String()
}

// Mismatch says how granted differs from required, in the Manager's
// words ("required, not granted: capabilities: [CAP_SYS_ADMIN]; granted,
// not required: mount: [/tmp]"), or "" when it does not (see Diff).
func Mismatch(required, granted types.PluginPrivileges) string {
	missing, extra := Diff(required, granted)
	var parts []string
	if len(missing) > 0 {
		parts = append(parts, "required, not granted: "+Format(missing))
	}
	if len(extra) > 0 {
		parts = append(parts, "granted, not required: "+Format(extra))
	}
	return strings.Join(parts, "; ")
}

// Format writes privileges the way the docker CLI lists them, "NAME:
// [VALUE ...]", joined by ", ", in the given order.
func Format(ps types.PluginPrivileges) string {
	parts := make([]string, 0, len(ps))
	for _, p := range ps {
		parts = append(parts, p.Name+": ["+strings.Join(p.Value, " ")+"]")
	}
	return strings.Join(parts, ", ")
}

// EqualDockerV28 reports whether docker/docker v28's Manager accepts the
// grant: its validatePrivileges and isEqual (plugin/manager.go, v28.0.0 to
// v28.5.2), bug included. The lengths must match; both lists are sorted by
// name with the API type's sort.Interface (whose Swap sorts the values of
// the two elements it swaps); then the elements are compared by name and
// by value with reflect.DeepEqual (so nil differs from empty and values
// the sort did not touch are compared in order), from index 1 on: the
// first privilege is never compared, and a single one not at all
// (CVE-2026-33997). It sorts copies, where moby sorts the caller's slices.
func EqualDockerV28(required, granted types.PluginPrivileges) bool {
	if len(required) != len(granted) {
		return false
	}
	a, b := v28Order(clone(required)), v28Order(clone(granted))
	sort.Sort(a)
	sort.Sort(b)
	for i := 1; i < len(a); i++ {
		if a[i].Name != b[i].Name || !reflect.DeepEqual(a[i].Value, b[i].Value) {
			return false
		}
	}
	return true
}

// EqualMobyV2 reports whether moby v2's Manager accepts the grant: its
// validatePrivileges and normalizePrivileges (daemon/pkg/plugin/manager.go,
// docker v29.3.1 and later). The lengths must match; copies with each
// value list sorted are sorted by name (slices.SortFunc, so privileges of
// equal names keep an order the sort chooses), and every index must have
// the same name and values, a nil list equal to an empty one.
func EqualMobyV2(required, granted types.PluginPrivileges) bool {
	if len(required) != len(granted) {
		return false
	}
	a, b := normalize(required), normalize(granted)
	for i := range a {
		if a[i].Name != b[i].Name || !slices.Equal(a[i].Value, b[i].Value) {
			return false
		}
	}
	return true
}

func normalize(ps types.PluginPrivileges) []types.PluginPrivilege {
	out := clone(ps)
	for i := range out {
		slices.Sort(out[i].Value)
	}
	slices.SortFunc(out, func(a, b types.PluginPrivilege) int { return cmp.Compare(a.Name, b.Name) })
	return out
}

// clone deep-copies ps, keeping nil and empty value lists apart.
func clone(ps types.PluginPrivileges) []types.PluginPrivilege {
	out := make([]types.PluginPrivilege, len(ps))
	for i, p := range ps {
		if p.Value != nil {
			p.Value = append(make([]string, 0, len(p.Value)), p.Value...)
		}
		out[i] = p
	}
	return out
}

// v28Order is the sort.Interface of docker v28's types.PluginPrivileges,
// restated so that both daemon generations' rules can be played with
// either generation's types.
type v28Order []types.PluginPrivilege

func (s v28Order) Len() int           { return len(s) }
func (s v28Order) Less(i, j int) bool { return s[i].Name < s[j].Name }
func (s v28Order) Swap(i, j int) {
	sort.Strings(s[i].Value)
	sort.Strings(s[j].Value)
	s[i], s[j] = s[j], s[i]
}

// FromSpec returns a swarm spec's privileges as the Backend takes them,
// in order, skipping nil entries; nil for none.
func FromSpec(ls []*runtime.PluginPrivilege) types.PluginPrivileges {
	if len(ls) == 0 {
		return nil
	}
	out := make(types.PluginPrivileges, 0, len(ls))
	for _, p := range ls {
		if p == nil {
			continue
		}
		out = append(out, types.PluginPrivilege{Name: p.Name, Description: p.Description, Value: p.Value})
	}
	return out
}

// Check returns an error that matches errs.IncorrectPrivileges (the
// controller's ErrIncorrectPrivileges) and names what differs, unless
// required is exactly granted (Diff); what names the plugin and its source
// for the message, and is called only on a mismatch. A grant that matches
// costs no allocation.
func Check(required, granted types.PluginPrivileges, what func() string) error {
	if Same(required, granted) {
		return nil
	}
	if diff := Mismatch(required, granted); diff != "" {
		return errs.Detail(errs.IncorrectPrivileges, what()+" requires other privileges than the service grants; "+diff, nil)
	}
	return nil
}

// Same reports whether Diff finds nothing missing and nothing extra,
// without allocating for lists of up to 64 privileges.
func Same(required, granted types.PluginPrivileges) bool {
	if len(required) != len(granted) {
		return false
	}
	if len(granted) > 64 {
		missing, extra := Diff(required, granted)
		return len(missing) == 0 && len(extra) == 0
	}
	var used uint64
	for _, r := range required {
		found := false
		for i, g := range granted {
			if used&(1<<i) == 0 && r.Name == g.Name && sameValues(r.Value, g.Value) {
				used |= 1 << i
				found = true
				break
			}
		}
		if !found {
			return false
		}
	}
	return true
}

// sameValues reports whether a and b hold the same values as multisets,
// Diff's rule (key sorts them), without allocating.
func sameValues(a, b []string) bool {
	if len(a) != len(b) {
		return false
	}
	for _, v := range a {
		if count(a, v) != count(b, v) {
			return false
		}
	}
	return true
}

func count(vs []string, v string) int {
	n := 0
	for _, w := range vs {
		if w == v {
			n++
		}
	}
	return n
}

// Remote checks granted against what the plugin at ref requires, as fetch
// (a Backend's Privileges) tells, before anything is pulled or disabled.
// name names the plugin in messages. It returns nil when fetch tells no
// privileges while granted holds some: that is also moby's answer to a
// failed fetch (an empty list and a nil error), so the caller's check of
// the installed config after the pull or upgrade decides; it says so
// through logf at debug.
func Remote(ctx context.Context, fetch func(context.Context, reference.Named, http.Header, *registry.AuthConfig) (types.PluginPrivileges, error),
	ref reference.Named, auth *registry.AuthConfig, granted types.PluginPrivileges, name string, logf logging.Logf,
) error {
	required, err := fetch(ctx, ref, nil, auth)
	if err != nil {
		return errs.Classify(fmt.Sprintf("error fetching the privileges of plugin %s from %s", name, reference.FamiliarString(ref)), err)
	}
	if len(required) == 0 && len(granted) > 0 {
		logf(ctx, log.DebugLevel, "the backend tells no privileges for the remote (or could not fetch them); checking the installed config instead")
		return nil
	}
	return Check(required, granted, func() string {
		return fmt.Sprintf("plugin %s from %s", name, reference.FamiliarString(ref))
	})
}

// Refused returns the incorrect-privileges error (errs.IncorrectPrivileges,
// the controller's ErrIncorrectPrivileges) for err, an error of the
// Backend's Pull or Upgrade of the plugin name from remote, when err is the
// Manager's refusal of the grant (unclassified, in moby's words) or
// already such an error; nil otherwise.
func Refused(err error, name, remote string) error {
	if !errors.Is(err, errs.IncorrectPrivileges) && !strings.Contains(err.Error(), "incorrect privileges") {
		return nil
	}
	return errs.Detail(errs.IncorrectPrivileges, fmt.Sprintf("the backend refused the service's grant for plugin %s from %s", name, remote), err)
}
