package dbcache

import (
	"context"
	"runtime/debug"
	"strconv"
)

// What a Store of another kind needs to keep a Cache's semantics, beside
// KeyValidator: the integers Incr reads, and a loader's outcome as the
// loaders return it.

// ParseInteger reads a stored value as Incr and Decr read it, as Redis
// INCR does: the canonical decimal ASCII form of an int64 (an optional
// "-", no leading zeros, no "+", no spaces). ok is false for any other
// value, which Incr refuses with ErrNotInteger.
func ParseInteger(value []byte) (n int64, ok bool) {
	if len(value) == 0 || len(value) > 20 {
		return 0, false
	}
	n, err := strconv.ParseInt(string(value), 10, 64)
	if err != nil || strconv.FormatInt(n, 10) != string(value) {
		return 0, false
	}
	return n, true
}

// RunLoader calls load as the loaders do: its error comes back as a
// *LoaderError (which unwraps to it), its panic as a *LoaderPanicError,
// and a nil value as an empty one (a hit is never nil). It neither counts
// nor traces the run; a Cache's loaders do that themselves.
func RunLoader(ctx context.Context, load LoadFunc) (v []byte, err error) {
	defer func() {
		if r := recover(); r != nil {
			v, err = nil, &LoaderPanicError{Value: r, Stack: debug.Stack()}
		}
	}()
	v, err = load(ctx)
	if err != nil {
		return nil, &LoaderError{Err: err}
	}
	return nonNil(v), nil
}
