//go:build linux

package dockerd_test

import (
	"context"
	"debug/buildinfo"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"time"
)

const (
	runcModule = "github.com/opencontainers/runc"
	// runcVersion is the runc built for moby v2's daemons when none of 1.2
	// or later is at hand, as .ci/dockerd-deps builds it. Debian 12 has
	// only 1.1.5 (apt-cache policy runc).
	runcVersion = "v1.2.6"
	// runcDirEnv names a directory holding a runc 1.2 or later (runc);
	// .ci/run sets it to where .ci/dockerd-deps built one.
	runcDirEnv = "DOCKERD_RUNC_DIR"
)

// runc12 is the runc of 1.2 or later that moby v2's daemons use.
type runc12 struct {
	// dir goes first on the PATH of their containerd (whose shim runs
	// runc) and dockerd; "" when the PATH's own runc is 1.2 or later.
	dir string
	// desc says which runc it is and where it came from, for the log.
	desc string
}

// findRunc12 finds a runc of 1.2 or later, once per test binary run:
//   - in $DOCKERD_RUNC_DIR if that is set (it must hold one);
//   - else on the PATH, if its runc is one;
//   - else in the user's cache directory
//     (~/.cache/seed-e85c93d5-plugin/runc-v1.2.6), where it is built with
//     `CGO_ENABLED=1 go install github.com/opencontainers/runc@v1.2.6`
//     (through the module proxy; about 15-30 s, and gcc, which cgo needs
//     for runc's nsenter) if it is not there yet.
//
// An error means that there is none: a missing prerequisite.
var findRunc12 = sync.OnceValues(func() (runc12, error) {
	if dir := os.Getenv(runcDirEnv); dir != "" {
		v, err := runcVersionOf(filepath.Join(dir, "runc"))
		if err != nil {
			return runc12{}, fmt.Errorf("$%s=%s: %w", runcDirEnv, dir, err)
		}
		return runc12{dir: dir, desc: fmt.Sprintf("runc %s from $%s=%s", v, runcDirEnv, dir)}, nil
	}
	if path, err := exec.LookPath("runc"); err == nil {
		if v, err := runcVersionOf(path); err == nil {
			return runc12{desc: fmt.Sprintf("runc %s from the PATH (%s)", v, path)}, nil
		}
	}
	cache, err := os.UserCacheDir()
	if err != nil {
		return runc12{}, fmt.Errorf("no runc 1.2 on the PATH, no $%s, and no cache directory to build one in: %w", runcDirEnv, err)
	}
	dir := filepath.Join(cache, "seed-e85c93d5-plugin", "runc-"+runcVersion)
	if v, err := runcVersionOf(filepath.Join(dir, "runc")); err == nil {
		return runc12{dir: dir, desc: fmt.Sprintf("runc %s, built before in %s", v, dir)}, nil
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return runc12{}, err
	}
	start := time.Now()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	if _, err := goCmd(ctx, dir, []string{"GOBIN=" + dir, "CGO_ENABLED=1", "GOFLAGS=", "GOWORK=off"}, "install", runcModule+"@"+runcVersion); err != nil {
		return runc12{}, fmt.Errorf("no runc 1.2 on the PATH or in $%s, and building one failed: %w", runcDirEnv, err)
	}
	v, err := runcVersionOf(filepath.Join(dir, "runc"))
	if err != nil {
		return runc12{}, err
	}
	return runc12{dir: dir, desc: fmt.Sprintf("runc %s, built in %s in %.1f s", v, dir, time.Since(start).Seconds())}, nil
})

// runcVersionOf returns the version of the runc at path if it is 1.2 or
// later, and an error otherwise. It reads the version from the binary's
// build information (a `go install`ed runc reports "unknown" for
// --version) or else from `runc --version` (Debian's: "runc version
// 1.1.5+ds1").
func runcVersionOf(path string) (string, error) {
	version := ""
	if info, err := buildinfo.ReadFile(path); err == nil && info.Main.Path == runcModule {
		version = info.Main.Version
	}
	if !runcSemver.MatchString(version) {
		out, err := exec.Command(path, "--version").Output()
		if err != nil {
			return "", fmt.Errorf("%s --version: %w", path, err)
		}
		first, _, _ := strings.Cut(string(out), "\n")
		version = strings.TrimPrefix(first, "runc version ")
	}
	m := runcSemver.FindStringSubmatch(version)
	if m == nil {
		return "", fmt.Errorf("%s: version %q unknown", path, version)
	}
	major, _ := strconv.Atoi(m[1])
	minor, _ := strconv.Atoi(m[2])
	if major < 1 || major == 1 && minor < 2 {
		return "", errors.New(path + " is runc " + version + ", older than 1.2")
	}
	return version, nil
}

var runcSemver = regexp.MustCompile(`^v?(\d+)\.(\d+)\.\d+`)
