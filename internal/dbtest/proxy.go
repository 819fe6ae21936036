package dbtest

import (
	"io"
	"net"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// Proxy forwards TCP connections from a loopback port to the test server,
// and can go silent: Freeze stops forwarding in both directions while every
// connection stays open, which is what a server that stops answering (a
// hung host, a network partition without resets) looks like to a client.
type Proxy struct {
	ln       net.Listener
	target   string
	frozen   atomic.Bool
	mu       sync.Mutex
	thaw     chan struct{} // closed on Thaw; replaced on Freeze
	conns    []net.Conn
	pairs    []*atomic.Bool // per connection: silenced for good
	closed   bool
	fromSrv  atomic.Int64
	accepted atomic.Int64
}

// NewProxy starts a proxy to target (host:port), closed when the test ends.
func NewProxy(tb testing.TB, target string) *Proxy {
	tb.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		tb.Fatalf("dbtest: proxy listen: %v", err)
	}
	p := &Proxy{ln: ln, target: target, thaw: make(chan struct{})}
	close(p.thaw)
	go p.accept()
	tb.Cleanup(p.Close)
	return p
}

// Addr is the proxy's host:port.
func (p *Proxy) Addr() string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.ln.Addr().String()
}

// Port is the proxy's port.
func (p *Proxy) Port() uint16 {
	p.mu.Lock()
	defer p.mu.Unlock()
	return uint16(p.ln.Addr().(*net.TCPAddr).Port)
}

// Freeze stops forwarding bytes; connections stay open and new ones are
// accepted but get no answer.
func (p *Proxy) Freeze() {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.frozen.Swap(true) {
		return
	}
	p.thaw = make(chan struct{})
}

// Thaw resumes forwarding.
func (p *Proxy) Thaw() {
	p.mu.Lock()
	defer p.mu.Unlock()
	if !p.frozen.Swap(false) {
		return
	}
	close(p.thaw)
}

// SilenceExisting makes every connection open now go silent for good: bytes
// in either direction are dropped, while the TCP connections stay open.
// Connections made later are forwarded as usual. It is a connection that a
// server (or a middlebox) stopped answering, in a pool whose other
// connections work.
func (p *Proxy) SilenceExisting() {
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, dead := range p.pairs {
		dead.Store(true)
	}
}

// Down makes the server unreachable, as a stopped server is: every open
// connection is closed (the client sees a reset or EOF) and new ones are
// refused, until Up.
func (p *Proxy) Down() {
	p.mu.Lock()
	conns := p.conns
	p.conns = nil
	ln := p.ln
	p.mu.Unlock()
	_ = ln.Close()
	for _, c := range conns {
		_ = c.Close()
	}
}

// Up listens again on the same port after Down.
func (p *Proxy) Up(tb testing.TB) {
	tb.Helper()
	p.mu.Lock()
	addr := p.ln.Addr().String()
	p.mu.Unlock()
	var ln net.Listener
	var err error
	for range 50 { // the port can linger briefly after Close
		if ln, err = net.Listen("tcp", addr); err == nil {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	if err != nil {
		tb.Fatalf("dbtest: proxy listen again on %s: %v", addr, err)
	}
	p.mu.Lock()
	p.ln = ln
	p.mu.Unlock()
	go p.accept()
}

// BytesFromServer counts the bytes forwarded from the server to clients.
func (p *Proxy) BytesFromServer() int64 { return p.fromSrv.Load() }

// Close stops the proxy and closes every connection.
func (p *Proxy) Close() {
	p.mu.Lock()
	if p.closed {
		p.mu.Unlock()
		return
	}
	p.closed = true
	conns := p.conns
	p.conns = nil
	if p.frozen.Swap(false) {
		close(p.thaw)
	}
	ln := p.ln
	p.mu.Unlock()
	_ = ln.Close()
	for _, c := range conns {
		_ = c.Close()
	}
}

func (p *Proxy) track(c net.Conn) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closed {
		_ = c.Close()
		return false
	}
	p.conns = append(p.conns, c)
	return true
}

func (p *Proxy) accept() {
	p.mu.Lock()
	ln := p.ln
	p.mu.Unlock()
	for {
		client, err := ln.Accept()
		if err != nil {
			return
		}
		p.accepted.Add(1)
		if !p.track(client) {
			return
		}
		go func() {
			server, err := net.Dial("tcp", p.target)
			if err != nil {
				_ = client.Close()
				return
			}
			if !p.track(server) {
				_ = client.Close()
				return
			}
			dead := &atomic.Bool{}
			p.mu.Lock()
			p.pairs = append(p.pairs, dead)
			p.mu.Unlock()
			go p.pipe(server, client, dead, nil)
			go p.pipe(client, server, dead, &p.fromSrv)
		}()
	}
}

// pipe copies src to dst, holding each chunk while the proxy is frozen and
// dropping it once the pair is silenced.
func (p *Proxy) pipe(dst, src net.Conn, dead *atomic.Bool, count *atomic.Int64) {
	defer func() { _ = dst.Close(); _ = src.Close() }()
	buf := make([]byte, 32<<10)
	for {
		n, err := src.Read(buf)
		if n > 0 {
			p.mu.Lock()
			thaw := p.thaw
			p.mu.Unlock()
			<-thaw
			if dead.Load() {
				continue
			}
			if count != nil {
				count.Add(int64(n))
			}
			if _, werr := dst.Write(buf[:n]); werr != nil {
				return
			}
		}
		if err != nil {
			return // EOF or a closed connection: the other side closes too
		}
	}
}

// SilentListener accepts TCP connections on a loopback port and never
// answers: a server that is up at the TCP level and dead above it. It is
// closed when the test ends.
func SilentListener(tb testing.TB) (port uint16) {
	tb.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		tb.Fatalf("dbtest: listen: %v", err)
	}
	var mu sync.Mutex
	var conns []net.Conn
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			conns = append(conns, c)
			mu.Unlock()
			go func() { _, _ = io.Copy(io.Discard, c) }()
		}
	}()
	tb.Cleanup(func() {
		_ = ln.Close()
		mu.Lock()
		defer mu.Unlock()
		for _, c := range conns {
			_ = c.Close()
		}
	})
	return uint16(ln.Addr().(*net.TCPAddr).Port)
}
