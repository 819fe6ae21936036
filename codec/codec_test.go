package codec_test

import (
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/dbcache/dbcache/codec"
)

type user struct {
	ID    int
	Name  string
	Tags  []string
	Admin bool
}

func TestRoundTrip(t *testing.T) {
	t.Parallel()
	u := user{ID: 42, Name: "gopher", Tags: []string{"a", "b"}, Admin: true}
	for name, c := range map[string]codec.Codec[user]{"json": codec.JSON[user](), "gob": codec.Gob[user]()} {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			b, err := c.Encode("k", u)
			require.NoError(t, err)
			got, err := c.Decode("k", b)
			require.NoError(t, err)
			require.Equal(t, u, got)
		})
	}
	b, err := codec.Bytes().Encode("k", []byte("raw\x00\xff"))
	require.NoError(t, err)
	got, err := codec.Bytes().Decode("k", b)
	require.NoError(t, err)
	require.Equal(t, []byte("raw\x00\xff"), got)
	empty, err := codec.Bytes().Decode("k", nil)
	require.NoError(t, err)
	require.NotNil(t, empty)
	require.Empty(t, empty)

	s, err := codec.String().Encode("k", "héllo")
	require.NoError(t, err)
	str, err := codec.String().Decode("k", s)
	require.NoError(t, err)
	require.Equal(t, "héllo", str)
}

func TestPointers(t *testing.T) {
	t.Parallel()
	for name, c := range map[string]codec.Codec[*user]{"json": codec.JSON[*user](), "gob": codec.Gob[*user]()} {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			b, err := c.Encode("k", &user{ID: 7})
			require.NoError(t, err)
			got, err := c.Decode("k", b)
			require.NoError(t, err)
			require.Equal(t, 7, got.ID)
		})
	}
	// gob has no nil: an Encode error, not a panic or a stored nothing.
	_, err := codec.Gob[*user]().Encode("k", nil)
	require.Error(t, err)
	// JSON's null decodes to nil.
	b, err := codec.JSON[*user]().Encode("k", nil)
	require.NoError(t, err)
	got, err := codec.JSON[*user]().Decode("k", b)
	require.NoError(t, err)
	require.Nil(t, got)
}

// A value written for another type (a changed struct) is an error, and so
// are damaged bytes: never a made-up value.
func TestDecodeErrors(t *testing.T) {
	t.Parallel()
	type v2 struct {
		ID   string // was int
		Name string
	}
	jb, err := codec.JSON[user]().Encode("k", user{ID: 1, Name: "x"})
	require.NoError(t, err)
	_, err = codec.JSON[v2]().Decode("k", jb)
	require.Error(t, err)
	_, err = codec.JSON[user]().Decode("k", append(jb, "garbage"...))
	require.Error(t, err)
	_, err = codec.JSON[user]().Decode("k", jb[:len(jb)-1])
	require.Error(t, err)

	gb, err := codec.Gob[user]().Encode("k", user{ID: 1, Name: "x"})
	require.NoError(t, err)
	_, err = codec.Gob[v2]().Decode("k", gb)
	require.Error(t, err)
	_, err = codec.Gob[user]().Decode("k", gb[:len(gb)-1])
	require.Error(t, err)
	_, err = codec.Gob[user]().Decode("k", append(gb, 0))
	require.Error(t, err, "trailing bytes")
	_, err = codec.Gob[user]().Decode("k", nil)
	require.Error(t, err)
}

// FuzzDecode feeds arbitrary bytes to every built-in codec: each returns a
// value or an error, and never panics. Run it with
// go test -fuzz FuzzDecode ./codec/.
func FuzzDecode(f *testing.F) {
	u := user{ID: 42, Name: "gopher", Tags: []string{"a"}}
	jb, _ := codec.JSON[user]().Encode("k", u)
	gb, _ := codec.Gob[user]().Encode("k", u)
	f.Add(jb)
	f.Add(gb)
	f.Add([]byte{})
	f.Add([]byte("null"))
	f.Add([]byte{0xff, 0xff, 0xff, 0xff, 0x7f})
	f.Fuzz(func(t *testing.T, data []byte) {
		if v, err := codec.JSON[user]().Decode("k", data); err == nil {
			// Whatever decoded re-encodes.
			_, err := codec.JSON[user]().Encode("k", v)
			require.NoError(t, err)
		}
		_, _ = codec.JSON[map[string]any]().Decode("k", data)
		if v, err := codec.Gob[user]().Decode("k", data); err == nil {
			_, err := codec.Gob[user]().Encode("k", v)
			require.NoError(t, err)
		}
		_, _ = codec.Gob[map[string][]int]().Decode("k", data)
		_, _ = codec.Bytes().Decode("k", data)
		_, _ = codec.String().Decode("k", data)
	})
}
