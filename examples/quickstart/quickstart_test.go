package main

import (
	"bytes"
	"context"
	"io"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/dbcache/dbcache/internal/dbtest"
)

func TestMain(m *testing.M) { dbtest.Main(m) }

// The quick start runs against a fresh schema and prints what the README
// says it prints.
func TestQuickstart(t *testing.T) {
	s := dbtest.NewSchema(t)
	out := captureStdout(t, func() {
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		require.NoError(t, run(ctx, s.DSN(t)))
	})
	require.Equal(t, `user:42 = {"name":"Ada"}
report = expensive result
deleted: true
`, out)
}

// The README shows this file's code, verbatim: what CI runs is what readers
// copy.
func TestReadmeShowsTheQuickstart(t *testing.T) {
	src, err := os.ReadFile("main.go")
	require.NoError(t, err)
	readme, err := os.ReadFile("../../README.md")
	require.NoError(t, err)
	// From the imports to the end of run: what a reader needs.
	code := string(src)
	code = code[strings.Index(code, "import ("):]
	require.Contains(t, string(readme), code, "README.md must show examples/quickstart/main.go from its imports on")
}

func captureStdout(t *testing.T, f func()) string {
	t.Helper()
	r, w, err := os.Pipe()
	require.NoError(t, err)
	old := os.Stdout
	os.Stdout = w
	done := make(chan string)
	go func() {
		var b bytes.Buffer
		_, _ = io.Copy(&b, r)
		done <- b.String()
	}()
	defer func() { os.Stdout = old }()
	f()
	require.NoError(t, w.Close())
	os.Stdout = old
	return <-done
}
