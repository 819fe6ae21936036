// Package codec turns typed values into the bytes a dbcache entry stores,
// and back. It is what package github.com/dbcache/dbcache/typed is built on:
// JSON (the default), gob, and raw []byte and string are here; compression
// (package github.com/dbcache/dbcache/compression) and encryption (package
// github.com/dbcache/dbcache/encryption) wrap any Codec; a protobuf Codec
// is a few lines (see examples/protobuf).
//
// # The key
//
// Both methods get the caller's key (the key passed to typed.Cache, before
// dbcache adds its prefix and version), so a Codec can bind the bytes to
// it: encryption authenticates it, so a value copied under another key
// does not decrypt. It is the caller's key rather than the stored one on
// purpose: IncrVersion and DecrVersion move an entry to another version,
// and it must still decode there. Codecs that have no use for it ignore it.
//
// # Bad bytes
//
// Decode gets whatever the table holds: a value written by an older
// version of the program, by another program, or damaged. It must return an
// error for bytes it cannot decode and never panic. What it can tell from
// the bytes is its own: a format with a checksum (compression) or an
// authentication tag (encryption) catches damaged values (their docs say
// how surely); JSON and gob refuse what does not parse as T, but a value
// another type wrote can parse as T (JSON's rules are in JSON's doc;
// JSONStrict refuses more).
// typed.Cache also recovers a panic in Decode and reports it as a decode
// error, as a last line of defence.
package codec

import (
	"bytes"
	"encoding/gob"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"maps"
	"reflect"
	"slices"
)

// Codec encodes values of type T to bytes and decodes them back. Its
// methods must be safe for concurrent use.
type Codec[T any] interface {
	// Encode returns the bytes to store for v under the caller's key.
	Encode(key string, v T) ([]byte, error)
	// Decode returns the value that data, stored under key, encodes. It
	// returns an error, not a panic, for bytes it cannot decode.
	Decode(key string, data []byte) (T, error)
}

// JSON returns the JSON codec (encoding/json) for T: the default of
// typed.Cache, readable by any language and by `dbcache get`. It follows
// JSON's rules, and so detects only part of what a changed type does to
// stored values. A stored value is an error when it is not valid JSON,
// has bytes after the value, or holds a field whose JSON type does not
// fit T's field (a string where T has an int). It is not an error when it
// has fields T lacks (they are ignored), lacks fields T has (they keep
// their zero value), shares no field at all with T (it decodes to T's
// zero value), or is null for a struct T (the zero value too). For those,
// use JSONStrict.
func JSON[T any]() Codec[T] { return jsonCodec[T]{} }

type jsonCodec[T any] struct{}

func (jsonCodec[T]) Encode(_ string, v T) ([]byte, error) {
	b, err := json.Marshal(v)
	if err != nil {
		return nil, fmt.Errorf("codec: json: %w", err)
	}
	return b, nil
}

func (jsonCodec[T]) Decode(_ string, data []byte) (T, error) {
	var v T
	if err := json.Unmarshal(data, &v); err != nil {
		var zero T
		return zero, fmt.Errorf("codec: json: %w", err)
	}
	return v, nil
}

// JSONStrict returns a JSON codec for T that refuses the stored values JSON
// lets through but T's own Encode never writes: a field T does not have,
// at any depth (json.Decoder.DisallowUnknownFields); a missing top-level
// field that Encode always writes (one without omitempty, when T or what
// it points to is a struct); and null, unless T is a pointer, map, slice
// or interface. So a struct with no field in common with the stored JSON,
// a renamed field and a removed one are errors. It cannot detect a
// missing field inside a nested struct, a missing omitempty field, or a
// value written by another type that has the same field names and JSON
// types. It costs a second parse of each stored value's top level. It
// encodes exactly as JSON does, so values move between the two codecs.
func JSONStrict[T any]() Codec[T] {
	c := strictJSON[T]{nullable: true}
	t := reflect.TypeFor[T]()
	switch t.Kind() {
	case reflect.Pointer, reflect.Map, reflect.Slice, reflect.Interface:
	default:
		c.nullable = false
	}
	for t.Kind() == reflect.Pointer {
		t = t.Elem()
	}
	if t.Kind() == reflect.Struct {
		// The fields Encode always writes are those of the zero value's
		// encoding: omitempty ones are left out of it, as are the fields
		// of a nil embedded pointer.
		if b, err := json.Marshal(reflect.New(t).Interface()); err == nil {
			var fields map[string]json.RawMessage
			if json.Unmarshal(b, &fields) == nil {
				c.required = slices.Sorted(maps.Keys(fields))
			}
		}
	}
	return c
}

type strictJSON[T any] struct {
	required []string // top-level fields Encode always writes
	nullable bool     // null is a T
}

func (strictJSON[T]) Encode(k string, v T) ([]byte, error) { return jsonCodec[T]{}.Encode(k, v) }

func (c strictJSON[T]) Decode(_ string, data []byte) (T, error) {
	var v, zero T
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&v); err != nil {
		return zero, fmt.Errorf("codec: json: %w", err)
	}
	if _, err := dec.Token(); err != io.EOF {
		return zero, errors.New("codec: json: trailing bytes after the value")
	}
	isNull := bytes.Equal(bytes.TrimSpace(data), []byte("null"))
	if isNull && !c.nullable {
		return zero, fmt.Errorf("codec: json: null is not a %s", reflect.TypeFor[T]())
	}
	if len(c.required) > 0 && !isNull {
		var fields map[string]json.RawMessage
		if err := json.Unmarshal(data, &fields); err != nil {
			return zero, fmt.Errorf("codec: json: %w", err)
		}
		for _, f := range c.required {
			if _, ok := fields[f]; !ok {
				return zero, fmt.Errorf("codec: json: the stored value has no field %q, which Encode always writes (another type wrote it)", f)
			}
		}
	}
	return v, nil
}

// Gob returns the gob codec (encoding/gob) for T, readable only by Go: for
// types JSON does not carry faithfully (maps with non-string keys, large
// integers in interface values). Each value is encoded on its own, with its
// type description, so entries never depend on one another; that makes it
// larger and slower than JSON for one value (docs/observability.md has the
// figures). gob cannot encode a nil pointer or a struct with no exported
// fields; those are Encode errors.
func Gob[T any]() Codec[T] { return gobCodec[T]{} }

type gobCodec[T any] struct{}

func (gobCodec[T]) Encode(_ string, v T) (_ []byte, err error) {
	// gob panics, rather than failing, on a nil pointer.
	defer func() {
		if r := recover(); r != nil {
			err = fmt.Errorf("codec: gob: %v", r)
		}
	}()
	var buf bytes.Buffer
	if err := gob.NewEncoder(&buf).Encode(v); err != nil {
		return nil, fmt.Errorf("codec: gob: %w", err)
	}
	return buf.Bytes(), nil
}

// errTrailing is a gob value followed by bytes that are not part of it.
var errTrailing = errors.New("codec: gob: trailing bytes after the value")

func (gobCodec[T]) Decode(_ string, data []byte) (T, error) {
	var v, zero T
	// bytes.Reader is an io.ByteReader, so the decoder reads exactly the
	// value's messages and what is left over can be checked.
	r := bytes.NewReader(data)
	if err := gob.NewDecoder(r).Decode(&v); err != nil {
		return zero, fmt.Errorf("codec: gob: %w", err)
	}
	if r.Len() != 0 {
		return zero, errTrailing
	}
	return v, nil
}

// Bytes returns the identity codec for []byte values: what is stored is
// the value itself, as with dbcache's byte API. A stored empty value
// decodes to an empty, non-nil slice.
func Bytes() Codec[[]byte] { return bytesCodec{} }

type bytesCodec struct{}

func (bytesCodec) Encode(_ string, v []byte) ([]byte, error) { return v, nil }

func (bytesCodec) Decode(_ string, data []byte) ([]byte, error) {
	if data == nil {
		data = []byte{}
	}
	return data, nil
}

// String returns the codec for string values: the string's bytes, stored
// as they are (not checked to be UTF-8, as Go strings are not).
func String() Codec[string] { return stringCodec{} }

type stringCodec struct{}

func (stringCodec) Encode(_ string, v string) ([]byte, error) { return []byte(v), nil }

func (stringCodec) Decode(_ string, data []byte) (string, error) { return string(data), nil }
