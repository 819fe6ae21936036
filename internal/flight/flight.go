// Package flight shares one load of a key among the goroutines that miss
// it at once: the in-process half of the loaders' stampede protection, for
// dbcache's Cache and memstore's Store alike.
//
// Callers of one key join one flight: the first starts it, on a goroutine
// of its own, and everyone waits for its result (or their own context).
// The flight's context carries the first caller's values and is cancelled
// only when every caller waiting on it has left, so one caller giving up
// never fails the others.
package flight

import (
	"context"
	"sync"
	"sync/atomic"
)

// Group is the flights of one cache, by key. The zero value is ready.
type Group struct {
	mu sync.Mutex
	m  map[string]*Flight
}

// Flight is one load of a key.
type Flight struct {
	done    chan struct{}
	v       []byte
	err     error
	taken   atomic.Bool // the first receiver keeps v; the others copy it
	cancel  context.CancelFunc
	waiting int // guarded by Group.mu
}

// Join returns the flight for key, starting it when there is none: start
// runs on its own goroutine with the flight's context, which has ctx's
// values. start must not panic: a panic there would end the process.
func (g *Group) Join(ctx context.Context, key string, start func(context.Context) ([]byte, error)) *Flight {
	f, _ := g.join(ctx, key, start)
	return f
}

// join is Join that also reports whether the caller joined a flight
// already in progress.
func (g *Group) join(ctx context.Context, key string, start func(context.Context) ([]byte, error)) (*Flight, bool) {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.m == nil {
		g.m = map[string]*Flight{}
	}
	if f, ok := g.m[key]; ok {
		f.waiting++
		return f, true
	}
	fctx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	f := &Flight{done: make(chan struct{}), cancel: cancel, waiting: 1}
	g.m[key] = f
	go func() {
		defer cancel()
		f.v, f.err = start(fctx)
		g.mu.Lock()
		if g.m[key] == f {
			delete(g.m, key)
		}
		g.mu.Unlock()
		close(f.done)
	}()
	return f, false
}

// leave is a caller giving up on f; the last one to leave cancels it, and
// a later caller starts a new flight.
func (g *Group) leave(key string, f *Flight) {
	g.mu.Lock()
	defer g.mu.Unlock()
	f.waiting--
	if f.waiting == 0 {
		if g.m[key] == f {
			delete(g.m, key)
		}
		f.cancel()
	}
}

// Wait returns the flight's result to one caller, who owns the slice, or
// ctx's error when the caller gives up first.
func (g *Group) Wait(ctx context.Context, key string, f *Flight) ([]byte, error) {
	select {
	case <-f.done:
		if f.err != nil {
			return nil, f.err
		}
		if f.taken.CompareAndSwap(false, true) {
			return f.v, nil
		}
		return append([]byte{}, f.v...), nil
	case <-ctx.Done():
		g.leave(key, f)
		return nil, ctx.Err()
	}
}

// Do is Join and Wait.
func (g *Group) Do(ctx context.Context, key string, start func(context.Context) ([]byte, error)) ([]byte, error) {
	return g.Wait(ctx, key, g.Join(ctx, key, start))
}

// DoJoined is Do that also reports whether the caller joined a flight
// another caller had started.
func (g *Group) DoJoined(ctx context.Context, key string, start func(context.Context) ([]byte, error)) ([]byte, bool, error) {
	f, joined := g.join(ctx, key, start)
	v, err := g.Wait(ctx, key, f)
	return v, joined, err
}

// Waiting reports how many callers wait on the flight of key (0 when none
// is in flight), for tests.
func (g *Group) Waiting(key string) int {
	g.mu.Lock()
	defer g.mu.Unlock()
	if f, ok := g.m[key]; ok {
		return f.waiting
	}
	return 0
}
