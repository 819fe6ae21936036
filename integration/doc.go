// Package integration holds dbcache's end-to-end tests: the library, the
// migrations and the CLI against real, throwaway PostgreSQL servers
// (internal/pgserver: containers, or the machine's PostgreSQL installation),
// with faults (stopped, crashed and restarted servers, killed backends, timeouts)
// and hostile input. It has no code of its own; see README.md for how to run
// it and what each group of tests proves.
package integration
