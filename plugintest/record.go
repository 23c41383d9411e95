package plugintest

import (
	"fmt"
	"io"
	"net/http"

	"github.com/docker/docker/api/types"
	"github.com/docker/docker/api/types/registry"
	"github.com/docker/docker/plugin"
)

// Call records one call of a Backend method made by the code under test.
// Only the fields that make sense for Method are set.
type Call struct {
	// Method is the method name: "Pull", "Upgrade", "Privileges",
	// "ResolveManifest", "ProbePlugin", "Enable", "Disable", "Remove",
	// "Get", "Set" or "SubscribeEvents".
	Method string
	// Name is the name, ID or ID prefix argument, as passed.
	Name string
	// Ref is ref.String() of the reference given to Pull, Upgrade or
	// Privileges.
	Ref string
	// Config is the *backend.PluginEnableConfig, *backend.PluginDisableConfig
	// or *backend.PluginRmConfig given to Enable, Disable or Remove, as
	// passed (the pointer, not a copy).
	Config any
	// Privileges is a copy of the privileges granted to Pull or Upgrade,
	// or of those Privileges returned.
	Privileges types.PluginPrivileges
	// Auth is the authConfig given to Pull, Upgrade or Privileges, as
	// passed.
	Auth *registry.AuthConfig
	// MetaHeaders is the metaHeaders given to Pull, Upgrade or
	// Privileges, as passed.
	MetaHeaders http.Header
	// Out is the outStream given to Pull or Upgrade, as passed (the
	// progress writer, plugin.WithProgress's); the fake writes nothing to
	// it.
	Out io.Writer
	// Opts is the number of CreateOpts given to Pull.
	Opts int
	// Args is a copy of the args given to Set.
	Args []string
	// Events is a copy of the watch events given to SubscribeEvents.
	Events []plugin.Event
	// Err is the error the call returned.
	Err error
}

// failable lists the methods FailNext accepts.
var failable = map[string]bool{
	"Pull": true, "Upgrade": true, "Privileges": true, "ResolveManifest": true, "ProbePlugin": true, "Enable": true, "Disable": true,
	"Remove": true, "Get": true, "Set": true,
}

// FailNext makes the next call of method return err without any side
// effect (no state change, no event). Called several times for the same
// method, it queues the errors: each call consumes one. method is one of
// "Pull", "Upgrade", "Privileges", "ResolveManifest", "ProbePlugin",
// "Enable", "Disable", "Remove", "Get" or "Set"; any
// other name, or a nil err, panics. The failed call is recorded in Calls
// with Err set. Safe for concurrent use.
func (b *Backend) FailNext(method string, err error) {
	if !failable[method] {
		panic(fmt.Sprintf("plugintest: FailNext: unknown method %q", method))
	}
	if err == nil {
		panic("plugintest: FailNext: nil error")
	}
	b.recMu.Lock()
	defer b.recMu.Unlock()
	b.failures[method] = append(b.failures[method], err)
}

// injected pops the next error queued by FailNext for method, if any.
func (b *Backend) injected(method string) error {
	b.recMu.Lock()
	defer b.recMu.Unlock()
	q := b.failures[method]
	if len(q) == 0 {
		return nil
	}
	err := q[0]
	b.failures[method] = q[1:]
	return err
}

// record appends c to the call record.
func (b *Backend) record(c Call) {
	b.recMu.Lock()
	defer b.recMu.Unlock()
	b.calls = append(b.calls, c)
}

// ResetCalls forgets the calls recorded so far, so that Calls returns only
// the calls made after it: a test calls it after its setup to look at the
// part under test alone. Safe for concurrent use.
func (b *Backend) ResetCalls() {
	b.recMu.Lock()
	defer b.recMu.Unlock()
	b.calls = nil
}

// Calls returns a copy of the record of every call of a Backend method
// (Pull, Upgrade, Privileges, ResolveManifest, Enable, Disable, Remove,
// Get, Set, SubscribeEvents), in
// the order they returned. The helpers (Plugin, Subscribers, ...) are not
// recorded. Safe for concurrent use.
func (b *Backend) Calls() []Call {
	b.recMu.Lock()
	defer b.recMu.Unlock()
	return append([]Call(nil), b.calls...)
}
