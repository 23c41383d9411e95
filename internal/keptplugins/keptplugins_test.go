package keptplugins_test

import (
	"os"
	"path/filepath"
	"testing"
	"time"

	"gotest.tools/v3/assert"

	"github.com/seed-e85c93d5/plugin/internal/keptplugins"
)

func TestSaveLoad(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "not-yet")
	f := keptplugins.Open(dir)
	assert.Equal(t, f.Path(), filepath.Join(dir, keptplugins.FileName))

	got, err := f.Load()
	assert.NilError(t, err)
	assert.Assert(t, got == nil, "no file: nothing kept")

	kept := time.Date(2026, 12, 3, 10, 0, 0, 0, time.UTC)
	want := []keptplugins.Plugin{
		{ID: "bbb", Name: "vol:latest", Service: "svc-1", Task: "task-1", Kept: kept},
		{ID: "aaa", Name: "other:1", Service: "svc-2", Task: "task-2", Kept: kept},
	}
	assert.NilError(t, f.Save(want))
	got, err = f.Load()
	assert.NilError(t, err)
	assert.DeepEqual(t, got, []keptplugins.Plugin{want[1], want[0]}) // sorted by ID
	entries, err := os.ReadDir(dir)
	assert.NilError(t, err)
	assert.Equal(t, len(entries), 1, "no temporary file is left")

	assert.NilError(t, f.Save(nil))
	_, err = os.Stat(f.Path())
	assert.Assert(t, os.IsNotExist(err), "nothing to keep: no file")
	assert.NilError(t, f.Save(nil), "removing a missing record is fine")
}

func TestLoadRefusesWhatItCannotTrust(t *testing.T) {
	for _, tc := range []struct{ name, content, want string }{
		{"not JSON", "{", "is not valid"},
		{"another format", `{"format": 2, "plugins": []}`, "has format 2, want 1"},
		{"an entry without ID", `{"format": 1, "plugins": [{"name": "vol:latest"}]}`, "entry 0 has no plugin ID"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f := keptplugins.Open(t.TempDir())
			assert.NilError(t, os.WriteFile(f.Path(), []byte(tc.content), 0o600))
			_, err := f.Load()
			assert.ErrorContains(t, err, tc.want)
			assert.ErrorContains(t, err, f.Path())
		})
	}
}

func TestSaveReportsAnUnwritableDirectory(t *testing.T) {
	file := filepath.Join(t.TempDir(), "file")
	assert.NilError(t, os.WriteFile(file, nil, 0o600))
	err := keptplugins.Open(filepath.Join(file, "dir")).Save([]keptplugins.Plugin{{ID: "a"}})
	assert.ErrorContains(t, err, "writing kept-plugin record")
}
