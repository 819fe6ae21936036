package compression_test

import (
	"bytes"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/dbcache/dbcache/codec"
	"github.com/dbcache/dbcache/compression"
)

func newC(t testing.TB, cfg *compression.Config) *compression.Compressor {
	t.Helper()
	c, err := compression.New(cfg)
	require.NoError(t, err)
	return c
}

func TestRoundTrip(t *testing.T) {
	t.Parallel()
	values := map[string][]byte{
		"empty":    {},
		"small":    []byte(`{"id":1}`),
		"json 1k":  jsonValue(1000, 1),
		"json 10k": jsonValue(10_000, 2),
		"random":   randomValue(10_000, 3),
	}
	for _, alg := range []compression.Algorithm{compression.Zstd, compression.S2} {
		for _, minSize := range []int{0, -1} {
			c := newC(t, &compression.Config{Algorithm: alg, MinSize: minSize})
			for name, v := range values {
				packed := c.Compress(v)
				got, err := c.Decompress(packed)
				require.NoError(t, err, "%s %s", alg, name)
				require.Equal(t, v, got, "%s %s", alg, name)
				// Never more than one byte longer than the value.
				require.LessOrEqual(t, len(packed), len(v)+1, "%s %s", alg, name)
			}
		}
	}
	// Small values and incompressible ones are stored as they are.
	c := newC(t, nil)
	require.Equal(t, append([]byte{0}, `{"id":1}`...), c.Compress([]byte(`{"id":1}`)))
	rnd := randomValue(10_000, 3)
	require.Equal(t, append([]byte{0}, rnd...), c.Compress(rnd))
	// JSON shrinks.
	j := jsonValue(10_000, 2)
	require.Less(t, len(c.Compress(j)), len(j)/2)
	require.Equal(t, byte(compression.Zstd), c.Compress(j)[0])
}

// A reader decodes values of every algorithm, whatever it writes.
func TestMixedAlgorithms(t *testing.T) {
	t.Parallel()
	j := jsonValue(5000, 9)
	s2c := newC(t, &compression.Config{Algorithm: compression.S2})
	zc := newC(t, &compression.Config{Algorithm: compression.Zstd})
	got, err := zc.Decompress(s2c.Compress(j))
	require.NoError(t, err)
	require.Equal(t, j, got)
	got, err = s2c.Decompress(zc.Compress(j))
	require.NoError(t, err)
	require.Equal(t, j, got)
}

func TestCorrupt(t *testing.T) {
	t.Parallel()
	c := newC(t, nil)
	j := jsonValue(5000, 4)
	packed := c.Compress(j)
	for name, bad := range map[string][]byte{
		"empty":          nil,
		"unknown header": append([]byte{9}, packed[1:]...),
		"plain json":     j,
		"truncated":      packed[:len(packed)/2],
		"s2 garbage":     {byte(compression.S2), 0xff, 0xff, 0xff},
	} {
		_, err := c.Decompress(bad)
		require.ErrorIs(t, err, compression.ErrCorrupt, name)
	}
	// A bomb: a megabyte of zeros compresses to almost nothing; a reader
	// limited to 64 KB refuses it rather than allocate it.
	zeros := make([]byte, 1<<20)
	for _, alg := range []compression.Algorithm{compression.Zstd, compression.S2} {
		bomb := newC(t, &compression.Config{Algorithm: alg}).Compress(zeros)
		require.Less(t, len(bomb), 1<<12)
		_, err := newC(t, &compression.Config{MaxDecodedSize: 64 << 10}).Decompress(bomb)
		require.ErrorIs(t, err, compression.ErrCorrupt, alg.String())
	}
}

func TestConfig(t *testing.T) {
	t.Parallel()
	for _, cfg := range []compression.Config{{Algorithm: 7}, {MinSize: -2}, {MaxDecodedSize: -1}} {
		_, err := compression.New(&cfg)
		require.Error(t, err, "%+v", cfg)
	}
	w := compression.Wrap(codec.String(), nil)
	_, err := w.Encode("k", "v")
	require.Error(t, err)
	_, err = w.Decode("k", []byte{0, 'v'})
	require.Error(t, err)
}

func TestWrap(t *testing.T) {
	t.Parallel()
	type doc struct{ Orders []byte }
	w := compression.Wrap(codec.Gob[doc](), newC(t, nil))
	in := doc{Orders: jsonValue(4000, 5)}
	b, err := w.Encode("k", in)
	require.NoError(t, err)
	require.Less(t, len(b), 3000)
	out, err := w.Decode("k", b)
	require.NoError(t, err)
	require.Equal(t, in, out)
}

// FuzzDecompress: arbitrary bytes decompress or fail with ErrCorrupt,
// never panic, and never produce more than MaxDecodedSize.
func FuzzDecompress(f *testing.F) {
	c := newC(f, &compression.Config{MaxDecodedSize: 1 << 20})
	j := jsonValue(2000, 6)
	f.Add(c.Compress(j))
	f.Add(newC(f, &compression.Config{Algorithm: compression.S2}).Compress(j))
	f.Add([]byte{0, 'x'})
	f.Add([]byte{2})
	f.Fuzz(func(t *testing.T, data []byte) {
		out, err := c.Decompress(data)
		if err != nil {
			require.ErrorIs(t, err, compression.ErrCorrupt)
			return
		}
		require.LessOrEqual(t, len(out), 1<<20)
		if len(data) > 0 && data[0] == 0 {
			require.True(t, bytes.Equal(out, data[1:]))
		}
	})
}
