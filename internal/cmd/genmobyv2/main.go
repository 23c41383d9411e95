package main

import (
	"bytes"
	"errors"
	"flag"
	"fmt"
	"go/build/constraint"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"
)

func main() {
	root := flag.String("root", "", "repository root (default: the nearest folder above the working directory whose go.mod declares "+sourceModule+")")
	flag.Parse()
	if err := run(*root); err != nil {
		fmt.Fprintln(os.Stderr, "genmobyv2:", err)
		os.Exit(1)
	}
}

func run(root string) error {
	if root == "" {
		var err error
		if root, err = findRoot(); err != nil {
			return err
		}
	}
	g, err := plan(root)
	if err != nil {
		return err
	}
	return g.write(filepath.Join(root, targetDir))
}

// findRoot returns the nearest folder at or above the working directory
// whose go.mod declares sourceModule.
func findRoot() (string, error) {
	dir, err := os.Getwd()
	if err != nil {
		return "", err
	}
	for {
		data, err := os.ReadFile(filepath.Join(dir, "go.mod"))
		if err == nil && bytes.HasPrefix(data, []byte("module "+sourceModule+"\n")) {
			return dir, nil
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", errors.New("no go.mod of " + sourceModule + " at or above the working directory; pass -root")
		}
		dir = parent
	}
}

// generated is the content of the target folder that the generator owns:
// translated Go files and verbatim copies of testdata, by slash-separated
// path relative to the target folder.
type generated map[string][]byte

// plan translates every source file of the repository at root.
func plan(root string) (generated, error) {
	g := generated{}
	err := filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, err := filepath.Rel(root, p)
		if err != nil {
			return err
		}
		rel = filepath.ToSlash(rel)
		if d.IsDir() {
			if rel != "." && (strings.HasPrefix(d.Name(), ".") || slices.Contains(skipDirs, rel)) {
				return filepath.SkipDir
			}
			return nil
		}
		if !d.Type().IsRegular() {
			return nil
		}
		if slices.Contains(handWritten, rel) {
			if p := filepath.Join(root, targetDir, filepath.FromSlash(rel)); isGenerated(p) {
				return fmt.Errorf("%s: must be written by hand for moby v2, is generated", p)
			} else if _, err := os.Stat(p); err != nil {
				return fmt.Errorf("%s is not translated (handWritten): %w", rel, err)
			}
			return nil
		}
		src, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		switch {
		case inTestdata(rel):
			g[rel] = src
		case strings.HasSuffix(rel, ".go"):
			if excludedByTag(src, skipTag) {
				return nil
			}
			out, err := translate(rel, src)
			if err != nil {
				return err
			}
			g[rel] = out
		}
		return nil
	})
	return g, err
}

// excludedByTag reports whether setting tag leaves the Go source src out of
// the build: its //go:build constraint holds with every tag set except tag,
// and fails with every tag set.
func excludedByTag(src []byte, tag string) bool {
	for _, line := range strings.Split(string(src), "\n") {
		line = strings.TrimSpace(line)
		if strings.HasPrefix(line, "package ") {
			return false
		}
		if !constraint.IsGoBuild(line) {
			continue
		}
		expr, err := constraint.Parse(line)
		if err != nil {
			return false
		}
		with := expr.Eval(func(string) bool { return true })
		without := expr.Eval(func(t string) bool { return t != tag })
		return without && !with
	}
	return false
}

// inTestdata reports whether the slash-separated path rel lies in a testdata
// folder, which the go command ignores and the generator copies as it is.
func inTestdata(rel string) bool {
	return slices.Contains(strings.Split(rel, "/")[:strings.Count(rel, "/")], "testdata")
}

// write makes the target folder hold g: it writes every file of g and
// removes what an earlier run generated and g no longer has (Go files with
// the generated-code header, files in testdata folders). Other files, such
// as go.mod and README.md, are left alone.
func (g generated) write(target string) error {
	err := filepath.WalkDir(target, func(p string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		rel, err := filepath.Rel(target, p)
		if err != nil {
			return err
		}
		rel = filepath.ToSlash(rel)
		if _, ok := g[rel]; ok {
			return nil
		}
		if inTestdata(rel) || strings.HasSuffix(rel, ".go") && isGenerated(p) {
			return os.Remove(p)
		}
		return nil
	})
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		return err
	}
	names := make([]string, 0, len(g))
	for rel := range g {
		names = append(names, rel)
	}
	slices.Sort(names)
	for _, rel := range names {
		p := filepath.Join(target, filepath.FromSlash(rel))
		if old, err := os.ReadFile(p); err == nil && bytes.Equal(old, g[rel]) {
			continue
		}
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			return err
		}
		if err := os.WriteFile(p, g[rel], 0o644); err != nil {
			return err
		}
	}
	return removeEmptyDirs(target)
}

// isGenerated reports whether the Go file at p starts with this generator's
// header.
func isGenerated(p string) bool {
	data, err := os.ReadFile(p)
	return err == nil && bytes.HasPrefix(data, []byte("// Code generated by "+generatorDir+" "))
}

// removeEmptyDirs removes the folders under target that stale files left
// empty.
func removeEmptyDirs(target string) error {
	var dirs []string
	err := filepath.WalkDir(target, func(p string, d fs.DirEntry, err error) error {
		if err == nil && d.IsDir() && p != target {
			dirs = append(dirs, p)
		}
		return err
	})
	if err != nil {
		return err
	}
	for i := len(dirs) - 1; i >= 0; i-- { // deepest first
		if entries, err := os.ReadDir(dirs[i]); err == nil && len(entries) == 0 {
			if err := os.Remove(dirs[i]); err != nil {
				return err
			}
		}
	}
	return nil
}
