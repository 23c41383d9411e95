package plugintest

// The error types below copy the unexported ones of moby's plugin package
// (plugin/errors.go in v28.3.0): the same words and the same class methods,
// which github.com/containerd/errdefs recognises (IsConflict). "not found"
// and "multiple plugins found" errors need no copy: they come from moby's
// own plugin.Store, which this package uses for lookups.

type errDisabled string

func (name errDisabled) Error() string {
	return "plugin " + string(name) + " found but disabled"
}

func (errDisabled) Conflict() {}

type inUseError string

func (e inUseError) Error() string {
	return "plugin " + string(e) + " is in use"
}

func (inUseError) Conflict() {}

type enabledError string

func (e enabledError) Error() string {
	return "plugin " + string(e) + " is enabled"
}

func (enabledError) Conflict() {}

type alreadyExistsError string

func (e alreadyExistsError) Error() string {
	return "plugin " + string(e) + " already exists"
}

func (alreadyExistsError) Conflict() {}
