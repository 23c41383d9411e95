package pluginspec

import (
	"bytes"
	"errors"
	"io"
	"strings"
	"testing"

	"github.com/docker/docker/api/types/swarm"
	"github.com/docker/docker/api/types/swarm/runtime"
	"google.golang.org/protobuf/encoding/protowire"
	"gotest.tools/v3/assert"
	is "gotest.tools/v3/assert/cmp"
)

// fuzzSeedLimit keeps the largest spec cases (tens of KiB, there for the
// deterministic tests) out of the fuzz corpus, where every mutation of
// them would be slow.
const fuzzSeedLimit = 4 << 10

// specCases are the specs every codec test runs: the empty spec, unicode,
// many privileges, empty elements of repeated fields.
func specCases() map[string]*runtime.PluginSpec {
	many := &runtime.PluginSpec{Name: "vol", Remote: "example.com/vol:1"}
	for i := 0; i < 40; i++ {
		many.Privileges = append(many.Privileges, &runtime.PluginPrivilege{
			Name: "mount", Description: strings.Repeat("d", i*5), Value: []string{"/var/lib/" + strings.Repeat("x", i), ""},
		})
	}
	return map[string]*runtime.PluginSpec{
		"empty":    {},
		"minimal":  {Remote: "vieux/sshfs"},
		"full":     {Name: "vol", Remote: "example.com/vol:1", Disabled: true, Env: []string{"DEBUG=1", "baz", ""}, Privileges: []*runtime.PluginPrivilege{{Name: "network", Description: "host network", Value: []string{"host"}}, {}}},
		"unicode":  {Name: "plugín-ü", Remote: "example.com/ñame:✓", Env: []string{"GREETING=こんにちは", "EMOJI=🐳"}},
		"long":     {Name: strings.Repeat("n", 300), Remote: "example.com/" + strings.Repeat("r", 20000)},
		"many":     many,
		"disabled": {Disabled: true},
	}
}

// payloadCases are raw payloads: unknown fields, repeated scalars and
// malformed encodings.
func payloadCases() map[string][]byte {
	valid := Encode(&runtime.PluginSpec{Name: "vol", Remote: "vol:1", Env: []string{"A=1"}})
	with := func(extra ...byte) []byte { return append(append([]byte{}, valid...), extra...) }
	return map[string][]byte{
		"unknown varint field":  with(0x30, 0x96, 0x01),                    // field 6, varint 150
		"unknown fixed64 field": with(0x39, 1, 2, 3, 4, 5, 6, 7, 8),        // field 7, fixed64
		"unknown fixed32 field": with(0x45, 1, 2, 3, 4),                    // field 8, fixed32
		"unknown bytes field":   with(0x4a, 0x03, 'a', 'b', 'c'),           // field 9, bytes
		"unknown group":         with(0x53, 0x08, 0x01, 0x54),              // field 10, group holding a varint
		"unknown in privilege":  {0x1a, 0x05, 0x0a, 0x01, 'n', 0x20, 0x01}, // privileges{name "n", field 4 varint}
		"name twice":            {0x0a, 0x01, 'a', 0x0a, 0x01, 'b'},
		"disabled 10-byte":      {0x20, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x02},
		"disabled large":        {0x20, 0xff, 0xff, 0x03},
		"tag high bits":         {0x8a, 0x80, 0x80, 0x80, 0x10, 0x01, 'x'}, // field number wraps to 1 in 32 bits
		"truncated tag":         {0x8a},
		"truncated length":      {0x0a},
		"truncated string":      {0x0a, 0x05, 'a'},
		"truncated privilege":   {0x1a, 0x05, 0x0a},
		"truncated fixed64":     with(0x39, 1, 2),
		"truncated group":       with(0x53, 0x08, 0x01),
		"varint overflow":       {0x20, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x01},
		"negative length":       {0x0a, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01},
		"wrong type name":       {0x08, 0x01},
		"wrong type disabled":   {0x22, 0x00},
		"wrong type privileges": {0x18, 0x01},
		"field zero":            {0x02, 0x00},
		"end group":             {0x0c},
		"stray end group":       with(0x54),
		"illegal wire type":     with(0x3e),
	}
}

func TestRoundTrip(t *testing.T) {
	for name, s := range specCases() {
		t.Run(name, func(t *testing.T) {
			got, err := Decode(Encode(s))
			assert.NilError(t, err)
			if len(s.Privileges) == 0 && len(s.Env) == 0 {
				assert.Check(t, is.DeepEqual(got, s))
				return
			}
			assert.Check(t, is.DeepEqual(Encode(got), Encode(s)))
			assert.Check(t, is.Equal(got.Name, s.Name))
			assert.Check(t, is.DeepEqual(got.Env, s.Env))
			assert.Check(t, is.Len(got.Privileges, len(s.Privileges)))
		})
	}
}

func TestEncodeWireFormat(t *testing.T) {
	got := Encode(&runtime.PluginSpec{Name: "a", Remote: "b", Disabled: true, Env: []string{"E=1"},
		Privileges: []*runtime.PluginPrivilege{{Name: "n", Description: "d", Value: []string{"v"}}}})
	want := []byte{
		0x0a, 1, 'a', // name = 1
		0x12, 1, 'b', // remote = 2
		0x1a, 9, 0x0a, 1, 'n', 0x12, 1, 'd', 0x1a, 1, 'v', // privileges = 3
		0x20, 1, // disabled = 4
		0x2a, 3, 'E', '=', '1', // env = 5
	}
	assert.Check(t, is.DeepEqual(got, want))
	assert.Check(t, is.DeepEqual(Encode(nil), []byte{}))
	// A nil privilege is an empty message, not a panic.
	assert.Check(t, is.DeepEqual(Encode(&runtime.PluginSpec{Privileges: []*runtime.PluginPrivilege{nil}}), []byte{0x1a, 0}))
}

func TestDecodeUnknownFieldsSkipped(t *testing.T) {
	for _, name := range []string{"unknown varint field", "unknown fixed64 field", "unknown fixed32 field", "unknown bytes field", "unknown group"} {
		got, err := Decode(payloadCases()[name])
		assert.NilError(t, err, name)
		assert.Check(t, is.DeepEqual(got, &runtime.PluginSpec{Name: "vol", Remote: "vol:1", Env: []string{"A=1"}}), name)
	}
	got, err := Decode(payloadCases()["unknown in privilege"])
	assert.NilError(t, err)
	assert.Check(t, is.DeepEqual(got.Privileges, []*runtime.PluginPrivilege{{Name: "n"}}))
}

func TestDecodeMalformed(t *testing.T) {
	for name, b := range payloadCases() {
		if !strings.HasPrefix(name, "truncated") && !strings.Contains(name, "overflow") && !strings.Contains(name, "wrong") &&
			!strings.Contains(name, "negative") && !strings.Contains(name, "end group") && !strings.Contains(name, "illegal") && name != "field zero" {
			continue
		}
		t.Run(name, func(t *testing.T) {
			s, err := Decode(b)
			assert.Check(t, is.Nil(s))
			assert.Check(t, errors.Is(err, ErrMalformed), "%v", err)
			assert.Check(t, is.ErrorContains(err, "at offset"))
			if strings.HasPrefix(name, "truncated") {
				assert.Check(t, errors.Is(err, io.ErrUnexpectedEOF), "%v", err)
			}
		})
	}
}

func TestRuntime(t *testing.T) {
	s := &runtime.PluginSpec{Name: "vol", Remote: "example.com/vol:1"}
	r := Runtime(s)
	assert.Check(t, is.Equal(r.Generic.Kind, string(swarm.RuntimePlugin)))
	assert.Check(t, is.Equal(r.Generic.Payload.TypeUrl, string(swarm.RuntimeURLPlugin)))
	got, err := Decode(r.Generic.Payload.Value)
	assert.NilError(t, err)
	assert.Check(t, is.DeepEqual(got, s))
}

func TestCache(t *testing.T) {
	var c Cache[int]
	_, ok := c.Get([]byte("a"))
	assert.Check(t, !ok)
	c.Put([]byte("a"), 1)
	v, ok := c.Get([]byte("a"))
	assert.Check(t, ok && v == 1)
	for i := 0; i < maxCached; i++ {
		c.Put(protowire.AppendVarint(nil, uint64(i)), i)
	}
	assert.Check(t, len(c.m) <= maxCached)
}

func FuzzDecode(f *testing.F) {
	for _, s := range specCases() {
		if b := Encode(s); len(b) <= fuzzSeedLimit {
			f.Add(b)
		}
	}
	for _, b := range payloadCases() {
		f.Add(b)
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		s, err := Decode(b)
		if err != nil {
			assert.Check(t, errors.Is(err, ErrMalformed))
			return
		}
		again, err := Decode(Encode(s))
		if err != nil {
			t.Fatalf("Decode(Encode(Decode(%x))): %v", b, err)
		}
		if !bytes.Equal(Encode(again), Encode(s)) {
			t.Errorf("Encode is not stable over a round trip of %x", b)
		}
	})
}
