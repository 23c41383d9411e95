//go:build linux

// Package realmanager is a test fixture that drives moby's real
// *plugin.Manager (github.com/docker/docker/plugin, v28.3.0) without a
// daemon, containerd or network access:
//
//   - [Registry] is an in-process OCI registry on 127.0.0.1 that can be
//     stopped and restarted on the same port, and counts blob downloads.
//   - [Publish] builds small volume-driver plugins with a Manager of its own
//     (CreateFromContext) and pushes them to a registry.
//   - [Manager] is a real *plugin.Manager in private temporary directories,
//     whose plugins "run" in a fake executor: enabling a plugin makes the
//     executor listen on the plugin's socket and answer /Plugin.Activate;
//     no process is started.
//
// The real Manager unpacks plugin layers with chrootarchive, which needs
// root with CAP_SYS_ADMIN; call [Supported] first and skip (or refuse to
// run) with its error as the reason when it is not nil.
//
// moby's own Pull and Push progress code has data races, so programs and
// tests that use this package cannot run under the race detector.
//
// The package is linux-only.
package realmanager
