package cli

import (
	"errors"
	"fmt"
	"io"
	"os"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"
)

// A key a shell argument cannot carry: one that ends in a newline (command
// substitution strips it), one that starts with "-" in a script that did
// not think of "--", or bytes a script holds only in a file. --key-file
// reads the KEY from a file instead, byte for byte, or from stdin with "-".

// keyFileMax bounds what --key-file reads: a key is at most
// dbcache.MaxKeyBytes with its prefix, so a larger file is a mistake.
const keyFileMax = 64 << 10

// addKeyFile adds --key-file to a command that takes a KEY.
func (f *cacheFlags) addKeyFile(fs *pflag.FlagSet) {
	fs.StringVar(&f.keyFile, "key-file", "", `read KEY from this file, byte for byte (a trailing newline is part of the key), or stdin with "-"; KEY is then left out`)
}

// keyArgs is the positional-argument rule of a command whose first argument
// is KEY, followed by up to extra more: with --key-file, KEY is left out.
func keyArgs(extra int) cobra.PositionalArgs {
	return func(cmd *cobra.Command, args []string) error {
		if f := cmd.Flags().Lookup("key-file"); f != nil && f.Changed {
			if len(args) > extra {
				return fmt.Errorf("with --key-file, KEY is read from the file: accepts at most %d arg(s) after it, received %d", extra, len(args))
			}
			return nil
		}
		if extra == 0 {
			return cobra.ExactArgs(1)(cmd, args)
		}
		return cobra.RangeArgs(1, 1+extra)(cmd, args)
	}
}

// key returns the command's KEY and the arguments after it: from
// --key-file when given, else the first argument. valueFromStdin says the
// command reads its value from stdin too (set or add without VALUE), which
// --key-file - cannot share.
func (a *app) key(cmd *cobra.Command, cf *cacheFlags, args []string, valueFromStdin func(rest []string) bool) (string, []string, error) {
	if f := cmd.Flags().Lookup("key-file"); f == nil || !f.Changed {
		return args[0], args[1:], nil
	}
	var r io.Reader
	switch cf.keyFile {
	case "":
		return "", nil, usagef("--key-file needs a file name, or - for stdin")
	case "-":
		if valueFromStdin != nil && valueFromStdin(args) {
			return "", nil, usagef("--key-file - and the value would both be read from stdin: give VALUE as an argument, or the key in a file")
		}
		if a.cfg.StdinIsTerminal {
			return "", nil, usagef("--key-file -: no key on stdin (it is a terminal); pipe the key in, or name a file")
		}
		r = a.stdin
	default:
		file, err := os.Open(cf.keyFile)
		if err != nil {
			return "", nil, usagef("--key-file: %w", errors.Unwrap(err))
		}
		defer file.Close()
		r = file
	}
	b, err := io.ReadAll(io.LimitReader(r, keyFileMax+1))
	if err != nil {
		return "", nil, fmt.Errorf("--key-file: read the key: %w", err)
	}
	if len(b) > keyFileMax {
		return "", nil, usagef("--key-file: more than %d bytes; a key is at most 2048 bytes with its prefix", keyFileMax)
	}
	return string(b), args, nil
}
