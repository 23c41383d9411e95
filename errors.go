package plugin

import (
	"context"
	"errors"
	"reflect"

	cerrdefs "github.com/containerd/errdefs"
	"github.com/seed-e85c93d5/plugin/internal/errs"
)

// The errors a Controller returns. Their messages are upstream's words, so
// callers that match on the text keep working; new code should use errors.Is
// with these values, or the github.com/containerd/errdefs class functions
// (cerrdefs.IsConflict, cerrdefs.IsInvalidArgument, ...), which see through
// every wrapping the Controller adds.
var (
	// ErrPluginExists: Prepare found a plugin of the same name that this
	// task's service does not own (installed by a person, by another
	// service, or by a standalone "docker plugin install"). The Controller
	// never touches such a plugin. Classified conflict. The returned error
	// reads "plugin already exists: NAME".
	ErrPluginExists error = errs.New("plugin already exists", cerrdefs.ErrConflict)

	// ErrPluginRemoved: Wait saw the plugin removed. Classified not found.
	ErrPluginRemoved error = errs.New("plugin removed", cerrdefs.ErrNotFound)

	// ErrPluginEnabled: Wait saw the plugin enabled although the spec says
	// disabled. Classified failed precondition.
	ErrPluginEnabled error = errs.New("plugin enabled", cerrdefs.ErrFailedPrecondition)

	// ErrPluginDisabled: Wait saw the plugin disabled although the spec says
	// enabled. Classified failed precondition.
	ErrPluginDisabled error = errs.New("plugin disabled", cerrdefs.ErrFailedPrecondition)

	// ErrMismatchedState: when Wait began, the plugin's state did not match
	// the spec (Start has not run, or someone changed it since). Classified
	// failed precondition.
	ErrMismatchedState error = errs.New("mismatched plugin state", cerrdefs.ErrFailedPrecondition)

	// ErrInvalidSpec: the task does not carry a usable plugin spec (no
	// task, not a generic "plugin" runtime, an undecodable payload, or a
	// remote that is not a valid reference). Classified invalid
	// argument; the wrapped cause, if any, stays reachable with errors.Is
	// and errors.As.
	ErrInvalidSpec error = errs.InvalidSpec

	// ErrPluginInUse: the spec says Disabled while references other than
	// this service's tasks hold the plugin, for example a volume created on
	// the driver or a container logging through it. Prepare and Start
	// leave the plugin running for them; the error is temporary
	// (exec.IsTemporary), so swarmkit retries, and Start disables the
	// plugin once they let go. (A new remote or a settable env value is
	// applied under such references, as stock dockerd does: force-disable,
	// change, enable.) Classified conflict.
	ErrPluginInUse error = errs.PluginInUse

	// ErrIncorrectPrivileges: the privileges the plugin's config requires
	// are not exactly the ones the task's spec grants (the service's
	// Privileges), compared entry by entry, order-insensitive, values
	// included. The error names each privilege required but not granted
	// and each granted but not required, in the Manager's words
	// ("capabilities: [CAP_SYS_ADMIN]"). Prepare returns it, permanent, so
	// the task is rejected: before a pull (nothing is installed), before
	// an upgrade (the running version stays in service), or, when only
	// the installed config shows it, after the pull (the plugin is removed
	// again) or the upgrade (the plugin is left disabled). Every
	// docker/docker v28 Manager accepts some of these grants
	// (CVE-2026-33997); the Controller refuses them itself. Classified
	// permission denied.
	ErrIncorrectPrivileges error = errs.IncorrectPrivileges

	// ErrPluginNotAnswering: the plugin is enabled but does not answer its
	// protocol (see WithHealthCheck). Start returns it temporary while the
	// plugin may still be starting, and permanent once the enable timeout
	// has passed; Wait returns it, permanent, after the health check's
	// threshold of misses in a row, and the next task's Start restarts the
	// plugin. The message names the probe and its last answer. Classified
	// unavailable.
	ErrPluginNotAnswering error = errs.NotAnswering

	// ErrTaskRemoved: a lifecycle method was called after Remove released
	// the task's reference. Classified failed precondition.
	ErrTaskRemoved error = errs.New("plugin task already removed", cerrdefs.ErrFailedPrecondition)

	// errNilBackend: New was given no Backend, or a typed nil one.
	// Classified invalid argument.
	errNilBackend error = errs.New("plugin controller needs a backend, got nil", cerrdefs.ErrInvalidArgument)

	// errEventsClosed: the Backend closed the event stream a Wait was
	// reading. Wait returns it temporary, so swarmkit waits again.
	// Classified unavailable.
	errEventsClosed error = errs.New("plugin event stream closed by the backend", cerrdefs.ErrUnavailable)

	// errRestartSafe: RestartSafe was given a nil executor or backend, or
	// no directory. Classified invalid argument.
	errRestartSafe error = errs.New("plugin.RestartSafe", cerrdefs.ErrInvalidArgument)

	// errBackend: the Backend answered with something that cannot be
	// right (a nil plugin without an error, an empty ID, a nil event
	// channel). Classified internal.
	errBackend error = errs.Backend
)

// withDetail, classify, hasClass and isTransient are package errs' Detail,
// Classify, HasClass and IsTransient.
func withDetail(sentinel error, detail string, cause error) error {
	return errs.Detail(sentinel, detail, cause)
}

func classify(op string, err error) error { return errs.Classify(op, err) }

func hasClass(err error) bool { return errs.HasClass(err) }

func isTransient(err error) bool { return errs.IsTransient(err) }

// stepError makes the error of a step that ends because its ctx is done
// tell swarmkit's exec.Do to retry, whatever the Backend wrapped around
// ctx's error: exec.Do retries an error whose errors.Cause is
// context.Canceled or DeadlineExceeded, and errors.Cause follows only
// Cause methods. errors.Is still reaches both err and ctx's error.
func stepError(ctx context.Context, err error) error {
	if err == nil || ctx.Err() == nil {
		return err
	}
	var done *ctxDoneError
	if errors.As(err, &done) || err == ctx.Err() {
		return err
	}
	return &ctxDoneError{err: err, ctxErr: ctx.Err()}
}

// ctxDoneError is the error of a step cut short by its context.
type ctxDoneError struct {
	err    error
	ctxErr error
}

func (e *ctxDoneError) Error() string   { return e.err.Error() }
func (e *ctxDoneError) Cause() error    { return e.ctxErr }
func (e *ctxDoneError) Unwrap() []error { return []error{e.err, e.ctxErr} }

// isNil reports whether b is nil or an interface holding a nil pointer,
// map, slice, func or channel, which would fail at its first call.
func isNil(b any) bool {
	if b == nil {
		return true
	}
	switch v := reflect.ValueOf(b); v.Kind() {
	case reflect.Pointer, reflect.Map, reflect.Slice, reflect.Func, reflect.Chan:
		return v.IsNil()
	}
	return false
}
