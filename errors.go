package plugin

import (
	"context"
	"errors"
	"net"
	"strings"
	"syscall"

	cerrdefs "github.com/containerd/errdefs"
	"github.com/moby/swarmkit/v2/agent/exec"
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
	ErrPluginExists error = &classError{msg: "plugin already exists", class: cerrdefs.ErrConflict}

	// ErrPluginRemoved: Wait saw the plugin removed. Classified not found.
	ErrPluginRemoved error = &classError{msg: "plugin removed", class: cerrdefs.ErrNotFound}

	// ErrPluginEnabled: Wait saw the plugin enabled although the spec says
	// disabled. Classified failed precondition.
	ErrPluginEnabled error = &classError{msg: "plugin enabled", class: cerrdefs.ErrFailedPrecondition}

	// ErrPluginDisabled: Wait saw the plugin disabled although the spec says
	// enabled. Classified failed precondition.
	ErrPluginDisabled error = &classError{msg: "plugin disabled", class: cerrdefs.ErrFailedPrecondition}

	// ErrMismatchedState: when Wait began, the plugin's state did not match
	// the spec (Start has not run, or someone changed it since). Classified
	// failed precondition.
	ErrMismatchedState error = &classError{msg: "mismatched plugin state", class: cerrdefs.ErrFailedPrecondition}

	// ErrInvalidSpec: the task does not carry a usable plugin spec (no
	// task, not a generic "plugin" runtime, an undecodable payload, or a
	// remote that is not a valid reference). Classified invalid
	// argument; the wrapped cause, if any, stays reachable with errors.Is
	// and errors.As.
	ErrInvalidSpec error = &classError{msg: "invalid plugin spec", class: cerrdefs.ErrInvalidArgument}

	// ErrPluginInUse: the spec says Disabled while references other than
	// this service's tasks hold the plugin, for example a volume created on
	// the driver or a container logging through it. Prepare and Start
	// leave the plugin running for them; the error is temporary
	// (exec.IsTemporary), so swarmkit retries, and Start disables the
	// plugin once they let go. (A new remote or a settable env value is
	// applied under such references, as stock dockerd does: force-disable,
	// change, enable.) Classified conflict.
	ErrPluginInUse error = &classError{msg: "plugin is in use", class: cerrdefs.ErrConflict}

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
	ErrIncorrectPrivileges error = &classError{msg: "incorrect privileges", class: cerrdefs.ErrPermissionDenied}

	// ErrPluginNotAnswering: the plugin is enabled but does not answer its
	// protocol (see WithHealthCheck). Start returns it temporary while the
	// plugin may still be starting, and permanent once the enable timeout
	// has passed; Wait returns it, permanent, after the health check's
	// threshold of misses in a row, and the next task's Start restarts the
	// plugin. The message names the probe and its last answer. Classified
	// unavailable.
	ErrPluginNotAnswering error = &classError{msg: "plugin does not answer", class: cerrdefs.ErrUnavailable}

	// ErrTaskRemoved: a lifecycle method was called after Remove released
	// the task's reference. Classified failed precondition.
	ErrTaskRemoved error = &classError{msg: "plugin task already removed", class: cerrdefs.ErrFailedPrecondition}

	// errNilBackend: New was given no Backend, or a typed nil one.
	// Classified invalid argument.
	errNilBackend error = &classError{msg: "plugin controller needs a backend, got nil", class: cerrdefs.ErrInvalidArgument}

	// errEventsClosed: the Backend closed the event stream a Wait was
	// reading. Wait returns it temporary, so swarmkit waits again.
	// Classified unavailable.
	errEventsClosed error = &classError{msg: "plugin event stream closed by the backend", class: cerrdefs.ErrUnavailable}

	// errRestartSafe: RestartSafe was given a nil executor or backend, or
	// no directory. Classified invalid argument.
	errRestartSafe error = &classError{msg: "plugin.RestartSafe", class: cerrdefs.ErrInvalidArgument}

	// errBackend: the Backend answered with something that cannot be
	// right (a nil plugin without an error, an empty ID, a nil event
	// channel). Classified internal.
	errBackend error = &classError{msg: "plugin backend returned an invalid result", class: cerrdefs.ErrInternal}
)

// classError is a sentinel with a fixed message that also matches its
// errdefs class under errors.Is.
type classError struct {
	msg   string
	class error
}

func (e *classError) Error() string { return e.msg }
func (e *classError) Unwrap() error { return e.class }

// wrapError joins a sentinel with a cause: the message is "SENTINEL: detail"
// (or "SENTINEL: detail: cause"), and errors.Is / errors.As reach both the
// sentinel (and so its class) and the cause.
type wrapError struct {
	sentinel error
	detail   string
	cause    error
}

func (e *wrapError) Error() string {
	var b strings.Builder
	b.WriteString(e.sentinel.Error())
	if e.detail != "" {
		b.WriteString(": ")
		b.WriteString(e.detail)
	}
	if e.cause != nil {
		b.WriteString(": ")
		b.WriteString(e.cause.Error())
	}
	return b.String()
}

func (e *wrapError) Unwrap() []error {
	if e.cause == nil {
		return []error{e.sentinel}
	}
	return []error{e.sentinel, e.cause}
}

func withDetail(sentinel error, detail string, cause error) error {
	return &wrapError{sentinel: sentinel, detail: detail, cause: cause}
}

// causeError adds context to a cause while keeping the cause's message
// last, like fmt.Errorf("%s: %w"), and adds an errdefs class only when the
// cause has none of its own.
type causeError struct {
	msg   string
	cause error
	class error // nil: the cause's own class (if any) shows through
}

func (e *causeError) Error() string { return e.msg + ": " + e.cause.Error() }

func (e *causeError) Unwrap() []error {
	if e.class == nil {
		return []error{e.cause}
	}
	return []error{e.cause, e.class}
}

// classify wraps err, an error from the Backend or from the registry-auth
// function during op, keeping it reachable with errors.Is / errors.As, and
// makes it temporary when retrying can help (see isTransient), so that
// swarmkit's exec.Do retries the step in place instead of failing the
// task. An error without an errdefs class of its own (the Manager's
// "incorrect privileges", say) is classified unknown, so every error a
// Controller returns has a class.
func classify(op string, err error) error {
	wrapped := &causeError{msg: op, cause: err}
	if !hasClass(err) {
		wrapped.class = cerrdefs.ErrUnknown
	}
	if isTransient(err) {
		return exec.MakeTemporary(wrapped)
	}
	return wrapped
}

// hasClass reports whether err belongs to one of the errdefs classes.
func hasClass(err error) bool {
	for _, is := range []func(error) bool{
		cerrdefs.IsCanceled, cerrdefs.IsUnknown, cerrdefs.IsInvalidArgument, cerrdefs.IsDeadlineExceeded,
		cerrdefs.IsNotFound, cerrdefs.IsAlreadyExists, cerrdefs.IsPermissionDenied, cerrdefs.IsResourceExhausted,
		cerrdefs.IsFailedPrecondition, cerrdefs.IsConflict, cerrdefs.IsNotModified, cerrdefs.IsAborted,
		cerrdefs.IsOutOfRange, cerrdefs.IsNotImplemented, cerrdefs.IsInternal, cerrdefs.IsUnavailable,
		cerrdefs.IsDataLoss, cerrdefs.IsUnauthorized,
	} {
		if is(err) {
			return true
		}
	}
	return false
}

// transientPhrases are failures of the network or of a registry that some
// layers of moby only report as text (the distribution code flattens many
// errors into strings before the Manager returns them).
var transientPhrases = []string{
	"connection refused",
	"connection reset by peer",
	"i/o timeout",
	"no such host",
	"tls handshake timeout",
	"too many requests",
	"toomanyrequests",
	"service unavailable",
	"503 service unavailable",
	"502 bad gateway",
	"504 gateway timeout",
	"unexpected eof",
}

// isTransient reports whether err is worth retrying: the backend says so
// (exec.Temporary), its errdefs class is Unavailable, DeadlineExceeded or
// Aborted, it is a network timeout or a refused or reset connection, or its
// text names such a failure. Conflicts, invalid arguments, missing images,
// privilege mismatches and anything unknown are permanent.
func isTransient(err error) bool {
	if err == nil {
		return false
	}
	if exec.IsTemporary(err) || cerrdefs.IsUnavailable(err) || cerrdefs.IsDeadlineExceeded(err) || cerrdefs.IsAborted(err) {
		return true
	}
	if errors.Is(err, context.DeadlineExceeded) {
		return true
	}
	if errors.Is(err, syscall.ECONNREFUSED) || errors.Is(err, syscall.ECONNRESET) || errors.Is(err, syscall.ETIMEDOUT) {
		return true
	}
	var nerr net.Error
	if errors.As(err, &nerr) && nerr.Timeout() {
		return true
	}
	if cerrdefs.IsNotFound(err) || cerrdefs.IsInvalidArgument(err) || cerrdefs.IsConflict(err) || cerrdefs.IsPermissionDenied(err) || cerrdefs.IsUnauthorized(err) {
		return false
	}
	msg := strings.ToLower(err.Error())
	for _, p := range transientPhrases {
		if strings.Contains(msg, p) {
			return true
		}
	}
	return false
}
