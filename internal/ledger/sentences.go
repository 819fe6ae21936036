package ledger

import (
	"go/ast"
	"go/doc/comment"
	"go/parser"
	"go/token"
	"regexp"
	"strings"
)

// promiseWord matches the words that make a sentence a candidate promise:
// the list (never, always, at most, within, exactly, cannot), the
// other ways to state a bound, and "guarantee".
var promiseWord = regexp.MustCompile(`(?i)\b(never|always|at most|at least|within|exactly|cannot|can't|can not|guarantee[sd]?|no more than|bounded)\b`)

// HasPromiseWord reports whether s uses a promise word.
func HasPromiseWord(s string) bool { return promiseWord.MatchString(s) }

// Doc is one documented file's prose: its blocks (paragraphs, list items,
// table cells, headings) with code left out, each normalized.
type Doc struct {
	File   string
	Blocks []string
}

// Text is the file's prose as one normalized string, for finding quotes.
func (d Doc) Text() string { return strings.Join(d.Blocks, " ") }

// Sentences splits the blocks into sentences.
func (d Doc) Sentences() []string {
	var out []string
	for _, b := range d.Blocks {
		out = append(out, splitSentences(b)...)
	}
	return out
}

// Markdown reads a Markdown file's prose: fenced code blocks are left out,
// and each paragraph, list item, heading and table cell is a block.
func Markdown(file string, src []byte) Doc {
	d := Doc{File: file}
	var (
		cur   []string
		fence string
	)
	flush := func() {
		if len(cur) > 0 {
			if b := Normalize(strings.Join(cur, " ")); b != "" {
				d.Blocks = append(d.Blocks, b)
			}
			cur = cur[:0]
		}
	}
	for _, raw := range strings.Split(string(src), "\n") {
		line := strings.TrimSpace(raw)
		if fence != "" {
			if strings.HasPrefix(line, fence) {
				fence = ""
			}
			continue
		}
		switch {
		case strings.HasPrefix(line, "```"), strings.HasPrefix(line, "~~~"):
			flush()
			fence = line[:3]
		case line == "":
			flush()
		case strings.HasPrefix(line, "|"):
			flush()
			cells := splitRow(line)
			if isSeparator(cells) {
				continue
			}
			for _, c := range cells {
				if c = Normalize(c); c != "" {
					d.Blocks = append(d.Blocks, c)
				}
			}
		case strings.HasPrefix(line, "#"):
			flush()
			cur = append(cur, strings.TrimLeft(line, "# "))
			flush()
		case listItem.MatchString(line):
			flush()
			cur = append(cur, listItem.ReplaceAllString(line, ""))
		case strings.HasPrefix(line, ">"):
			cur = append(cur, strings.TrimLeft(line, "> "))
		default:
			cur = append(cur, line)
		}
	}
	flush()
	return d
}

var listItem = regexp.MustCompile(`^([-*+]|\d+[.)])\s+`)

// GoPackageDoc reads the package doc comment of a Go file (the comment on
// its package clause), leaving code blocks out. ok is false when the file
// has none.
func GoPackageDoc(file string, src []byte) (Doc, bool) {
	fset := token.NewFileSet()
	f, err := parser.ParseFile(fset, file, src, parser.ParseComments|parser.PackageClauseOnly)
	if err != nil || f.Doc == nil {
		return Doc{}, false
	}
	return GoComment(file, f.Doc), true
}

// GoComment reads one doc comment's prose.
func GoComment(file string, cg *ast.CommentGroup) Doc {
	d := Doc{File: file}
	var p comment.Parser
	var add func(blocks []comment.Block)
	add = func(blocks []comment.Block) {
		for _, b := range blocks {
			switch b := b.(type) {
			case *comment.Paragraph:
				d.Blocks = append(d.Blocks, Normalize(textOf(b.Text)))
			case *comment.Heading:
				d.Blocks = append(d.Blocks, Normalize(textOf(b.Text)))
			case *comment.List:
				for _, it := range b.Items {
					add(it.Content)
				}
			}
		}
	}
	add(p.Parse(cg.Text()).Content)
	return d
}

func textOf(ts []comment.Text) string {
	var b strings.Builder
	for _, t := range ts {
		switch t := t.(type) {
		case comment.Plain:
			b.WriteString(string(t))
		case comment.Italic:
			b.WriteString(string(t))
		case *comment.Link:
			b.WriteString(textOf(t.Text))
		case *comment.DocLink:
			b.WriteString("[")
			b.WriteString(textOf(t.Text))
			b.WriteString("]")
		}
	}
	return b.String()
}

// splitSentences splits a block after '.', '!' or '?' (or ':' ending a
// clause) followed by a space and a capital, a digit, a backtick, a quote
// or a parenthesis: good enough for the project's prose, where it errs
// towards longer sentences, which only makes a quote easier to place.
func splitSentences(b string) []string {
	var out []string
	start := 0
	for i := 0; i+2 < len(b); i++ {
		if (b[i] == '.' || b[i] == '!' || b[i] == '?') && b[i+1] == ' ' && startsSentence(b[i+2]) && !abbreviation(b[start:i+1]) {
			out = append(out, strings.TrimSpace(b[start:i+1]))
			start = i + 2
		}
	}
	if s := strings.TrimSpace(b[start:]); s != "" {
		out = append(out, s)
	}
	return out
}

func startsSentence(c byte) bool {
	return c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || strings.IndexByte("`\"(*[_", c) >= 0 || c >= 0x80
}

// abbreviation reports whether s ends in an abbreviation that does not end
// a sentence.
func abbreviation(s string) bool {
	for _, a := range []string{"e.g.", "i.e.", "etc.", "vs.", "cf.", "approx."} {
		if strings.HasSuffix(s, a) {
			return true
		}
	}
	return false
}
