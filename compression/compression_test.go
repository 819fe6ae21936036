package compression_test

import (
	"encoding/binary"
	"hash/crc32"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/dbcache/dbcache/codec"
	"github.com/dbcache/dbcache/compression"
	"github.com/dbcache/dbcache/dbcache"
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
				// Never more than the frame's header longer than the value.
				require.LessOrEqual(t, len(packed), len(v)+compression.Overhead, "%s %s", alg, name)
			}
		}
	}
	// Small values and incompressible ones are stored as they are, after
	// the header: magic, version, algorithm 0 and the value's CRC-32C.
	c := newC(t, nil)
	small := []byte(`{"id":1}`)
	require.Equal(t, small, c.Compress(small)[compression.Overhead:])
	require.Equal(t, []byte{0xFF, 'D', 'C', 1, 0}, c.Compress(small)[:5])
	require.Equal(t, crc32.Checksum(small, crc32.MakeTable(crc32.Castagnoli)), binary.LittleEndian.Uint32(c.Compress(small)[5:9]))
	rnd := randomValue(10_000, 3)
	require.Equal(t, rnd, c.Compress(rnd)[compression.Overhead:])
	// JSON shrinks.
	j := jsonValue(10_000, 2)
	require.Less(t, len(c.Compress(j)), len(j)/2)
	require.Equal(t, byte(compression.Zstd), c.Compress(j)[4])
}

// Values of many chunks round-trip, for both algorithms, and a reader
// reads chunks of any size up to the most one chunk may decode to.
func TestChunks(t *testing.T) {
	t.Parallel()
	j := jsonValue(3*compression.ChunkSize+1000, 8)
	for _, alg := range []compression.Algorithm{compression.Zstd, compression.S2} {
		for _, size := range []int{1000, compression.ChunkSize} {
			w := newC(t, &compression.Config{Algorithm: alg})
			compression.SetChunkSize(w, size)
			got, err := newC(t, nil).Decompress(w.Compress(j))
			require.NoError(t, err, "%s chunks of %d", alg, size)
			require.Equal(t, j, got)
		}
	}
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
		"empty":             nil,
		"no magic":          append([]byte{9}, packed[1:]...),
		"unknown version":   append([]byte{0xFF, 'D', 'C', 2}, packed[4:]...),
		"unknown algorithm": append([]byte{0xFF, 'D', 'C', 1, 3}, packed[5:]...),
		"header only":       packed[:compression.Overhead],
		"plain json":        j,
		"truncated":         packed[:len(packed)/2],
		"s2 garbage":        {0xFF, 'D', 'C', 1, byte(compression.S2), 0, 0, 0, 0, 3, 0xff, 0xff, 0xff},
	} {
		_, err := c.Decompress(bad)
		require.ErrorIs(t, err, compression.ErrCorrupt, name)
		require.Equal(t, "corrupt", dbcache.ErrorCode(err), "what telemetry records of it")
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
	_, err = w.Decode("k", newC(t, nil).Compress([]byte("v")))
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
// never panic, never produce more than MaxDecodedSize, and what decodes
// is a value that compresses and decodes back to itself. The seeds are
// the crafted frames of hardening_test.go.
func FuzzDecompress(f *testing.F) {
	c := newC(f, &compression.Config{MaxDecodedSize: 1 << 20})
	legacy := newC(f, &compression.Config{MaxDecodedSize: 1 << 20, ReadOneByteFrames: true})
	j := jsonValue(2000, 6)
	f.Add(c.Compress(j))
	f.Add(newC(f, &compression.Config{Algorithm: compression.S2}).Compress(j))
	f.Add(c.Compress(nil))
	f.Add([]byte{0, 'x'})
	f.Add([]byte{2})
	for _, seed := range craftedFrames() {
		f.Add(seed.data)
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		for _, r := range []*compression.Compressor{c, legacy} {
			out, err := r.Decompress(data)
			if err != nil {
				require.ErrorIs(t, err, compression.ErrCorrupt)
				continue
			}
			require.LessOrEqual(t, len(out), 1<<20)
			again, err := c.Decompress(c.Compress(out))
			require.NoError(t, err)
			require.Equal(t, out, again)
		}
	})
}
