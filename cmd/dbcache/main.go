// Command dbcache administers a dbcache cache in PostgreSQL: migrations,
// cache operations, stats, culling, a load generator and a demo. Run
// `dbcache --help`, or see docs/cli.md.
//
// Every error is one line on stderr starting "dbcache: " (under --json, one
// JSON object), never a stack trace. Every answer from the server is waited
// for at most the statement timeout plus 2 s, whatever runs the statement,
// so a server or network that stops answering fails the command with a
// timeout rather than hanging it. SIGINT or SIGTERM stops a command cleanly;
// a second signal kills it at once.
package main

import (
	"context"
	"os"
	"os/signal"
	"syscall"

	"golang.org/x/term"

	"github.com/dbcache/dbcache/cmd/dbcache/internal/cli"
)

func main() {
	// SIGINT and SIGTERM cancel the context: commands stop cleanly (cull
	// after its current batch, bench with the results so far). Once the
	// context is cancelled the handler is removed, so a second signal kills
	// the process at once.
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	go func() {
		<-ctx.Done()
		stop()
	}()
	code := cli.Run(ctx, &cli.Config{
		Args:            os.Args[1:],
		Stdin:           os.Stdin,
		Out:             os.Stdout,
		Err:             os.Stderr,
		StdinIsTerminal: term.IsTerminal(int(os.Stdin.Fd())),
		OutIsTerminal:   term.IsTerminal(int(os.Stdout.Fd())),
		ErrIsTerminal:   term.IsTerminal(int(os.Stderr.Fd())),
	})
	stop()
	os.Exit(code)
}
