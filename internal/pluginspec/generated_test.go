//go:build !noprotogen

// The cross-checks in this file need the gogo-generated methods of
// runtime.PluginSpec, which exist in docker/docker v28.0 to v28.3 only. The
// compatibility job for later releases (.ci/docker-versions) builds with
// -tags noprotogen, which leaves this file out.

package pluginspec

import (
	"bytes"
	"reflect"
	"testing"

	"github.com/docker/docker/api/types/swarm/runtime"
	"github.com/gogo/protobuf/proto"
	"gotest.tools/v3/assert"
	is "gotest.tools/v3/assert/cmp"
)

// The generated code must still be there: if a pin moves past v28.3, these
// checks must be moved out rather than silently pass.
var _ proto.Message = (*runtime.PluginSpec)(nil)

func TestEncodeEqualsGeneratedMarshal(t *testing.T) {
	for name, s := range specCases() {
		t.Run(name, func(t *testing.T) {
			want, err := proto.Marshal(s)
			assert.NilError(t, err)
			got := Encode(s)
			assert.Check(t, bytes.Equal(got, want), "ours %x\ngenerated %x", got, want)
		})
	}
}

func TestDecodeEqualsGeneratedUnmarshal(t *testing.T) {
	for name, s := range specCases() {
		t.Run(name, func(t *testing.T) {
			b, err := proto.Marshal(s)
			assert.NilError(t, err)
			checkAgainstGenerated(t, b)
		})
	}
	for name, b := range payloadCases() {
		t.Run(name, func(t *testing.T) { checkAgainstGenerated(t, b) })
	}
}

// checkAgainstGenerated decodes b with both decoders and checks that they
// agree: both refuse it, or both give the same spec. It compares with
// reflect.DeepEqual and builds a diff only on a mismatch, so that the fuzz
// target stays fast.
func checkAgainstGenerated(t *testing.T, b []byte) {
	t.Helper()
	var want runtime.PluginSpec
	wantErr := proto.Unmarshal(b, &want)
	got, err := Decode(b)
	switch {
	case wantErr != nil && err == nil:
		t.Errorf("generated Unmarshal refuses %x (%v), Decode accepts it as %+v", b, wantErr, got)
	case wantErr == nil && err != nil:
		t.Errorf("generated Unmarshal accepts %x, Decode refuses it: %v", b, err)
	case wantErr == nil && !reflect.DeepEqual(*got, want):
		assert.Check(t, is.DeepEqual(*got, want), "decoding %x", b)
	}
}

func FuzzDecodeAgainstGenerated(f *testing.F) {
	for _, s := range specCases() {
		b, err := proto.Marshal(s)
		if err != nil {
			f.Fatal(err)
		}
		if len(b) <= fuzzSeedLimit {
			f.Add(b)
		}
	}
	for _, b := range payloadCases() {
		f.Add(b)
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		checkAgainstGenerated(t, b)
		if s, err := Decode(b); err == nil {
			// What decodes re-encodes as the generated code would.
			want, err := proto.Marshal(s)
			if err != nil {
				t.Fatal(err)
			}
			if got := Encode(s); !bytes.Equal(got, want) {
				t.Errorf("Encode(Decode(%x)) = %x, generated Marshal %x", b, got, want)
			}
		}
	})
}
