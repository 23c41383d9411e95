// Package env owns the rules of a plugin's environment as moby's Manager
// applies them: which "KEY=VALUE" entries of a spec its Set accepts for a
// plugin config (Settable), one entry per key as WithEnv leaves it at
// install (LastPerKey), what differs from the plugin's settings (Missing),
// and the keys alone, for log lines that must not carry values (Keys). The
// controller's Prepare calls them. They are pure functions.
package env

import (
	"strings"

	"github.com/docker/docker/api/types"
)

// Settable splits the spec's env entries into those moby's
// v2.Plugin.Set accepts for a plugin whose config declares declared, and
// the keys of the others: entries without "=" (Set would read them as a
// key without a value), keys with a dot (Set reads NAME.FIELD), undeclared
// keys and keys whose value is not settable.
func Settable(declared []types.PluginEnv, env []string) (settable, skipped []string) {
	for _, kv := range env {
		k, _, ok := strings.Cut(kv, "=")
		if ok && !strings.Contains(k, ".") && isSettable(declared, k) {
			settable = append(settable, kv)
		} else {
			skipped = append(skipped, k)
		}
	}
	return settable, skipped
}

func isSettable(declared []types.PluginEnv, key string) bool {
	for _, e := range declared {
		if e.Name == key {
			// moby's isSettable: without a field named, exactly one
			// settable field, and for env it must be "value".
			return len(e.Settable) == 1 && e.Settable[0] == "value"
		}
	}
	return false
}

// LastPerKey returns env with one entry per key, the last one, in the
// order of those last entries: what moby's WithEnv leaves at install, so
// that an unchanged spec with a repeated key never looks changed.
func LastPerKey(env []string) []string {
	last := make(map[string]int, len(env))
	for i, kv := range env {
		k, _, _ := strings.Cut(kv, "=")
		last[k] = i
	}
	out := make([]string, 0, len(last))
	for i, kv := range env {
		if k, _, _ := strings.Cut(kv, "="); last[k] == i {
			out = append(out, kv)
		}
	}
	return out
}

// Missing returns the entries of want ("KEY=VALUE") that have is lacking.
func Missing(have, want []string) []string {
	set := make(map[string]bool, len(have))
	for _, kv := range have {
		set[kv] = true
	}
	var missing []string
	for _, kv := range want {
		if !set[kv] {
			missing = append(missing, kv)
		}
	}
	return missing
}

// Keys returns the keys of env entries, for logging without values.
func Keys(env []string) []string {
	keys := make([]string, 0, len(env))
	for _, kv := range env {
		k, _, _ := strings.Cut(kv, "=")
		keys = append(keys, k)
	}
	return keys
}
