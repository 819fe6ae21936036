package prommetrics

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// Server serves a gatherer's metrics over HTTP at /metrics: what a program
// without an HTTP server of its own (a culling job, `dbcache cull
// --metrics-addr`) needs to be scraped. A program that has one mounts
// promhttp.HandlerFor itself instead.
type Server struct {
	srv  *http.Server
	ln   net.Listener
	done chan error

	closeOnce sync.Once
	closeErr  error
}

// Listen listens on addr (host:port; port 0 picks a free one, see Addr)
// and serves g's metrics at /metrics until Close. It returns at once; an
// address it cannot listen on is its error.
func Listen(addr string, g prometheus.Gatherer) (*Server, error) {
	if g == nil {
		return nil, errors.New("prommetrics: gatherer is nil")
	}
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("prommetrics: listen on %s: %w", addr, err)
	}
	mux := http.NewServeMux()
	mux.Handle("/metrics", promhttp.HandlerFor(g, promhttp.HandlerOpts{
		// A scrape that finds a failing collector still gets the rest.
		ErrorHandling: promhttp.ContinueOnError,
		Timeout:       30 * time.Second,
	}))
	s := &Server{
		// Bounds on every phase, so a client that stalls cannot hold a
		// connection (and a goroutine) forever.
		srv: &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second, ReadTimeout: 30 * time.Second,
			WriteTimeout: time.Minute, IdleTimeout: 2 * time.Minute},
		ln:   ln,
		done: make(chan error, 1),
	}
	go func() {
		err := s.srv.Serve(ln)
		if errors.Is(err, http.ErrServerClosed) {
			err = nil
		}
		s.done <- err
	}()
	return s, nil
}

// Addr returns the address the server listens on.
func (s *Server) Addr() net.Addr { return s.ln.Addr() }

// Close stops the server: it stops listening, lets scrapes in progress
// finish until ctx ends, then closes their connections. It returns once
// the serving goroutine has ended. Later calls return the first's result.
func (s *Server) Close(ctx context.Context) error {
	s.closeOnce.Do(func() {
		err := s.srv.Shutdown(ctx)
		if err != nil {
			_ = s.srv.Close()
		}
		s.closeErr = errors.Join(err, <-s.done)
	})
	return s.closeErr
}
