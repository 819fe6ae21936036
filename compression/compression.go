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
// are, plus the 9-byte header. Where only the table's size matters and the
// values are large, `ALTER TABLE dbcache_entries ALTER COLUMN value SET
// COMPRESSION lz4` is the server-side alternative (see the doc).
//
// # Format
//
// Every value this package writes is a frame: a 9-byte header (the magic
// bytes 0xFF 'D' 'C', the format version, 1, the algorithm, 0 for a value
// stored as it is (shorter than Config.MinSize, or one that did not
// shrink), 1 for S2, 2 for zstd, and the CRC-32C of the value), then the
// value, as it is or compressed in chunks of 256 KiB. Decode reads all
// three algorithms whatever Config.Algorithm says, so the algorithm can be
// changed without invalidating entries.
//
// # Damaged and crafted bytes
//
// Decompress checks every frame: its magic and version, its chunks'
// lengths and, for every algorithm (stored values too), the checksum of
// what it decoded. A truncated value or a flipped bit is an error matching
// ErrCorrupt, not a value that was never stored: over every truncation and
// every single-bit flip of the tests' sample values, for each algorithm,
// none decodes. CRC-32C detects every change to the decoded value confined
// to 32 consecutive bits; other damage goes unseen with a chance of one in
// 2^32. It is a check against damage, not against forgery: with
// encryption, AES-GCM authenticates the bytes.
//
// A read allocates what it decodes, not what the frame says it holds: the
// value is decoded into a buffer that grows as the chunks decode, no chunk
// may claim more than 256 KiB, and the read fails once the value passes
// Config.MaxDecodedSize (64 MiB by default). So a crafted frame that
// claims a gigabyte and holds little makes a read allocate no more than
// 512 KiB beyond what it really decodes, whatever MaxDecodedSize is. A
// frame can still decode to the limit for real (a few kilobytes of
// compressed zeros do), and a read then holds at most twice MaxDecodedSize
// at its peak (the buffer and the one it grew out of): a server whose
// cache serves N concurrent reads of crafted values can be made to
// allocate about N × 2 × MaxDecodedSize, 12.5 GiB for 100 reads at the default.
// Set MaxDecodedSize near the largest value the application stores.
//
// # Values without a frame
//
// A value that does not start with the magic (written before the wrapper
// was added, or after it was removed and added again) is an error
// matching ErrCorrupt, so typed.Config.MissOnDecodeError makes it a miss
// and GetOrSet and GetOrSetFunc store a fresh value in its place. Turning
// compression off works the same way for a codec that checks its input
// (JSON, gob: a frame is not valid JSON); codec.Bytes and codec.String
// accept any bytes and would return the frame itself, so switch those
// with a new dbcache.Config.Version.
//
// Frames of format 0, which earlier versions of this package wrote (one
// header byte, 0, 1 or 2, then the value, with no checksum), are read only
// with Config.ReadOneByteFrames, for one release. That format is
// ambiguous: a value written without compression whose first byte is 0, 1
// or 2 reads as another value (00616263 as "abc"), and damage to a format
// 0 value that still decodes goes unnoticed.
package compression

import (
	"encoding/binary"
	"errors"
	"fmt"
	"sync"

	"github.com/klauspost/compress/zstd"

	"github.com/dbcache/dbcache/codec"
)

// Algorithm is a compression algorithm; its value is the frame's
// algorithm byte.
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

	// MaxDecodedSizeDefault is the default for Config.MaxDecodedSize: 64
	// MiB, far above what a cache entry usually holds and small enough
	// that a few concurrent reads of crafted values cannot exhaust a
	// server's memory.
	MaxDecodedSizeDefault = 64 << 20

	// Overhead is how many bytes a frame adds to a value stored as it is
	// (a compressed value adds a few more: a length per chunk).
	Overhead = headerSize
)

// ErrCorrupt is matched (errors.Is) by every error Decompress returns: for
// bytes that are not a frame this package wrote (no magic, an unknown
// version or algorithm), that were damaged (a chunk that does not decode,
// a checksum that does not match), or that decompress to more than
// Config.MaxDecodedSize. The error's text never holds the value's bytes.
var ErrCorrupt error = corruptError{}

// corruptError is ErrCorrupt's type: its ErrorCode, "corrupt", is what
// metrics, spans and logs record of it (a dbcache.ErrorCoder).
type corruptError struct{}

func (corruptError) Error() string     { return "compression: value does not decompress" }
func (corruptError) ErrorCode() string { return "corrupt" }

var (
	errTooLarge = errors.New("decodes to more than MaxDecodedSize")
	errNotFrame = errors.New("not a compressed value (no frame magic)")
)

// Config configures a Compressor. A nil *Config means all defaults.
type Config struct {
	// Algorithm compresses new values. Defaults to Zstd.
	Algorithm Algorithm

	// MaxDecodedSize bounds the size of a decompressed value, in bytes:
	// a frame that decodes to more is an error matching ErrCorrupt. A read
	// holds at most twice this at its peak (see the package doc). Defaults
	// to MaxDecodedSizeDefault.
	MaxDecodedSize int

	// MinSize is the smallest encoded value that is compressed, in bytes;
	// shorter ones are stored as they are (in a frame). -1 compresses
	// every value. Defaults to MinSizeDefault.
	MinSize int

	// ReadOneByteFrames also reads format 0, the frames earlier versions
	// of this package wrote (one header byte, no magic, no checksum), so
	// a deployment can switch without losing its entries. It is for one
	// release, and ambiguous: a value written without compression whose
	// first byte is 0, 1 or 2 is read as another value, and damage to a
	// format 0 value that still decodes is not detected. Its zstd frames
	// are decoded as streams, whose window (up to 8 MiB, as the frame
	// declares) is allocated before they decode. New values are always
	// written in format 1. Defaults to false: format 0 values are errors
	// matching ErrCorrupt (misses with typed.Config.MissOnDecodeError).
	ReadOneByteFrames bool
}

// Compressor compresses and decompresses values. It is safe for
// concurrent use; share one between codecs, since each holds its own
// encoder and decoder state.
type Compressor struct {
	alg     Algorithm
	minSize int
	maxSize int
	legacy  bool
	chunk   int // chunkSize; smaller in tests
	zenc    *zstd.Encoder
	zdec    *zstd.Decoder
	// zstreams are stream decoders for format 0 zstd frames.
	zstreams sync.Pool
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
	// memory mode cost a fifth more CPU. zstd's own checksum is off: the
	// frame's CRC-32C covers every algorithm.
	zenc, err := zstd.NewWriter(nil, zstd.WithEncoderLevel(zstd.SpeedDefault), zstd.WithEncoderCRC(false))
	if err != nil {
		return nil, fmt.Errorf("compression: zstd encoder: %w", err)
	}
	// Each DecodeAll decodes into the capacity it is given, never
	// allocating by what the frame declares (see decompressChunks).
	zdec, err := zstd.NewReader(nil, zstd.WithDecodeAllCapLimit(true), zstd.WithDecoderMaxWindow(chunkSize), zstd.WithDecoderLowmem(true))
	if err != nil {
		return nil, fmt.Errorf("compression: zstd decoder: %w", err)
	}
	return &Compressor{alg: c.Algorithm, minSize: c.MinSize, maxSize: c.MaxDecodedSize, legacy: c.ReadOneByteFrames, chunk: chunkSize, zenc: zenc, zdec: zdec}, nil
}

// Compress returns data in a frame, compressed when it is at least MinSize
// long and compressing makes it shorter.
func (c *Compressor) Compress(data []byte) []byte {
	sum := checksum(data)
	if len(data) >= c.minSize && len(data) > 0 {
		out := make([]byte, 0, headerSize+len(data)/2)
		out = appendHeader(out, byte(c.alg), sum)
		out = c.compressChunks(out, c.alg, data)
		if len(out) < headerSize+len(data) {
			return out
		}
	}
	out := make([]byte, 0, headerSize+len(data))
	out = appendHeader(out, stored, sum)
	return append(out, data...)
}

// Decompress returns the value Compress was given. It returns an error
// matching ErrCorrupt for anything else.
func (c *Compressor) Decompress(data []byte) ([]byte, error) {
	out, err := c.decompress(data)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrCorrupt, err)
	}
	return out, nil
}

func (c *Compressor) decompress(data []byte) ([]byte, error) {
	if !isFrame(data) {
		if c.legacy && len(data) > 0 && data[0] <= byte(Zstd) {
			return c.decompressLegacy(data)
		}
		return nil, errNotFrame
	}
	if len(data) < headerSize {
		return nil, errors.New("truncated header")
	}
	if v := data[3]; v != formatVersion {
		return nil, fmt.Errorf("format version %d is not 1 (written by a newer version of this package?)", v)
	}
	want := binary.LittleEndian.Uint32(data[5:9])
	body := data[headerSize:]
	var out []byte
	switch alg := data[4]; alg {
	case stored:
		if len(body) > c.maxSize {
			return nil, errTooLarge
		}
		out = body
	case byte(S2), byte(Zstd):
		var err error
		if out, err = c.decompressChunks(alg, body); err != nil {
			return nil, err
		}
	default:
		return nil, fmt.Errorf("unknown algorithm %d", alg)
	}
	if checksum(out) != want {
		return nil, errors.New("checksum mismatch (damaged bytes)")
	}
	if out == nil {
		out = []byte{}
	}
	return out, nil
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
