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
		if v, err := codec.JSONStrict[user]().Decode("k", data); err == nil {
			// What the strict codec accepts, JSON reads the same.
			loose, err := codec.JSON[user]().Decode("k", data)
			require.NoError(t, err)
			require.Equal(t, loose, v)
		}
		if v, err := codec.Gob[user]().Decode("k", data); err == nil {
			_, err := codec.Gob[user]().Encode("k", v)
			require.NoError(t, err)
		}
		_, _ = codec.Gob[map[string][]int]().Decode("k", data)
		_, _ = codec.Bytes().Decode("k", data)
		_, _ = codec.String().Decode("k", data)
	})
}

// What JSON lets through and JSONStrict refuses: a struct with no field in
// common with the stored JSON, a missing field Encode always writes, an
// unknown field at any depth, null for a struct. Both refuse what does
// not parse; JSONStrict reads everything JSON writes.
func TestJSONStrict(t *testing.T) {
	t.Parallel()
	type inner struct{ A, B int }
	type doc struct {
		ID    int      `json:"id"`
		Name  string   `json:"name,omitempty"`
		Inner inner    `json:"inner"`
		Tags  []string `json:"tags"`
		Note  *string  `json:"note,omitempty"`
	}
	type other struct {
		Email string `json:"email"`
	}
	note := "n"
	for _, v := range []doc{{}, {ID: 1, Name: "x", Inner: inner{1, 2}, Tags: []string{"a"}, Note: &note}} {
		b, err := codec.JSON[doc]().Encode("k", v)
		require.NoError(t, err)
		got, err := codec.JSONStrict[doc]().Decode("k", b)
		require.NoError(t, err, "%s", b)
		require.Equal(t, v, got)
	}
	ob, err := codec.JSON[other]().Encode("k", other{Email: "carol@example.com"})
	require.NoError(t, err)
	// JSON, by its documented rules: no field in common is T's zero value.
	got, err := codec.JSON[doc]().Decode("k", ob)
	require.NoError(t, err)
	require.Zero(t, got)
	_, err = codec.JSON[doc]().Decode("k", []byte("null"))
	require.NoError(t, err)
	for name, bad := range map[string]string{
		"no field in common":   string(ob),
		"empty object":         `{}`,
		"missing field":        `{"id":1,"inner":{"A":1,"B":2}}`,
		"unknown field":        `{"id":1,"inner":{"A":1,"B":2},"tags":null,"email":"x"}`,
		"unknown nested field": `{"id":1,"inner":{"A":1,"C":2},"tags":null}`,
		"null":                 `null`,
		"trailing":             `{"id":1,"inner":{"A":1,"B":2},"tags":null} {}`,
		"wrong type":           `{"id":"1","inner":{"A":1,"B":2},"tags":null}`,
		"not json":             `{"id":1,`,
	} {
		_, err := codec.JSONStrict[doc]().Decode("k", []byte(bad))
		require.Error(t, err, name)
	}
	// A missing omitempty field is what Encode writes for its zero value.
	_, err = codec.JSONStrict[doc]().Decode("k", []byte(`{"id":1,"inner":{"A":1,"B":2},"tags":null}`))
	require.NoError(t, err)
	// null is a nil pointer, map or slice.
	p, err := codec.JSONStrict[*doc]().Decode("k", []byte("null"))
	require.NoError(t, err)
	require.Nil(t, p)
	_, err = codec.JSONStrict[*doc]().Decode("k", ob)
	require.Error(t, err, "a pointer's struct is checked too")
	m, err := codec.JSONStrict[map[string]int]().Decode("k", []byte(`{"any":1}`))
	require.NoError(t, err)
	require.Equal(t, map[string]int{"any": 1}, m)
	n, err := codec.JSONStrict[int]().Decode("k", []byte(`7`))
	require.NoError(t, err)
	require.Equal(t, 7, n)
	_, err = codec.JSONStrict[int]().Decode("k", []byte(`null`))
	require.Error(t, err)
}
