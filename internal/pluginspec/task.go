package pluginspec

import (
	"fmt"
	"reflect"
	"strings"

	"github.com/distribution/reference"
	"github.com/docker/docker/api/types"
	"github.com/docker/docker/api/types/swarm"
	"github.com/docker/docker/api/types/swarm/runtime"
	"github.com/moby/swarmkit/v2/api"
	"github.com/seed-e85c93d5/plugin/internal/errs"
	"github.com/seed-e85c93d5/plugin/internal/privileges"
	"github.com/seed-e85c93d5/plugin/internal/refs"
)

// Read decodes and validates the plugin spec a task carries and parses its
// remote; it defaults Name to the remote, as upstream's Prepare does. Its
// errors are classified invalid argument and match errs.InvalidSpec
// (package plugin's ErrInvalidSpec). A payload seen before is not decoded
// again: every task of a service carries the same one.
func Read(t *api.Task) (*Task, error) {
	if t == nil {
		return nil, errs.Detail(errs.InvalidSpec, "nil task", nil)
	}
	generic := t.Spec.GetGeneric()
	if generic == nil {
		return nil, errs.Detail(errs.InvalidSpec, fmt.Sprintf("task %s: runtime %s is not a generic plugin runtime", t.ID, runtimeName(t.Spec.Runtime)), nil)
	}
	if !strings.EqualFold(generic.Kind, string(swarm.RuntimePlugin)) {
		return nil, errs.Detail(errs.InvalidSpec, fmt.Sprintf("task %s: generic runtime kind %q is not %q", t.ID, generic.Kind, string(swarm.RuntimePlugin)), nil)
	}
	if generic.Payload == nil {
		return nil, errs.Detail(errs.InvalidSpec, fmt.Sprintf("task %s: generic runtime has no payload", t.ID), nil)
	}
	if d, ok := specs.Get(generic.Payload.Value); ok {
		return d, nil
	}
	decoded, err := Decode(generic.Payload.Value)
	if err != nil {
		return nil, errs.Detail(errs.InvalidSpec, "error reading plugin spec", err)
	}
	spec := *decoded
	remote, err := reference.ParseNormalizedNamed(spec.Remote)
	if err != nil {
		return nil, errs.Detail(errs.InvalidSpec, fmt.Sprintf("error parsing remote reference %q", spec.Remote), err)
	}
	display := spec.Name
	if spec.Name == "" {
		spec.Name = defaultName(remote)
		display = refs.Key(spec.Name)
	}
	// A bad Name is left to the Backend, which refuses it (invalid
	// argument) at Pull, as upstream.
	d := &Task{Spec: spec, Remote: remote, Familiar: reference.FamiliarString(remote), Key: refs.Key(spec.Name), Display: display, Granted: privileges.FromSpec(spec.Privileges)}
	specs.Put(generic.Payload.Value, d)
	return d, nil
}

// specs caches decoded payloads: every task of a service on a node (one per
// restart, per node, per rollback) carries the same payload, so it is
// decoded and parsed once. Entries are never modified after they are
// stored; the Controller only reads its spec.
var specs Cache[*Task]

// Task is the plugin spec of a task, decoded, with Name defaulted, its
// remote parsed, and the names the controller needs. It is shared between
// the Controllers of a service's tasks and never modified.
type Task struct {
	Spec   runtime.PluginSpec
	Remote reference.Named
	// Familiar is Remote as users write it ("vieux/sshfs:latest"), for
	// log lines and errors.
	Familiar string
	// Key is the name as the Manager stores it ("vol:latest" for "vol"
	// and "docker.io/library/vol"): it picks the plugin's lock.
	Key string
	// Display is the plugin's name in log lines and errors: the spec's
	// Name as written, or, for a spec without one, Key, the name "docker
	// plugin ls" shows ("vol:latest", not the defaulted
	// "docker.io/library/vol").
	Display string
	// Granted is the spec's Privileges as the Backend takes them
	// (privileges.FromSpec), shared: never modify it, and give a Backend
	// a copy (docker v28's Manager sorts the grant it gets in place).
	Granted types.PluginPrivileges
}

// defaultName is the plugin name for a spec without one: the remote, as
// upstream, except that a remote pinned by digest names the plugin by its
// repository and tag alone ("example.com/vol:1" for
// "example.com/vol:1@sha256:..."). The Manager stores a plugin under the
// name it is pulled as but cannot look up a name with a digest
// ("canonical references cannot be resolved"), so a digest in the name
// would install a plugin that no later step could find.
func defaultName(remote reference.Named) string {
	if _, pinned := remote.(reference.Canonical); !pinned {
		return remote.String()
	}
	name := reference.TrimNamed(remote)
	if tagged, ok := remote.(reference.Tagged); ok {
		if withTag, err := reference.WithTag(name, tagged.Tag()); err == nil {
			return withTag.String()
		}
	}
	return name.String()
}

func runtimeName(r any) string {
	if r == nil || reflect.ValueOf(r).IsNil() {
		return "<none>"
	}
	return fmt.Sprintf("%T", r)
}
