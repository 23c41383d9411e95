//go:build linux

package dockerd_test

import (
	"bytes"
	"context"
	"crypto/sha256"
	"debug/buildinfo"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"
)

const (
	ourModule     = "github.com/seed-e85c93d5/plugin"
	dockerModule  = "github.com/docker/docker"
	dockerVersion = "v28.3.0+incompatible"
	// upstreamImport is the package the fork replaces with ourModule.
	upstreamImport = "github.com/docker/docker/daemon/cluster/controllers/plugin"
	// patchName is the optional patch to moby's source that the fork gets
	// after the import swap, if integration/dockerd holds it.
	patchName = "daemon-v28.3.0.patch"
)

// swappedFiles are the files of moby v28.3.0 that import upstreamImport.
var swappedFiles = []string{
	"daemon/cluster/executor/container/executor.go",
	"daemon/cluster/cluster.go",
}

// flavor names one of the two dockerd builds.
type flavor string

const (
	stock flavor = "stock" // moby v28.3.0 as released
	fork  flavor = "fork"  // the same tree with this repository's controller
)

// binaries are the programs a run needs, built once per test binary run
// (see shared) into dir.
type binaries struct {
	dir     string
	dockerd map[flavor]string
	plugin  string // volplugin, static
	// steps says what was built and how long each took, for the log.
	steps []timing
}

type timing struct {
	what string
	took time.Duration
}

func (b *binaries) String() string {
	var s strings.Builder
	for i, st := range b.steps {
		if i > 0 {
			s.WriteString(", ")
		}
		fmt.Fprintf(&s, "%s %.1f s", st.what, st.took.Seconds())
	}
	return s.String()
}

// build builds both dockerd flavors from one copy of moby's source and the
// plugin binary, under a new directory of its own. root is this
// repository's module root.
//
// Builds run with -trimpath, so their cache keys do not depend on the
// temporary directory and a second run takes seconds. They share the
// caller's GOCACHE and module cache.
func build(ctx context.Context, root string) (b *binaries, err error) {
	dir, err := os.MkdirTemp("", "dockerd-build-")
	if err != nil {
		return nil, err
	}
	b = &binaries{dir: dir, dockerd: map[flavor]string{}}
	defer func() {
		if err != nil {
			_ = os.RemoveAll(dir)
		}
	}()
	timed := func(what string, fn func() error) error {
		start := time.Now()
		if err := fn(); err != nil {
			return fmt.Errorf("%s: %w", what, err)
		}
		b.steps = append(b.steps, timing{what, time.Since(start)})
		return nil
	}

	src := filepath.Join(dir, "src")
	if err := timed("moby source", func() error { return copyMobySource(ctx, root, src) }); err != nil {
		return nil, err
	}
	// The source tree is a module of its own: -mod=mod lets the go command
	// complete its go.sum for the fork's extra requirement.
	treeEnv := []string{"GOFLAGS=-mod=mod -buildvcs=false"}
	for _, f := range []flavor{stock, fork} {
		if f == fork {
			if err := makeFork(ctx, src, root); err != nil {
				return nil, err
			}
		}
		out := filepath.Join(dir, "dockerd-"+string(f))
		if err := timed("dockerd "+string(f), func() error { return goBuild(ctx, src, out, "./cmd/dockerd", treeEnv...) }); err != nil {
			return nil, err
		}
		if err := checkController(out, f == fork); err != nil {
			return nil, err
		}
		b.dockerd[f] = out
	}
	b.plugin = filepath.Join(dir, "volplugin")
	if err := timed("volplugin", func() error {
		return goBuild(ctx, root, b.plugin, "./integration/dockerd/volplugin", "GOFLAGS=-mod=readonly -buildvcs=false")
	}); err != nil {
		return nil, err
	}
	return b, nil
}

// goBuild builds pkg in dir to out, static and with -trimpath.
func goBuild(ctx context.Context, dir, out, pkg string, env ...string) error {
	_, err := goCmd(ctx, dir, append([]string{"CGO_ENABLED=0", "GOWORK=off"}, env...), "build", "-trimpath", "-o", out, pkg)
	return err
}

// goCmd runs the go command in dir with env added to this process's
// environment and returns its standard output. `go test` puts its own
// GOROOT/bin first on the PATH of tests, so this is the go command that
// runs the test.
func goCmd(ctx context.Context, dir string, env []string, args ...string) ([]byte, error) {
	cmd := exec.CommandContext(ctx, "go", args...)
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), env...)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return nil, fmt.Errorf("go %s: %w\n%s", strings.Join(args, " "), err, tail(stderr.String(), 40))
	}
	return out, nil
}

// moduleRoot returns the directory of the main module, this repository's
// root, as the go command sees it from the test's working directory.
func moduleRoot(ctx context.Context) (string, error) {
	out, err := goCmd(ctx, ".", nil, "env", "GOMOD")
	if err != nil {
		return "", err
	}
	gomod := strings.TrimSpace(string(out))
	if gomod == "" || gomod == os.DevNull {
		return "", errors.New("not inside a Go module")
	}
	return filepath.Dir(gomod), nil
}

// copyMobySource copies moby's module source from the module cache to dst,
// writable, with vendor.mod and vendor.sum as go.mod and go.sum and without
// vendor/ (NOTES.md, "A forked dockerd on this machine").
func copyMobySource(ctx context.Context, root, dst string) error {
	out, err := goCmd(ctx, root, nil, "mod", "download", "-json", dockerModule+"@"+dockerVersion)
	if err != nil {
		return err
	}
	var mod struct{ Dir, Error string }
	if err := json.Unmarshal(out, &mod); err != nil {
		return fmt.Errorf("go mod download: %w", err)
	}
	if mod.Error != "" || mod.Dir == "" {
		return fmt.Errorf("go mod download %s@%s: %q", dockerModule, dockerVersion, mod.Error)
	}
	if err := copyTree(mod.Dir, dst, "vendor"); err != nil {
		return err
	}
	for _, name := range []string{"mod", "sum"} {
		if err := os.Rename(filepath.Join(dst, "vendor."+name), filepath.Join(dst, "go."+name)); err != nil {
			return err
		}
	}
	return nil
}

// copyTree copies the regular files, directories and symbolic links of src
// to dst, skipping the top-level directory skip. Copies are writable by
// their owner.
func copyTree(src, dst, skip string) error {
	return filepath.WalkDir(src, func(path string, e fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, err := filepath.Rel(src, path)
		if err != nil {
			return err
		}
		if e.IsDir() && rel == skip {
			return filepath.SkipDir
		}
		target := filepath.Join(dst, rel)
		switch {
		case e.IsDir():
			return os.MkdirAll(target, 0o755)
		case e.Type()&fs.ModeSymlink != 0:
			link, err := os.Readlink(path)
			if err != nil {
				return err
			}
			return os.Symlink(link, target)
		case e.Type().IsRegular():
			info, err := e.Info()
			if err != nil {
				return err
			}
			return copyFile(path, target, info.Mode().Perm()|0o200)
		}
		return nil
	})
}

func copyFile(src, dst string, perm fs.FileMode) error {
	in, err := os.Open(src)
	if err != nil {
		return err
	}
	defer in.Close()
	out, err := os.OpenFile(dst, os.O_WRONLY|os.O_CREATE|os.O_EXCL, perm)
	if err != nil {
		return err
	}
	if _, err := io.Copy(out, in); err != nil {
		out.Close()
		return err
	}
	return out.Close()
}

// makeFork turns the stock tree at src into the fork: the two imports of
// upstream's controller become this module, required and replaced by the
// repository at root, and integration/dockerd/daemon-v28.3.0.patch is
// applied if it exists.
func makeFork(ctx context.Context, src, root string) error {
	for _, f := range swappedFiles {
		path := filepath.Join(src, f)
		code, err := os.ReadFile(path)
		if err != nil {
			return err
		}
		old := []byte(`"` + upstreamImport + `"`)
		if n := bytes.Count(code, old); n != 1 {
			return fmt.Errorf("%s imports %s %d times, want once", f, upstreamImport, n)
		}
		code = bytes.Replace(code, old, []byte(`"`+ourModule+`"`), 1)
		if err := os.WriteFile(path, code, 0o644); err != nil {
			return err
		}
	}
	if _, err := goCmd(ctx, src, nil, "mod", "edit",
		"-require="+ourModule+"@v0.0.0-00010101000000-000000000000",
		"-replace="+ourModule+"="+root); err != nil {
		return err
	}
	patch := filepath.Join(root, "integration", "dockerd", patchName)
	if _, err := os.Stat(patch); errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	cmd := exec.CommandContext(ctx, "patch", "-p1", "--forward", "--batch", "-i", patch)
	cmd.Dir = src
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("applying %s: %w\n%s", patchName, err, out)
	}
	return nil
}

// checkController checks from the build information of the dockerd at path
// that it embeds this module (replaced by the local repository) exactly
// when it is the fork.
func checkController(path string, wantOurs bool) error {
	info, err := buildinfo.ReadFile(path)
	if err != nil {
		return err
	}
	ours := false
	for _, dep := range info.Deps {
		if dep.Path == ourModule {
			ours = dep.Replace != nil
		}
	}
	if ours != wantOurs {
		return fmt.Errorf("%s: embeds %s replaced by the repository: %v, want %v", path, ourModule, ours, wantOurs)
	}
	return nil
}

// sourceDigest reads every file of this module that goes into the fork or
// the plugin (the Go files of their packages from this module, go.mod,
// go.sum and the patch) and returns a digest of them.
//
// Reading them through the os package is also what makes `go test`'s
// result cache sound for this package: the test binary itself does not
// import the controller, but go test records the files a test opens and
// reruns it when one of them changes.
func sourceDigest(ctx context.Context, root string) (string, error) {
	out, err := goCmd(ctx, root, []string{"GOFLAGS=-mod=readonly"}, "list", "-deps",
		"-f", `{{if .Module}}{{if eq .Module.Path "`+ourModule+`"}}{{.Dir}}{{range .GoFiles}} {{.}}{{end}}{{end}}{{end}}`,
		".", "./integration/dockerd/volplugin")
	if err != nil {
		return "", err
	}
	files := []string{"go.mod", "go.sum", filepath.Join("integration", "dockerd", patchName)}
	for _, line := range strings.Split(strings.TrimSpace(string(out)), "\n") {
		fields := strings.Fields(line)
		for _, f := range fields[1:] {
			rel, err := filepath.Rel(root, filepath.Join(fields[0], f))
			if err != nil {
				return "", err
			}
			files = append(files, rel)
		}
	}
	h := sha256.New()
	for _, f := range files {
		content, err := os.ReadFile(filepath.Join(root, f))
		if errors.Is(err, fs.ErrNotExist) && f == files[2] {
			continue // no patch
		}
		if err != nil {
			return "", err
		}
		fmt.Fprintf(h, "%s %d\n", f, len(content))
		h.Write(content)
	}
	return hex.EncodeToString(h.Sum(nil))[:12], nil
}

// tail returns the last n lines of s.
func tail(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}
