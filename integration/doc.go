// Package integration holds dbcache's end-to-end tests: the library, the
// migrations and the CLI against real PostgreSQL servers in containers, with
// faults (stopped, crashed and restarted servers, killed backends, timeouts)
// and hostile input. It has no code of its own; see README.md for how to run
// it and what each group of tests proves.
package integration
