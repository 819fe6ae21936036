// Package compression compresses cache values on the client, as a
// codec.Codec wrapper, with zstd or S2 (github.com/klauspost/compress).
// It is opt-in, and in its own package so that only programs that use it
// build that library.
//
//	zc, err := compression.New(nil) // zstd above 512 bytes
//	docs, err := typed.New[Doc](cache, &typed.Config[Doc]{
//		Codec: compression.Wrap(codec.JSON[Doc](), zc),
//	})
//
// # When it pays
//
// PostgreSQL already compresses large values itself (TOAST, with pglz or,
// per column, lz4), but only those that make a row over about 2 KB, and
// only by what its fast compressors find. The measurements behind the
// defaults are in docs/compression.md: on JSON, client-side zstd stores
// 57% of a 0.75 KB value (TOAST: all of it), 28% of a 10 KB one (TOAST
// pglz: 36%) and 24% of a 100 KB one (pglz: 32%), writes that much less
// WAL, and moves the compression's CPU from the database server to the
// application (a 100 KB set: 1.1 ms more in the client, 3 ms less in the
// server). S2 stored more than pglz above 10 KB and is there for
// CPU-bound clients. Bytes that are already compressed are stored as they
// are, plus the header byte. Where only the table's size matters and the
// values are large, `ALTER TABLE dbcache_entries ALTER COLUMN value SET
// COMPRESSION lz4` is the server-side alternative (see the doc).
//
// # Format
//
// Every value starts with one byte: 0 for a value stored as it is (shorter
// than Config.MinSize, or one that did not shrink), 1 for S2, 2 for zstd.
// Decode reads all three whatever Config.Algorithm says, so the algorithm
// can be changed without invalidating entries. Values written before the
// wrapper was added have no such byte and are decode errors (misses with
// typed.Config.MissOnDecodeError): switch to it with a new
// dbcache.Config.Version, or let them expire.
package compression

import (
	"errors"
	"fmt"

	"github.com/klauspost/compress/s2"
	"github.com/klauspost/compress/zstd"

	"github.com/dbcache/dbcache/codec"
)

// Algorithm is a compression algorithm; its value is the header byte.
type Algorithm byte

const (
	// S2 is Snappy's faster successor: less CPU than zstd, and larger
	// output (on JSON over 10 KB, larger than TOAST's pglz).
	S2 Algorithm = 1
	// Zstd is Zstandard at its default level: the smallest output of the
	// two, for more CPU. The default.
	Zstd Algorithm = 2

	// stored marks a value kept as it was.
	stored byte = 0
)

func (a Algorithm) String() string {
	switch a {
	case S2:
		return "s2"
	case Zstd:
		return "zstd"
	}
	return fmt.Sprintf("Algorithm(%d)", byte(a))
}

const (
	// MinSizeDefault is the default for Config.MinSize. JSON under 128
	// bytes does not shrink at all, and up to 512 bytes zstd saves a
	// fifth to a third of a value that is small beside its row's own
	// overhead, for the same CPU per value as a larger one
	// (docs/compression.md).
	MinSizeDefault = 512

	// MaxDecodedSizeDefault is the default for Config.MaxDecodedSize: 1
	// GiB, PostgreSQL's limit for a bytea value.
	MaxDecodedSizeDefault = 1 << 30
)

// ErrCorrupt is matched (errors.Is) by every error Decode returns for bytes
// that are not a value this package wrote, or that decompress to more than
// Config.MaxDecodedSize.
var ErrCorrupt = errors.New("compression: value does not decompress")

// Config configures a Compressor. A nil *Config means all defaults.
type Config struct {
	// Algorithm compresses new values. Defaults to Zstd.
	Algorithm Algorithm

	// MaxDecodedSize bounds the size of a decompressed value, in bytes, so
	// bytes crafted to expand enormously (a decompression bomb) fail
	// rather than exhaust memory. Defaults to MaxDecodedSizeDefault.
	MaxDecodedSize int

	// MinSize is the smallest encoded value that is compressed, in bytes;
	// shorter ones are stored as they are (plus the header byte). -1
	// compresses every value. Defaults to MinSizeDefault.
	MinSize int
}

// Compressor compresses and decompresses values. It is safe for
// concurrent use; share one between codecs, since each holds its own
// encoder and decoder state.
type Compressor struct {
	alg     Algorithm
	minSize int
	maxSize int
	zenc    *zstd.Encoder
	zdec    *zstd.Decoder
}

// New returns a Compressor, or an error for an unknown Algorithm or a
// negative size.
func New(cfg *Config) (*Compressor, error) {
	var c Config
	if cfg != nil {
		c = *cfg
	}
	if c.Algorithm == 0 {
		c.Algorithm = Zstd
	}
	if c.MinSize == 0 {
		c.MinSize = MinSizeDefault
	}
	if c.MaxDecodedSize == 0 {
		c.MaxDecodedSize = MaxDecodedSizeDefault
	}
	var errs []error
	if c.Algorithm != Zstd && c.Algorithm != S2 {
		errs = append(errs, fmt.Errorf("compression: Config.Algorithm %d is not S2 or Zstd", byte(c.Algorithm)))
	}
	if c.MinSize < -1 {
		errs = append(errs, fmt.Errorf("compression: Config.MinSize %d is negative (-1 compresses every value)", c.MinSize))
	}
	if c.MaxDecodedSize < 0 {
		errs = append(errs, fmt.Errorf("compression: Config.MaxDecodedSize %d is negative", c.MaxDecodedSize))
	}
	if err := errors.Join(errs...); err != nil {
		return nil, err
	}
	// zstd's default level: its fastest stored 4% more on the JSON of
	// docs/compression.md and was not measurably cheaper there; the low
	// memory mode cost a fifth more CPU.
	zenc, err := zstd.NewWriter(nil, zstd.WithEncoderLevel(zstd.SpeedDefault))
	if err != nil {
		return nil, fmt.Errorf("compression: zstd encoder: %w", err)
	}
	zdec, err := zstd.NewReader(nil, zstd.WithDecoderMaxMemory(uint64(c.MaxDecodedSize)), zstd.WithDecoderLowmem(true))
	if err != nil {
		return nil, fmt.Errorf("compression: zstd decoder: %w", err)
	}
	return &Compressor{alg: c.Algorithm, minSize: c.MinSize, maxSize: c.MaxDecodedSize, zenc: zenc, zdec: zdec}, nil
}

// Compress returns data with the header byte, compressed when it is at
// least MinSize long and compressing makes it shorter.
func (c *Compressor) Compress(data []byte) []byte {
	if len(data) >= c.minSize {
		out := make([]byte, 1, 1+len(data)/2)
		out[0] = byte(c.alg)
		switch c.alg {
		case S2:
			out = append(out, s2.Encode(nil, data)...)
		case Zstd:
			out = c.zenc.EncodeAll(data, out)
		}
		if len(out) < 1+len(data) {
			return out
		}
	}
	out := make([]byte, 1+len(data))
	out[0] = stored
	copy(out[1:], data)
	return out
}

// Decompress returns the value Compress was given. It returns an error
// matching ErrCorrupt for anything else.
func (c *Compressor) Decompress(data []byte) ([]byte, error) {
	if len(data) == 0 {
		return nil, fmt.Errorf("%w: empty (no header byte)", ErrCorrupt)
	}
	body := data[1:]
	switch data[0] {
	case stored:
		if len(body) > c.maxSize {
			return nil, fmt.Errorf("%w: %d bytes is over MaxDecodedSize", ErrCorrupt, len(body))
		}
		return body, nil
	case byte(S2):
		n, err := s2.DecodedLen(body)
		if err != nil {
			return nil, fmt.Errorf("%w: s2: %w", ErrCorrupt, err)
		}
		if n > c.maxSize {
			return nil, fmt.Errorf("%w: s2: decodes to %d bytes, over MaxDecodedSize", ErrCorrupt, n)
		}
		out, err := s2.Decode(nil, body)
		if err != nil {
			return nil, fmt.Errorf("%w: s2: %w", ErrCorrupt, err)
		}
		return out, nil
	case byte(Zstd):
		out, err := c.zdec.DecodeAll(body, nil)
		if err != nil {
			return nil, fmt.Errorf("%w: zstd: %w", ErrCorrupt, err)
		}
		return out, nil
	}
	return nil, fmt.Errorf("%w: unknown header byte 0x%02x (not a compressed value)", ErrCorrupt, data[0])
}

// Wrap returns a codec that encodes with inner and compresses the result,
// and that decompresses and then decodes with inner. A value that does not
// decompress is an error matching ErrCorrupt; inner never sees it. To
// encrypt as well, compress first: encryption.Wrap(compression.Wrap(…), ring).
func Wrap[T any](inner codec.Codec[T], c *Compressor) codec.Codec[T] {
	return &compressed[T]{inner: inner, c: c}
}

type compressed[T any] struct {
	inner codec.Codec[T]
	c     *Compressor
}

var errNoCompressor = errors.New("compression: no Compressor (Wrap was given nil)")

func (w *compressed[T]) Encode(key string, v T) ([]byte, error) {
	if w.c == nil {
		return nil, errNoCompressor
	}
	b, err := w.inner.Encode(key, v)
	if err != nil {
		return nil, err
	}
	return w.c.Compress(b), nil
}

func (w *compressed[T]) Decode(key string, data []byte) (T, error) {
	if w.c == nil {
		var zero T
		return zero, errNoCompressor
	}
	b, err := w.c.Decompress(data)
	if err != nil {
		var zero T
		return zero, err
	}
	return w.inner.Decode(key, b)
}
