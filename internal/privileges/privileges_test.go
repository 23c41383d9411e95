package privileges

import (
	"fmt"
	"math/rand/v2"
	"slices"
	"testing"

	"github.com/docker/docker/api/types"
	"gotest.tools/v3/assert"
	is "gotest.tools/v3/assert/cmp"
)

func ptr(s string) *string { return &s }

func p(name string, values ...string) types.PluginPrivilege {
	return types.PluginPrivilege{Name: name, Value: values}
}

func list(ps ...types.PluginPrivilege) types.PluginPrivileges { return ps }

func TestRequiredAsComputePrivileges(t *testing.T) {
	var c types.PluginConfig
	assert.Check(t, is.Len(Required(c), 0), "an empty config needs nothing")
	for _, typ := range []string{"", "null", "bridge"} {
		c.Network.Type = typ
		assert.Check(t, is.Len(Required(c), 0), "network %q", typ)
	}
	c = types.PluginConfig{
		Network: types.PluginConfigNetwork{Type: "host"},
		IpcHost: true,
		PidHost: true,
		Mounts:  []types.PluginMount{{Source: ptr("/a")}, {Name: "no source"}, {Source: ptr("/b")}},
		Linux: types.PluginConfigLinux{
			Devices:         []types.PluginDevice{{Path: ptr("/dev/fuse")}, {Name: "no path"}},
			AllowAllDevices: true,
			Capabilities:    []string{"CAP_SYS_ADMIN", "CAP_NET_ADMIN"},
		},
	}
	got := Required(c)
	want := []string{
		"network: [host]", "host ipc namespace: [true]", "host pid namespace: [true]",
		"mount: [/a]", "mount: [/b]", "device: [/dev/fuse]", "allow-all-devices: [true]",
		"capabilities: [CAP_SYS_ADMIN CAP_NET_ADMIN]",
	}
	assert.Assert(t, is.Len(got, len(want)))
	for i, w := range want {
		assert.Check(t, is.Equal(Format(got[i:i+1]), w))
		assert.Check(t, got[i].Description != "", "%s has moby's description", got[i].Name)
	}
	got[len(got)-1].Value[0] = "changed"
	assert.Check(t, is.Equal(c.Linux.Capabilities[0], "CAP_SYS_ADMIN"), "Required copies the capabilities")
}

func TestDiff(t *testing.T) {
	for _, tc := range []struct {
		name              string
		required, granted types.PluginPrivileges
		missing, extra    string
	}{
		{"equal", list(p("network", "host")), list(p("network", "host")), "", ""},
		{"none", nil, list(), "", ""},
		{"order of privileges", list(p("network", "host"), p("mount", "/a")), list(p("mount", "/a"), p("network", "host")), "", ""},
		{"order of values", list(p("capabilities", "A", "B")), list(p("capabilities", "B", "A")), "", ""},
		{"order of equal names", list(p("mount", "/a"), p("mount", "/b")), list(p("mount", "/b"), p("mount", "/a")), "", ""},
		{"nil equals empty", list(p("x")), list(types.PluginPrivilege{Name: "x", Value: []string{}}), "", ""},
		{"description ignored", list(types.PluginPrivilege{Name: "network", Description: "d", Value: []string{"host"}}), list(p("network", "host")), "", ""},
		{"first not granted", list(p("capabilities", "CAP_SYS_ADMIN"), p("network", "host")), list(p("capabilities", "CAP_CHOWN"), p("network", "host")),
			"capabilities: [CAP_SYS_ADMIN]", "capabilities: [CAP_CHOWN]"},
		{"single", list(p("capabilities", "CAP_SYS_ADMIN")), list(p("mount", "/tmp")), "capabilities: [CAP_SYS_ADMIN]", "mount: [/tmp]"},
		{"duplicate required once granted", list(p("mount", "/a"), p("mount", "/a")), list(p("mount", "/a")), "mount: [/a]", ""},
		{"duplicate granted", list(p("mount", "/a")), list(p("mount", "/a"), p("mount", "/a")), "", "mount: [/a]"},
		{"a value more", list(p("capabilities", "A", "B")), list(p("capabilities", "A")), "capabilities: [A B]", "capabilities: [A]"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			missing, extra := Diff(tc.required, tc.granted)
			assert.Check(t, is.Equal(Format(missing), tc.missing))
			assert.Check(t, is.Equal(Format(extra), tc.extra))
		})
	}
}

// Each difference between docker v28's comparison and moby v2's, and
// Diff's answer, which always sides with moby v2 where it accepts.
func TestDockerV28AgainstMobyV2(t *testing.T) {
	for _, tc := range []struct {
		name              string
		required, granted types.PluginPrivileges
		v28, v2, diff     bool
	}{
		{"index 0 not compared", list(p("capabilities", "CAP_SYS_ADMIN"), p("network", "host")), list(p("capabilities", "CAP_CHOWN"), p("network", "host")), true, false, false},
		{"a single privilege not compared", list(p("capabilities", "CAP_SYS_ADMIN")), list(p("mount", "/tmp")), true, false, false},
		{"values in another order", list(p("a", "x"), p("capabilities", "A", "B")), list(p("a", "x"), p("capabilities", "B", "A")), false, true, true},
		{"values sorted by a swap", list(p("b", "x"), p("a", "B", "A")), list(p("a", "A", "B"), p("b", "x")), true, true, true},
		{"nil against empty", list(p("a"), p("b")), list(p("a"), types.PluginPrivilege{Name: "b", Value: []string{}}), false, true, true},
		{"duplicates against distinct", list(p("a", "x"), p("mount", "/a"), p("mount", "/a")), list(p("a", "x"), p("mount", "/a"), p("mount", "/b")), false, false, false},
		{"duplicate at index 0", list(p("mount", "/a"), p("mount", "/b")), list(p("mount", "/c"), p("mount", "/b")), true, false, false},
		{"lengths differ", list(p("a")), nil, false, false, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			assert.Check(t, is.Equal(EqualDockerV28(tc.required, tc.granted), tc.v28), "docker v28")
			assert.Check(t, is.Equal(EqualMobyV2(tc.required, tc.granted), tc.v2), "moby v2")
			missing, extra := Diff(tc.required, tc.granted)
			assert.Check(t, is.Equal(len(missing)+len(extra) == 0, tc.diff), "Diff")
		})
	}
}

// Diff never refuses what moby v2 accepts, over every grant of up to three
// privileges drawn from a small alphabet.
func TestDiffAcceptsWhatMobyV2Accepts(t *testing.T) {
	alphabet := []types.PluginPrivilege{
		p("mount", "/a"), p("mount", "/b"), p("capabilities", "A", "B"), p("capabilities", "B", "A"),
		p("network", "host"), p("x"), {Name: "x", Value: []string{}},
	}
	var all []types.PluginPrivileges
	var grow func(prefix types.PluginPrivileges)
	grow = func(prefix types.PluginPrivileges) {
		all = append(all, prefix)
		if len(prefix) == 3 {
			return
		}
		for _, q := range alphabet {
			grow(append(append(types.PluginPrivileges(nil), prefix...), q))
		}
	}
	grow(nil)
	checked := 0
	for _, r := range all {
		for _, g := range all {
			if len(r) != len(g) || !EqualMobyV2(r, g) {
				continue
			}
			checked++
			missing, extra := Diff(r, g)
			assert.Assert(t, len(missing)+len(extra) == 0, "moby v2 accepts %s for %s, Diff refuses", Format(g), Format(r))
		}
	}
	assert.Check(t, checked > 100, fmt.Sprint(checked))
}

func TestEqualDoesNotTouchItsArguments(t *testing.T) {
	r := list(p("b", "y", "x"), p("a", "2", "1"))
	g := list(p("b", "y", "x"), p("a", "2", "1"))
	EqualDockerV28(r, g)
	EqualMobyV2(r, g)
	Diff(r, g)
	assert.Check(t, is.DeepEqual(r, list(p("b", "y", "x"), p("a", "2", "1"))))
}

// Same is Diff's answer, found without allocating: checked against Diff
// on random grants of a few names and values, with repeats, reordering
// and nil against empty values.
func TestSameIsDiffsAnswer(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	names := []string{"network", "mount", "capabilities"}
	values := []string{"a", "b", "c"}
	gen := func() types.PluginPrivileges {
		var ps types.PluginPrivileges
		for range rng.IntN(4) {
			p := types.PluginPrivilege{Name: names[rng.IntN(len(names))]}
			switch n := rng.IntN(4); n {
			case 0: // nil
			case 1:
				p.Value = []string{}
			default:
				for range n - 1 {
					p.Value = append(p.Value, values[rng.IntN(len(values))])
				}
			}
			ps = append(ps, p)
		}
		return ps
	}
	for i := range 20000 {
		a, b := gen(), gen()
		if i%3 == 0 { // b: a shuffled, values too
			b = nil
			for _, p := range a {
				v := slices.Clone(p.Value)
				rng.Shuffle(len(v), func(i, j int) { v[i], v[j] = v[j], v[i] })
				b = append(b, types.PluginPrivilege{Name: p.Name, Value: v})
			}
			rng.Shuffle(len(b), func(i, j int) { b[i], b[j] = b[j], b[i] })
		}
		missing, extra := Diff(a, b)
		want := len(missing) == 0 && len(extra) == 0
		if got := Same(a, b); got != want {
			t.Fatalf("Same(%v, %v) = %v, Diff says %v (missing %v, extra %v)", a, b, got, want, missing, extra)
		}
	}
	a := types.PluginPrivileges{{Name: "network", Value: []string{"host"}}, {Name: "capabilities", Value: []string{"CAP_SYS_ADMIN", "CAP_CHOWN"}}}
	b := types.PluginPrivileges{{Name: "capabilities", Value: []string{"CAP_CHOWN", "CAP_SYS_ADMIN"}}, {Name: "network", Value: []string{"host"}}}
	if n := testing.AllocsPerRun(100, func() { Same(a, b) }); n != 0 {
		t.Errorf("Same allocates %v times", n)
	}
}
