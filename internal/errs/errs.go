// Package errs is the error machinery of the plugin controller: sentinels
// that carry a containerd errdefs class, a sentinel joined with a detail and
// a cause, and the classification of a Backend's errors into permanent and
// temporary ones (swarmkit's exec.Do retries a temporary error in place).
// Package plugin declares its exported errors with New and wraps with
// Detail and Classify; package restart uses the same for the errors of a
// kept plugin's removal. Nothing here has state.
package errs

import (
	"context"
	"errors"
	"net"
	"strings"
	"syscall"

	cerrdefs "github.com/containerd/errdefs"
	"github.com/moby/swarmkit/v2/agent/exec"
)

// New returns a sentinel error with message msg that also matches class
// (an errdefs error such as cerrdefs.ErrConflict) under errors.Is.
func New(msg string, class error) error { return &classError{msg: msg, class: class} }

// The sentinels package plugin shares with its internal packages; it
// exports them as ErrInvalidSpec, ErrPluginInUse, ErrIncorrectPrivileges,
// ErrPluginNotAnswering and (unexported) its invalid-Backend error.
var (
	InvalidSpec         = New("invalid plugin spec", cerrdefs.ErrInvalidArgument)
	PluginInUse         = New("plugin is in use", cerrdefs.ErrConflict)
	IncorrectPrivileges = New("incorrect privileges", cerrdefs.ErrPermissionDenied)
	NotAnswering        = New("plugin does not answer", cerrdefs.ErrUnavailable)
	Backend             = New("plugin backend returned an invalid result", cerrdefs.ErrInternal)
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

// Detail joins sentinel with a detail and a cause: "SENTINEL: detail: cause";
// errors.Is and errors.As reach the sentinel (and its class) and the cause.
func Detail(sentinel error, detail string, cause error) error {
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

// Classify wraps err, an error from the Backend or from the registry-auth
// function during op, keeping it reachable with errors.Is / errors.As, and
// makes it temporary when retrying can help (see IsTransient), so that
// swarmkit's exec.Do retries the step in place instead of failing the
// task. An error without an errdefs class of its own (the Manager's
// "incorrect privileges", say) is classified unknown, so every error a
// Controller returns has a class.
func Classify(op string, err error) error {
	wrapped := &causeError{msg: op, cause: err}
	if !HasClass(err) {
		wrapped.class = cerrdefs.ErrUnknown
	}
	if IsTransient(err) {
		return exec.MakeTemporary(wrapped)
	}
	return wrapped
}

// HasClass reports whether err belongs to one of the errdefs classes.
func HasClass(err error) bool {
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

// IsTransient reports whether err is worth retrying: the backend says so
// (exec.Temporary), its errdefs class is Unavailable, DeadlineExceeded or
// Aborted, it is a network timeout or a refused or reset connection, or its
// text names such a failure. Conflicts, invalid arguments, missing images,
// privilege mismatches and anything unknown are permanent.
func IsTransient(err error) bool {
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

// unclassifiedLookupError is an error of Backend.Get that carries no
// errdefs class and is not temporary: the answer of a hand-written fake
// (moby's own mockBackend returns errors.New("not found")) rather than of
// moby's Manager, which classifies every error.
type unclassifiedLookupError struct{ error }

// Unclassified marks err, an error of Backend.Get that carries no errdefs
// class and is not temporary, as the answer NotInstalled takes for "not
// installed", as upstream reads any error of Get in Prepare.
func Unclassified(err error) error { return &unclassifiedLookupError{err} }

func (e *unclassifiedLookupError) Unwrap() error { return e.error }

// NotInstalled reports whether a lookup error means that no plugin of the
// name is installed: the Backend says not found, or, as upstream reads any
// error of Get in Prepare, it gives an unclassified, permanent error.
// Classified errors (an ambiguous name, an unavailable backend) and
// temporary ones are not taken as an answer.
func NotInstalled(err error) bool {
	return cerrdefs.IsNotFound(err) || isUnclassified(err)
}

func isUnclassified(err error) bool {
	var unclassified *unclassifiedLookupError
	return errors.As(err, &unclassified)
}
