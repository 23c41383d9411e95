// Package keptplugins is the on-disk record of the plugins that a node's
// plugin controllers kept installed when the node shut down, instead of
// removing them. It is the memory that lets the first complete set of
// assignments after the restart tell a plugin whose service still has a task
// on the node (it stays) from one whose service is gone (it is removed).
//
// The record is one small JSON file, written atomically (a temporary file in
// the same directory, fsync, rename, fsync of the directory), so a crash
// leaves either the old record or the new one. A File is not safe for
// concurrent use; its one user serialises the calls.
package keptplugins

import (
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"
)

// FileName is the record's file name inside the directory given to Open.
const FileName = "swarm-plugins-kept.json"

// format is the record's version; a file of another version is refused.
const format = 1

// Plugin is one kept plugin.
type Plugin struct {
	// ID is the plugin's ID, which identifies it across the restart.
	ID string `json:"id"`
	// Name is the plugin's name as the Backend stores it ("vol:latest").
	Name string `json:"name"`
	// Service is the swarm service that owned it (its SwarmServiceID).
	Service string `json:"service"`
	// Task is the task whose removal kept it, for the logs.
	Task string `json:"task"`
	// Kept is when it was kept.
	Kept time.Time `json:"kept"`
}

type document struct {
	Format  int      `json:"format"`
	Plugins []Plugin `json:"plugins"`
}

// File is the record in one directory.
type File struct {
	path string
}

// Open returns the record kept in dir. It creates nothing: the file is
// written by the first Save that has a plugin to record.
func Open(dir string) *File {
	return &File{path: filepath.Join(dir, FileName)}
}

// Path returns the record's file path.
func (f *File) Path() string { return f.path }

// Load returns the kept plugins, sorted by ID; none if the file does not
// exist. A file that cannot be read or parsed is an error that names it.
func (f *File) Load() ([]Plugin, error) {
	b, err := os.ReadFile(f.path)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("reading kept-plugin record: %w", err)
	}
	var doc document
	if err := json.Unmarshal(b, &doc); err != nil {
		return nil, fmt.Errorf("kept-plugin record %s is not valid: %w", f.path, err)
	}
	if doc.Format != format {
		return nil, fmt.Errorf("kept-plugin record %s has format %d, want %d", f.path, doc.Format, format)
	}
	for i, p := range doc.Plugins {
		if p.ID == "" {
			return nil, fmt.Errorf("kept-plugin record %s: entry %d has no plugin ID", f.path, i)
		}
	}
	slices.SortFunc(doc.Plugins, func(a, b Plugin) int { return strings.Compare(a.ID, b.ID) })
	return doc.Plugins, nil
}

// Save replaces the record with plugins. With none, it removes the file.
func (f *File) Save(plugins []Plugin) error {
	if len(plugins) == 0 {
		if err := os.Remove(f.path); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return fmt.Errorf("removing kept-plugin record: %w", err)
		}
		return nil
	}
	b, err := json.MarshalIndent(document{Format: format, Plugins: plugins}, "", "\t")
	if err != nil {
		return fmt.Errorf("encoding kept-plugin record: %w", err)
	}
	dir := filepath.Dir(f.path)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("writing kept-plugin record: %w", err)
	}
	tmp, err := os.CreateTemp(dir, FileName+".*")
	if err != nil {
		return fmt.Errorf("writing kept-plugin record: %w", err)
	}
	defer os.Remove(tmp.Name()) // a no-op once renamed
	_, err = tmp.Write(append(b, '\n'))
	if err == nil {
		err = tmp.Sync()
	}
	if cerr := tmp.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(tmp.Name(), f.path)
	}
	if err != nil {
		return fmt.Errorf("writing kept-plugin record: %w", err)
	}
	if d, err := os.Open(dir); err == nil {
		_ = d.Sync() // best effort: the rename is durable once the directory is
		d.Close()
	}
	return nil
}

// SetAside moves a record that Load refused out of the way, to
// "swarm-plugins-kept.unreadable-TIME.json" beside it, and returns the new
// path: the record is never overwritten or deleted, so a person can still
// read what it listed (a damaged file, or one of a later format after a
// downgrade), and the next Save starts a new one.
func (f *File) SetAside(now time.Time) (string, error) {
	aside := filepath.Join(filepath.Dir(f.path), "swarm-plugins-kept.unreadable-"+now.UTC().Format("20060102T150405.000000000Z")+".json")
	if err := os.Rename(f.path, aside); err != nil {
		return "", fmt.Errorf("setting the kept-plugin record aside: %w", err)
	}
	return aside, nil
}

// RemoveTemps removes the temporary files a Save left behind when the
// process died before its rename ("swarm-plugins-kept.json.*"). Call it
// before the record's one user starts.
func (f *File) RemoveTemps() error {
	temps, err := filepath.Glob(f.path + ".*")
	if err != nil {
		return err
	}
	var errs []error
	for _, t := range temps {
		if err := os.Remove(t); err != nil && !errors.Is(err, fs.ErrNotExist) {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}
