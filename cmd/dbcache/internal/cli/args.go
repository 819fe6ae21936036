package cli

import (
	"regexp"
	"strings"

	"github.com/spf13/cobra"
)

// negativeNumber is an argument that flag parsing would take for a cluster
// of shorthand flags ("-5" is flag -5 to pflag).
var negativeNumber = regexp.MustCompile(`^-[0-9]+$`)

// negativeArgs lets incr and decr take a negative DELTA as written:
// `dbcache decr visits -5`. pflag reads "-5" as a shorthand flag, so the
// command line is rewritten, for those commands only, with every argument
// after a "--": the command's words, then the flags (and their values) in
// their order, then "--", then the arguments in theirs. Nothing else
// changes: a flag's value that looks negative stays the flag's value.
func negativeArgs(root *cobra.Command, args []string) []string {
	cmd, _, err := root.Find(args)
	if err != nil || cmd == root || (cmd.Name() != "incr" && cmd.Name() != "decr") {
		return args
	}
	words := strings.Fields(cmd.CommandPath())[1:] // without "dbcache"
	fs := cmd.Flags()
	fs.AddFlagSet(cmd.InheritedFlags())
	var flags, positional []string
	found := false
	for i := 0; i < len(args); i++ {
		s := args[i]
		switch {
		case s == "--":
			positional = append(positional, args[i+1:]...)
			i = len(args)
		case negativeNumber.MatchString(s):
			positional = append(positional, s)
			found = true
		case strings.HasPrefix(s, "--"):
			flags = append(flags, s)
			name, _, hasValue := strings.Cut(s[2:], "=")
			if f := fs.Lookup(name); f != nil && !hasValue && f.NoOptDefVal == "" && i+1 < len(args) {
				flags = append(flags, args[i+1])
				i++
			}
		case strings.HasPrefix(s, "-") && len(s) > 1:
			flags = append(flags, s)
			// A cluster of shorthands: the first that takes a value takes
			// the rest of the cluster, or the next argument.
			for j := 1; j < len(s); j++ {
				f := fs.ShorthandLookup(s[j : j+1])
				if f == nil {
					break
				}
				if f.NoOptDefVal == "" {
					if j == len(s)-1 && i+1 < len(args) {
						flags = append(flags, args[i+1])
						i++
					}
					break
				}
			}
		default:
			positional = append(positional, s)
		}
	}
	if !found || len(positional) < len(words) {
		return args
	}
	// The first positional arguments are the command's words.
	out := append([]string{}, positional[:len(words)]...)
	out = append(out, flags...)
	out = append(out, "--")
	return append(out, positional[len(words):]...)
}
