// Package pluginspec encodes and decodes the payload of a plugin task: the
// runtime.PluginSpec that the Docker daemon marshals into the generic
// runtime of a swarm task (daemon/cluster/convert), typed
// swarm.RuntimeURLPlugin.
//
// The codec is written against the wire format of moby's plugin.proto,
// with google.golang.org/protobuf/encoding/protowire, and fills the fields
// of docker's runtime.PluginSpec by name. It uses no generated proto
// method, so it compiles with every docker/docker v28 release (from v28.4.0
// on, runtime.PluginSpec is a plain struct) and with moby v2, which keeps
// its generated copy internal.
//
//	message PluginSpec {
//		string name = 1;
//		string remote = 2;
//		repeated PluginPrivilege privileges = 3;
//		bool disabled = 4;
//		repeated string env = 5;
//	}
//	message PluginPrivilege {
//		string name = 1;
//		string description = 2;
//		repeated string value = 3;
//	}
//
// Decode accepts exactly the payloads that moby v28.3.0's generated
// Unmarshal accepts, with the same result, and Encode produces the same
// bytes as its generated Marshal; the tests in generated_test.go
// (built only where the generated code exists) prove both.
package pluginspec

import (
	"errors"
	"fmt"
	"io"
	"sync"

	"github.com/docker/docker/api/types/swarm"
	"github.com/docker/docker/api/types/swarm/runtime"
	gogotypes "github.com/gogo/protobuf/types"
	"github.com/moby/swarmkit/v2/api"
	"google.golang.org/protobuf/encoding/protowire"
)

// ErrMalformed is the error Decode returns, wrapped with the detail, for a
// payload that is not a valid encoding: truncated, a varint that overflows,
// a wire type a field cannot have, a bad length or tag.
var ErrMalformed = errors.New("malformed plugin spec payload")

// Field numbers of moby's plugin.proto.
const (
	specName       protowire.Number = 1
	specRemote     protowire.Number = 2
	specPrivileges protowire.Number = 3
	specDisabled   protowire.Number = 4
	specEnv        protowire.Number = 5

	privilegeName        protowire.Number = 1
	privilegeDescription protowire.Number = 2
	privilegeValue       protowire.Number = 3
)

// Encode returns the wire encoding of s, byte for byte what moby v28.3.0's
// generated Marshal returns: fields in number order, empty scalars left
// out, every element of a repeated field written. A nil privilege is
// written as an empty message (the generated code would panic).
func Encode(s *runtime.PluginSpec) []byte {
	if s == nil {
		return []byte{}
	}
	b := make([]byte, 0, size(s))
	b = appendString(b, specName, s.Name)
	b = appendString(b, specRemote, s.Remote)
	for _, p := range s.Privileges {
		b = protowire.AppendTag(b, specPrivileges, protowire.BytesType)
		b = protowire.AppendVarint(b, uint64(privilegeSize(p)))
		if p != nil {
			b = appendString(b, privilegeName, p.Name)
			b = appendString(b, privilegeDescription, p.Description)
			for _, v := range p.Value {
				b = protowire.AppendTag(b, privilegeValue, protowire.BytesType)
				b = protowire.AppendString(b, v)
			}
		}
	}
	if s.Disabled {
		b = protowire.AppendTag(b, specDisabled, protowire.VarintType)
		b = protowire.AppendVarint(b, 1)
	}
	for _, e := range s.Env {
		b = protowire.AppendTag(b, specEnv, protowire.BytesType)
		b = protowire.AppendString(b, e)
	}
	return b
}

func appendString(b []byte, n protowire.Number, s string) []byte {
	if s == "" {
		return b
	}
	b = protowire.AppendTag(b, n, protowire.BytesType)
	return protowire.AppendString(b, s)
}

func stringSize(n protowire.Number, s string) int {
	if s == "" {
		return 0
	}
	return protowire.SizeTag(n) + protowire.SizeBytes(len(s))
}

func privilegeSize(p *runtime.PluginPrivilege) int {
	if p == nil {
		return 0
	}
	n := stringSize(privilegeName, p.Name) + stringSize(privilegeDescription, p.Description)
	for _, v := range p.Value {
		n += protowire.SizeTag(privilegeValue) + protowire.SizeBytes(len(v))
	}
	return n
}

func size(s *runtime.PluginSpec) int {
	n := stringSize(specName, s.Name) + stringSize(specRemote, s.Remote)
	for _, p := range s.Privileges {
		n += protowire.SizeTag(specPrivileges) + protowire.SizeBytes(privilegeSize(p))
	}
	if s.Disabled {
		n += protowire.SizeTag(specDisabled) + 1
	}
	for _, e := range s.Env {
		n += protowire.SizeTag(specEnv) + protowire.SizeBytes(len(e))
	}
	return n
}

// Decode decodes a payload into a new runtime.PluginSpec. Unknown fields
// are skipped, as proto3 does; a scalar field that occurs more than once
// keeps its last value. A malformed payload is an error that wraps
// ErrMalformed and says where decoding stopped; Decode never panics.
func Decode(b []byte) (*runtime.PluginSpec, error) {
	s := &runtime.PluginSpec{}
	err := decodeMessage(b, "PluginSpec", func(d *decoder, n protowire.Number, t protowire.Type) error {
		switch n {
		case specName:
			return d.str(t, "name", &s.Name)
		case specRemote:
			return d.str(t, "remote", &s.Remote)
		case specPrivileges:
			raw, err := d.bytes(t, "privileges")
			if err != nil {
				return err
			}
			p, err := decodePrivilege(raw)
			if err != nil {
				return err
			}
			s.Privileges = append(s.Privileges, p)
			return nil
		case specDisabled:
			if t != protowire.VarintType {
				return d.wrongType(t, "disabled")
			}
			v, err := d.varint()
			if err != nil {
				return err
			}
			s.Disabled = v != 0
			return nil
		case specEnv:
			var e string
			if err := d.str(t, "env", &e); err != nil {
				return err
			}
			s.Env = append(s.Env, e)
			return nil
		}
		return d.skip()
	})
	if err != nil {
		return nil, err
	}
	return s, nil
}

func decodePrivilege(b []byte) (*runtime.PluginPrivilege, error) {
	p := &runtime.PluginPrivilege{}
	err := decodeMessage(b, "PluginPrivilege", func(d *decoder, n protowire.Number, t protowire.Type) error {
		switch n {
		case privilegeName:
			return d.str(t, "privileges.name", &p.Name)
		case privilegeDescription:
			return d.str(t, "privileges.description", &p.Description)
		case privilegeValue:
			var v string
			if err := d.str(t, "privileges.value", &v); err != nil {
				return err
			}
			p.Value = append(p.Value, v)
			return nil
		}
		return d.skip()
	})
	if err != nil {
		return nil, err
	}
	return p, nil
}

// decoder walks one message. Its rules are those of the gogo-generated
// Unmarshal of moby v28.3.0 rather than protowire's stricter Consume
// functions, so that both accept the same payloads: a varint may have up
// to ten bytes and drops the bits past 64, a field number is the low 32
// bits of the tag shifted, and groups are skipped without matching their
// field numbers.
type decoder struct {
	b     []byte
	i     int // offset of the next byte
	start int // offset of the current field's tag
}

func decodeMessage(b []byte, msg string, field func(d *decoder, n protowire.Number, t protowire.Type) error) error {
	d := &decoder{b: b}
	for d.i < len(d.b) {
		d.start = d.i
		tag, err := d.varint()
		if err != nil {
			return err
		}
		n, t := int32(tag>>3), protowire.Type(tag&7)
		if t == protowire.EndGroupType {
			return d.errorf("%s: end group without a group", msg)
		}
		if n <= 0 {
			return d.errorf("%s: illegal field number %d", msg, n)
		}
		if err := field(d, protowire.Number(n), t); err != nil {
			return err
		}
	}
	return nil
}

func (d *decoder) errorf(format string, args ...any) error {
	return fmt.Errorf("%w: at offset %d: %s", ErrMalformed, d.start, fmt.Sprintf(format, args...))
}

func (d *decoder) truncated() error {
	return fmt.Errorf("%w: at offset %d: %w", ErrMalformed, d.start, io.ErrUnexpectedEOF)
}

func (d *decoder) wrongType(t protowire.Type, field string) error {
	return d.errorf("wrong wire type %d for field %s", t, field)
}

// varint reads a varint as the generated code does: at most ten bytes,
// bits beyond the 64th dropped.
func (d *decoder) varint() (uint64, error) {
	var v uint64
	for shift := uint(0); ; shift += 7 {
		if shift >= 64 {
			return 0, d.errorf("varint overflows 64 bits")
		}
		if d.i >= len(d.b) {
			return 0, d.truncated()
		}
		c := d.b[d.i]
		d.i++
		v |= uint64(c&0x7f) << shift
		if c < 0x80 {
			return v, nil
		}
	}
}

// bytes reads a length-delimited field's contents.
func (d *decoder) bytes(t protowire.Type, field string) ([]byte, error) {
	if t != protowire.BytesType {
		return nil, d.wrongType(t, field)
	}
	l, err := d.varint()
	if err != nil {
		return nil, err
	}
	n := int(l)
	end := d.i + n
	if n < 0 || end < 0 {
		return nil, d.errorf("negative length for field %s", field)
	}
	if end > len(d.b) {
		return nil, d.truncated()
	}
	v := d.b[d.i:end]
	d.i = end
	return v, nil
}

func (d *decoder) str(t protowire.Type, field string, dst *string) error {
	v, err := d.bytes(t, field)
	if err != nil {
		return err
	}
	*dst = string(v)
	return nil
}

// skip skips the unknown field whose tag starts at d.start, as the
// generated skipPlugin does.
func (d *decoder) skip() error {
	d.i = d.start
	depth := 0
	for d.i < len(d.b) {
		tag, err := d.varint()
		if err != nil {
			return err
		}
		switch protowire.Type(tag & 7) {
		case protowire.VarintType:
			if _, err := d.varint(); err != nil {
				return err
			}
		case protowire.Fixed64Type:
			d.i += 8
		case protowire.BytesType:
			l, err := d.varint()
			if err != nil {
				return err
			}
			if int(l) < 0 {
				return d.errorf("negative length in an unknown field")
			}
			d.i += int(l)
		case protowire.StartGroupType:
			depth++
		case protowire.EndGroupType:
			if depth == 0 {
				return d.errorf("unexpected end of group")
			}
			depth--
		case protowire.Fixed32Type:
			d.i += 4
		default:
			return d.errorf("illegal wire type %d", tag&7)
		}
		if d.i < 0 {
			return d.errorf("negative length in an unknown field")
		}
		if depth == 0 {
			if d.i > len(d.b) {
				return d.truncated()
			}
			return nil
		}
	}
	return d.truncated()
}

// Runtime returns the runtime of a task that runs s, as the Docker daemon
// builds it: a generic runtime of kind swarm.RuntimePlugin whose payload is
// Encode(s), typed swarm.RuntimeURLPlugin.
func Runtime(s *runtime.PluginSpec) *api.TaskSpec_Generic {
	return &api.TaskSpec_Generic{Generic: &api.GenericRuntimeSpec{
		Kind:    string(swarm.RuntimePlugin),
		Payload: &gogotypes.Any{TypeUrl: string(swarm.RuntimeURLPlugin), Value: Encode(s)},
	}}
}

// Cache maps payloads to values derived from them. Every task of a service
// carries the same payload, so a Controller decodes it once per node. The
// values are shared: callers must never modify one after Put. It is safe
// for concurrent use.
type Cache[V any] struct {
	mu sync.RWMutex
	m  map[string]V
}

// maxCached bounds a Cache; when full it starts over.
const maxCached = 256

// Get returns the value stored for payload.
func (c *Cache[V]) Get(payload []byte) (V, bool) {
	c.mu.RLock()
	defer c.mu.RUnlock()
	v, ok := c.m[string(payload)]
	return v, ok
}

// Put stores v for payload.
func (c *Cache[V]) Put(payload []byte, v V) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.m == nil || len(c.m) >= maxCached {
		c.m = make(map[string]V)
	}
	c.m[string(payload)] = v
}
