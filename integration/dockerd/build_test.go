//go:build linux

package dockerd_test

import (
	"bytes"
	"context"
	"crypto/sha256"
	"debug/buildinfo"
	"debug/elf"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"sync"
	"time"
)

// ourModule is this repository's root module: the controller swapped into
// the v28 fork, and the module volplugin is built in.
const ourModule = "github.com/seed-e85c93d5/plugin"

// swappedFiles are the files of every release's source that import its
// upstream controller and must be swapped: the executor, and the cluster,
// which names plugin.Backend. The fork swaps every importer; these must be
// among them.
var swappedFiles = []string{
	"daemon/cluster/executor/container/executor.go",
	"daemon/cluster/cluster.go",
}

// flavor is how a dockerd is built from a release's source: as released
// (stock) or with this repository's controller swapped in (fork).
type flavor string

const (
	stock flavor = "stock" // as released
	fork  flavor = "fork"  // with this repository's controller
)

// mobyRelease is a release of moby whose dockerd the harness builds, stock
// and fork. What differs between releases is in one file per release
// (moby_v28_test.go, moby_v2_test.go).
type mobyRelease struct {
	// name is the first part of its builds' names ("v28": "v28-stock",
	// "v28-fork"); title names it in messages.
	name, title string
	// module and version are the daemon's module, in the module cache.
	module, version string
	// upstream is the controller package the fork replaces with ours, the
	// module (a package at its root) at oursDir under the repository root.
	upstream, ours, oursDir string
	// patch is the file in integration/dockerd the fork gets applied after
	// the swap, if it exists.
	patch string
	// skip is a top-level directory of the module source not copied.
	skip string
	// prepare, if set, turns the copied module source into a module tree
	// the go command builds.
	prepare func(src string) error
	// runc12 says that its plugins need runc 1.2 or later.
	runc12 bool
	// declared is what a scenario declares that stock dockerd of this
	// release does (nil: nothing, the result is only recorded).
	declared func(*scenario) *outcome
}

// releases are the releases the harness builds, in the order their daemons
// run.
var releases = []*mobyRelease{mobyV28, mobyV2}

// dockerdBuild is one dockerd: a release built in a flavor. It is built
// once per test binary run, when a test first needs it (ensure).
type dockerdBuild struct {
	moby   *mobyRelease
	flavor flavor
	// runcDir, if set, goes first on the PATH of its daemons' containerd
	// (whose shim runs runc) and dockerd: the directory of a runc 1.2
	// (see runc_test.go).
	runcDir string

	once      sync.Once
	path      string        // the binary, once built
	took      time.Duration // to copy the source, swap, build and check
	importers []string      // the fork's files that imported upstream
	err       error
}

// name is the build's name, a subtest of TestDockerd: "v28-stock".
func (b *dockerdBuild) name() string { return b.moby.name + "-" + string(b.flavor) }

// dockerds are every release's stock and fork builds, in the order
// TestDockerd runs them.
var dockerds = func() []*dockerdBuild {
	var bs []*dockerdBuild
	for _, r := range releases {
		bs = append(bs, &dockerdBuild{moby: r, flavor: stock}, &dockerdBuild{moby: r, flavor: fork})
	}
	return bs
}()

// binaries are the programs every daemon shares, built once per test
// binary run (see shared) into dir, where the dockerd builds go too.
type binaries struct {
	dir    string
	plugin string // volplugin, static
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

// buildShared builds the plugin binary under a new directory of its own,
// where the dockerd builds go later. root is this repository's module root.
func buildShared(ctx context.Context, root string) (b *binaries, err error) {
	dir, err := os.MkdirTemp("", "dockerd-build-")
	if err != nil {
		return nil, err
	}
	b = &binaries{dir: dir, plugin: filepath.Join(dir, "volplugin")}
	start := time.Now()
	if err := goBuild(ctx, root, b.plugin, "./integration/dockerd/volplugin", "GOFLAGS=-mod=readonly -buildvcs=false"); err != nil {
		_ = os.RemoveAll(dir)
		return nil, fmt.Errorf("volplugin: %w", err)
	}
	b.steps = append(b.steps, timing{"volplugin", time.Since(start)})
	return b, nil
}

// ensure builds the dockerd into dir the first time it is called and
// returns the build's error, then and at every later call.
//
// Each build copies the release's module source from the module cache to a
// directory of its own (removed after the build); the fork then swaps the
// controller and applies the patch. Builds run with -trimpath, so their
// cache keys do not depend on that directory: the fork reuses what stock
// built, and a second run takes seconds. They share the caller's GOCACHE
// and module cache.
func (b *dockerdBuild) ensure(ctx context.Context, root, dir string) error {
	b.once.Do(func() {
		start := time.Now()
		b.err = b.build(ctx, root, dir)
		b.took = time.Since(start)
		if b.err != nil {
			b.err = fmt.Errorf("building dockerd %s: %w", b.name(), b.err)
		}
	})
	return b.err
}

func (b *dockerdBuild) build(ctx context.Context, root, dir string) error {
	r := b.moby
	src := filepath.Join(dir, "src-"+b.name())
	defer os.RemoveAll(src)
	if err := copyModuleSource(ctx, root, r, src); err != nil {
		return err
	}
	if b.flavor == fork {
		var err error
		if b.importers, err = makeFork(ctx, src, root, r); err != nil {
			return err
		}
	}
	out := filepath.Join(dir, "dockerd-"+b.name())
	// The source tree is a module of its own: -mod=mod lets the go command
	// complete its go.sum for the fork's extra requirement.
	if err := goBuild(ctx, src, out, "./cmd/dockerd", "GOFLAGS=-mod=mod -buildvcs=false"); err != nil {
		return err
	}
	if err := checkController(out, root, r, b.flavor == fork); err != nil {
		return err
	}
	b.path = out
	return nil
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

// copyModuleSource copies the module source of r from the module cache to
// dst, writable, without r.skip, and prepares it (r.prepare). The module is
// downloaded from the directory of the module of ours that requires it.
func copyModuleSource(ctx context.Context, root string, r *mobyRelease, dst string) error {
	out, err := goCmd(ctx, filepath.Join(root, r.oursDir), nil, "mod", "download", "-json", r.module+"@"+r.version)
	if err != nil {
		return err
	}
	var mod struct{ Dir, Error string }
	if err := json.Unmarshal(out, &mod); err != nil {
		return fmt.Errorf("go mod download: %w", err)
	}
	if mod.Error != "" || mod.Dir == "" {
		return fmt.Errorf("go mod download %s@%s: %q", r.module, r.version, mod.Error)
	}
	if err := copyTree(mod.Dir, dst, r.skip); err != nil {
		return err
	}
	if r.prepare != nil {
		return r.prepare(dst)
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

// makeFork turns the stock tree of r at src into the fork: every file that
// imports r's upstream controller (outside that package; swappedFiles must
// be among them) imports r.ours instead, which go.mod requires and replaces
// by its directory in the repository at root, and r's patch is applied if
// integration/dockerd holds it. It returns the files swapped.
func makeFork(ctx context.Context, src, root string, r *mobyRelease) ([]string, error) {
	own := filepath.FromSlash(strings.TrimPrefix(r.upstream, r.module+"/"))
	old := []byte(`"` + r.upstream + `"`)
	var importers []string
	err := filepath.WalkDir(src, func(path string, e fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, err := filepath.Rel(src, path)
		if err != nil {
			return err
		}
		if e.IsDir() && rel == own {
			return filepath.SkipDir
		}
		if !e.Type().IsRegular() || !strings.HasSuffix(rel, ".go") {
			return nil
		}
		code, err := os.ReadFile(path)
		if err != nil {
			return err
		}
		switch n := bytes.Count(code, old); n {
		case 0:
			return nil
		case 1:
		default:
			return fmt.Errorf("%s imports %s %d times, want once", rel, r.upstream, n)
		}
		importers = append(importers, filepath.ToSlash(rel))
		return os.WriteFile(path, bytes.Replace(code, old, []byte(`"`+r.ours+`"`), 1), 0o644)
	})
	if err != nil {
		return nil, err
	}
	for _, f := range swappedFiles {
		if !slices.Contains(importers, f) {
			return nil, fmt.Errorf("%s no longer imports %s (importers: %v)", f, r.upstream, importers)
		}
	}
	if _, err := goCmd(ctx, src, nil, "mod", "edit",
		"-require="+r.ours+"@v0.0.0-00010101000000-000000000000",
		"-replace="+r.ours+"="+filepath.Join(root, r.oursDir)); err != nil {
		return nil, err
	}
	patch := filepath.Join(root, "integration", "dockerd", r.patch)
	if _, err := os.Stat(patch); errors.Is(err, fs.ErrNotExist) {
		return importers, nil
	}
	cmd := exec.CommandContext(ctx, "patch", "-p1", "--forward", "--batch", "-i", patch)
	cmd.Dir = src
	if out, err := cmd.CombinedOutput(); err != nil {
		return nil, fmt.Errorf("applying %s: %w\n%s", r.patch, err, out)
	}
	return importers, nil
}

// checkController checks that the dockerd at path, built from r (root is
// the repository), links the controller it should. The fork embeds r.ours,
// replaced by the repository (its build information says so), links its
// Controller, every function of it that r's patch calls (RestartSafe,
// ShuttingDown, LeftSwarm), and no symbol of upstream's package; stock
// links upstream's Controller and nothing of this repository.
func checkController(path, root string, r *mobyRelease, isFork bool) error {
	info, err := buildinfo.ReadFile(path)
	if err != nil {
		return err
	}
	ours := false
	for _, dep := range info.Deps {
		if dep.Path == r.ours {
			ours = dep.Replace != nil
		}
	}
	if ours != isFork {
		return fmt.Errorf("%s: embeds %s replaced by the repository: %v, want %v", path, r.ours, ours, isFork)
	}
	f, err := elf.Open(path)
	if err != nil {
		return err
	}
	defer f.Close()
	syms, err := f.Symbols()
	if err != nil {
		return fmt.Errorf("%s: %w", path, err)
	}
	linked := func(prefix string) bool {
		return slices.ContainsFunc(syms, func(s elf.Symbol) bool { return strings.HasPrefix(s.Name, prefix) })
	}
	want := map[string]bool{r.upstream + ".(*Controller).Prepare": !isFork, r.upstream + ".": !isFork, ourModule: isFork}
	if isFork {
		want[r.ours+".(*Controller).Prepare"] = true
		calls, err := patchCalls(filepath.Join(root, "integration", "dockerd", r.patch))
		if err != nil {
			return err
		}
		for _, fn := range calls {
			// A thin root entry (ShuttingDown is one line) may be inlined
			// into the daemon: then the mechanism it calls, of the same
			// name in internal/restart, is what the binary links.
			if !linked(r.ours+"."+fn) && !linked(r.ours+"/internal/restart."+fn) {
				return fmt.Errorf("%s: links neither %s.%s nor its mechanism %s/internal/restart.%s, which the patch calls", path, r.ours, fn, r.ours, fn)
			}
		}
	}
	for prefix, w := range want {
		if linked(prefix) != w {
			return fmt.Errorf("%s: links a symbol %s...: %v, want %v", path, prefix, !w, w)
		}
	}
	return nil
}

// patchCalls returns the functions of the controller's package ("plugin.")
// that the lines the patch at path adds call, or none if there is no
// patch.
func patchCalls(path string) ([]string, error) {
	patch, err := os.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	var calls []string
	for _, line := range strings.Split(string(patch), "\n") {
		if !strings.HasPrefix(line, "+") || strings.HasPrefix(line, "+++") {
			continue
		}
		for _, m := range patchCall.FindAllStringSubmatch(line, -1) {
			if !slices.Contains(calls, m[1]) {
				calls = append(calls, m[1])
			}
		}
	}
	return calls, nil
}

var patchCall = regexp.MustCompile(`\bplugin\.([A-Z]\w*)\(`)

// sourceDigest reads every file of this repository that goes into a fork
// or the plugin (the Go files of their packages from the module of ours of
// each release, its go.mod and go.sum, and the release's patch) and returns
// a digest of them.
//
// Reading them through the os package is also what makes `go test`'s
// result cache sound for this package: the test binary itself does not
// import the controller, but go test records the files a test opens and
// reruns it when one of them changes.
func sourceDigest(ctx context.Context, root string) (string, error) {
	type listing struct {
		dir, module string
		pkgs        []string
	}
	listings := []listing{{".", ourModule, []string{"./integration/dockerd/volplugin"}}}
	var optional []string // the patches: a release may have none
	for _, r := range releases {
		listings = append(listings, listing{r.oursDir, r.ours, []string{"."}})
		optional = append(optional, filepath.Join("integration", "dockerd", r.patch))
	}
	var files []string
	for _, l := range listings {
		out, err := goCmd(ctx, filepath.Join(root, l.dir), []string{"GOFLAGS=-mod=readonly"}, append([]string{"list", "-deps",
			"-f", `{{if .Module}}{{if eq .Module.Path "` + l.module + `"}}{{.Dir}}{{range .GoFiles}} {{.}}{{end}}{{end}}{{end}}`}, l.pkgs...)...)
		if err != nil {
			return "", err
		}
		files = append(files, filepath.Join(l.dir, "go.mod"), filepath.Join(l.dir, "go.sum"))
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
	}
	slices.Sort(files)
	files = slices.Compact(files)
	h := sha256.New()
	for _, f := range append(files, optional...) {
		content, err := os.ReadFile(filepath.Join(root, f))
		if errors.Is(err, fs.ErrNotExist) && slices.Contains(optional, f) {
			continue
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
