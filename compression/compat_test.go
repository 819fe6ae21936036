package compression_test

import (
	"bytes"
	"encoding/json"
	"os"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/dbcache/dbcache/codec"
	"github.com/dbcache/dbcache/compression"
	"github.com/dbcache/dbcache/encryption"
)

// compatFrames is testdata/compat/v0-frames.json: the frames the previous
// release wrote for sample values, and what its decoders made of this
// release's frames for the same values (testdata/compat/README.md).
type compatFrames struct {
	Written []struct {
		Kind      string `json:"kind"`
		Key       string `json:"key"`
		Plaintext []byte `json:"plaintext"`
		Stored    []byte `json:"stored"`
	} `json:"written"`
	ReadByPrevious []struct {
		Kind    string `json:"kind"`
		Outcome string `json:"outcome"`
	} `json:"read_by_this_release"`
}

// Stored values cross releases: what the previous release wrote is read by
// this one, or is a decode error (a miss with MissOnDecodeError), never
// another value; and the previous release's decoders met this release's
// frames with the same value or an error, never another value.
func TestFramesAcrossReleases(t *testing.T) {
	t.Parallel()
	src, err := os.ReadFile("testdata/compat/v0-frames.json")
	require.NoError(t, err)
	var f compatFrames
	require.NoError(t, json.Unmarshal(src, &f))
	require.NotEmpty(t, f.Written)
	require.NotEmpty(t, f.ReadByPrevious)

	strict, err := compression.New(nil)
	require.NoError(t, err)
	compat, err := compression.New(&compression.Config{ReadOneByteFrames: true})
	require.NoError(t, err)
	ring, err := encryption.NewKeyring(encryption.Key{ID: 1, Secret: bytes.Repeat([]byte{0x11}, 32)})
	require.NoError(t, err)
	type user struct {
		Name string
		N    int
	}
	for i, w := range f.Written {
		switch {
		case strings.HasPrefix(w.Kind, "compression"):
			got, err := strict.Decompress(w.Stored)
			require.Error(t, err, "%d %s: a frame without the magic read as %q", i, w.Kind, got)
			got, err = compat.Decompress(w.Stored)
			require.NoError(t, err, "%d %s with ReadOneByteFrames", i, w.Kind)
			require.Equal(t, w.Plaintext, got, "%d %s", i, w.Kind)
		case w.Kind == "encryption":
			got, err := ring.Open(w.Key, w.Stored)
			require.NoError(t, err, "%d %s", i, w.Kind)
			require.Equal(t, w.Plaintext, got)
		case w.Kind == "typed-json":
			u, err := codec.JSON[user]().Decode(w.Key, w.Stored)
			require.NoError(t, err)
			got, _ := json.Marshal(u)
			require.Equal(t, string(w.Plaintext), string(got))
		default:
			t.Fatalf("unknown kind %q", w.Kind)
		}
	}
	for i, r := range f.ReadByPrevious {
		require.Contains(t, []string{"same", "error"}, r.Outcome, "%d %s: the previous release read this release's frame as another value", i, r.Kind)
	}
}
