// Command mkman writes a manual page for a command whose --help is the
// output of Go's flag.PrintDefaults, so that the page lists exactly the
// flags the binary has. make install runs it for weftd:
//
//	weftd --help 2>weftd.help
//	mkman -template dist/weftd.1.in -version v1.2.3 <weftd.help >weftd.1
//
// The template is roff with two placeholders: @VERSION@, and a line
// @OPTIONS@, replaced by one tagged paragraph per flag. Text in the help
// that is not a flag (a usage line aside) becomes a paragraph in place.
package main

import (
	"bufio"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"regexp"
	"strings"
)

func main() {
	os.Exit(run(os.Args[1:], os.Stdin, os.Stdout, os.Stderr))
}

func run(args []string, stdin io.Reader, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("mkman", flag.ContinueOnError)
	fs.SetOutput(stderr)
	template := fs.String("template", "", "roff template holding @OPTIONS@ and @VERSION@")
	version := fs.String("version", "dev", "version to print in the page header")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	if *template == "" || fs.NArg() > 0 {
		fmt.Fprintln(stderr, "usage: mkman -template FILE [-version V] <help >page")
		return 2
	}
	tmpl, err := os.ReadFile(*template)
	if err != nil {
		fmt.Fprintf(stderr, "mkman: %v\n", err)
		return 1
	}
	help, err := io.ReadAll(stdin)
	if err != nil {
		fmt.Fprintf(stderr, "mkman: read the help: %v\n", err)
		return 1
	}
	page, err := render(string(tmpl), string(help), *version)
	if err != nil {
		fmt.Fprintf(stderr, "mkman: %v\n", err)
		return 1
	}
	if _, err := io.WriteString(stdout, page); err != nil {
		fmt.Fprintf(stderr, "mkman: %v\n", err)
		return 1
	}
	return 0
}

// Flag is one flag of the help.
type Flag struct {
	Name, Placeholder string
	Usage             []string // lines
}

// item is a flag or a paragraph of other text, in the order of the help.
type item struct {
	flag *Flag
	text []string
}

var (
	flagLine  = regexp.MustCompile(`^  (-{1,2}[^\s=]+)(?: (\S.*))?$`)
	usageLine = regexp.MustCompile(`^(Usage|usage)( of [^:]+)?:`)
)

// parseHelp reads flag.PrintDefaults output: "  -name type" lines, each
// followed by its usage lines indented with four spaces and a tab.
func parseHelp(help string) ([]item, error) {
	var items []item
	sc := bufio.NewScanner(strings.NewReader(help))
	var cur *Flag
	for sc.Scan() {
		line := strings.TrimRight(sc.Text(), " \t\r")
		switch {
		case line == "":
			cur = nil
			if n := len(items); n > 0 && items[n-1].flag == nil && len(items[n-1].text) > 0 {
				items = append(items, item{}) // a paragraph ends
			}
		case usageLine.MatchString(line) && len(items) == 0:
			// "Usage of weftd:": the page has its own synopsis.
		case strings.HasPrefix(line, "    \t") && cur != nil:
			cur.Usage = append(cur.Usage, strings.TrimPrefix(line, "    \t"))
		case flagLine.MatchString(line):
			m := flagLine.FindStringSubmatch(line)
			cur = &Flag{Name: strings.TrimLeft(m[1], "-"), Placeholder: m[2]}
			items = append(items, item{flag: cur})
		default:
			cur = nil
			if n := len(items); n == 0 || items[n-1].flag != nil {
				items = append(items, item{})
			}
			items[len(items)-1].text = append(items[len(items)-1].text, strings.TrimSpace(line))
		}
	}
	if err := sc.Err(); err != nil {
		return nil, err
	}
	nflags := 0
	for _, it := range items {
		if it.flag != nil {
			nflags++
		}
	}
	if nflags == 0 {
		return nil, errors.New("the help lists no flags")
	}
	return items, nil
}

// roff escapes running text: backslashes, and a '.' or '\” that would
// start a line as a request.
func roff(s string) string {
	s = strings.ReplaceAll(s, `\`, `\e`)
	if strings.HasPrefix(s, ".") || strings.HasPrefix(s, "'") {
		s = `\&` + s
	}
	return s
}

func render(tmpl, help, version string) (string, error) {
	items, err := parseHelp(help)
	if err != nil {
		return "", err
	}
	var b strings.Builder
	for _, it := range items {
		switch {
		case it.flag != nil:
			f := it.flag
			dashes := `\-\-`
			if len(f.Name) == 1 {
				dashes = `\-` // -v, as klog's flags are written
			}
			fmt.Fprintf(&b, ".TP\n.B %s%s", dashes, strings.ReplaceAll(f.Name, "-", `\-`))
			if f.Placeholder != "" {
				fmt.Fprintf(&b, ` \fI%s\fR`, roff(f.Placeholder))
			}
			b.WriteString("\n")
			for _, u := range f.Usage {
				b.WriteString(roff(u) + "\n")
			}
		case len(it.text) > 0:
			b.WriteString(".PP\n")
			for _, t := range it.text {
				b.WriteString(roff(t) + "\n")
			}
		}
	}
	if strings.Count(tmpl, "\n@OPTIONS@\n") != 1 {
		return "", errors.New("the template needs one line @OPTIONS@")
	}
	page := strings.Replace(tmpl, "\n@OPTIONS@\n", "\n"+b.String(), 1)
	return strings.ReplaceAll(page, "@VERSION@", roff(version)), nil
}
