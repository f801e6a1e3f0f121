package main

import (
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"strings"
)

// defaultEnvFile is where make install puts weftd's settings, read by
// weftd.service as its EnvironmentFile.
const defaultEnvFile = "/etc/weft/weftd.env"

// envFile is weftd's environment file as systemd's EnvironmentFile= reads
// it, so that weftctl sees the settings weftd runs with.
type envFile struct {
	path string
	vars map[string]string
}

// parseEnvFile reads KEY=VALUE assignments with the rules of systemd's
// EnvironmentFile=, which is how weftd.service reads the same file, so
// that weftctl and weftd see the same values. Nothing is evaluated: no
// variable is expanded and no command is run.
//
//   - Blank lines and lines whose first non-blank character is # or ; are
//     comments.
//   - Whitespace around KEY, before VALUE and at the end of an unquoted
//     VALUE is dropped. In an unquoted VALUE a backslash takes the next
//     character literally, and a backslash at the end of a line continues
//     the value on the next one.
//   - 'single quotes' keep everything literally; in "double quotes" a
//     backslash escapes only " \ $ ` and a newline. Quoted and unquoted
//     parts that follow each other at the start of a value are joined.
//
// A line that is no assignment, or whose KEY is not a variable name, is
// skipped as systemd skips it; warn is called with its line number and
// the reason.
func parseEnvFile(data []byte, warn func(line int, why string)) map[string]string {
	vars := map[string]string{}
	line := 1
	i := 0
	next := func() byte { c := data[i]; i++; return c }
	for i < len(data) {
		c := next()
		switch {
		case c == '\n':
			line++
			continue
		case c == ' ' || c == '\t' || c == '\r':
			continue
		case c == '#' || c == ';':
			for i < len(data) && data[i] != '\n' {
				i++
			}
			continue
		}
		// KEY, up to '=' on the same line.
		start := line
		var key strings.Builder
		key.WriteByte(c)
		for i < len(data) && data[i] != '=' && data[i] != '\n' {
			key.WriteByte(next())
		}
		if i == len(data) || data[i] == '\n' {
			warn(start, "not a KEY=VALUE assignment")
			continue
		}
		i++ // '='
		value, lines := envValue(data, &i)
		line += lines
		name := strings.TrimSpace(key.String())
		if !validEnvName(name) {
			warn(start, fmt.Sprintf("%q is not a variable name", name))
			continue
		}
		vars[name] = value
	}
	return vars
}

// envValue reads one VALUE from data[*i:] up to the end of its line (which
// it consumes) and returns it with the number of newlines consumed.
func envValue(data []byte, i *int) (string, int) {
	const (
		pre = iota // before the value, or after a closing quote
		plain
		single
		double
	)
	var b strings.Builder
	lines := 0
	state := pre
	trimAt := -1 // start of the trailing blanks of a plain value
	for *i < len(data) {
		c := data[*i]
		*i++
		switch state {
		case pre, plain:
			switch {
			case c == '\n':
				lines++
				s := b.String()
				if state == plain && trimAt >= 0 {
					s = s[:trimAt]
				}
				return s, lines
			case c == '\\':
				state, trimAt = plain, -1
				if *i < len(data) {
					if e := data[*i]; e == '\n' {
						lines++
					} else {
						b.WriteByte(e)
					}
					*i++
				}
			case state == pre && c == '\'':
				state = single
			case state == pre && c == '"':
				state = double
			case c == ' ' || c == '\t' || c == '\r':
				if state == plain {
					if trimAt < 0 {
						trimAt = b.Len()
					}
					b.WriteByte(c)
				}
			default:
				state, trimAt = plain, -1
				b.WriteByte(c)
			}
		case single:
			if c == '\'' {
				state = pre
				continue
			}
			if c == '\n' {
				lines++
			}
			b.WriteByte(c)
		case double:
			switch c {
			case '"':
				state = pre
			case '\\':
				if *i < len(data) {
					e := data[*i]
					*i++
					switch {
					case e == '\n':
						lines++
					case strings.IndexByte("\"\\`$", e) >= 0:
						b.WriteByte(e)
					default:
						b.WriteByte('\\')
						b.WriteByte(e)
					}
				}
			default:
				if c == '\n' {
					lines++
				}
				b.WriteByte(c)
			}
		}
	}
	s := b.String()
	if state == plain && trimAt >= 0 {
		s = s[:trimAt]
	}
	return s, lines
}

// validEnvName reports whether s is a variable name: a letter or _, then
// letters, digits or _.
func validEnvName(s string) bool {
	if s == "" {
		return false
	}
	for i, r := range s {
		switch {
		case r == '_', r >= 'A' && r <= 'Z', r >= 'a' && r <= 'z':
		case r >= '0' && r <= '9' && i > 0:
		default:
			return false
		}
	}
	return true
}

// maxEnvFile bounds what weftctl reads of an environment file.
const maxEnvFile = 1 << 20

// secretNames are the settings that make an environment file a secret.
var secretNames = []string{"WEFTD_ETCD_PASSWORD", "FLANNELD_ETCD_PASSWORD"}

// loadEnvFile reads path. A missing file is no error when it is only the
// default (required false): the result is nil then, as it is, with a
// warning, when the default is not readable by this user. A file that others may
// read while it holds the etcd password, or that others may write, is
// still used, with a warning on stderr: weftd reads it just the same, and
// refusing it would only keep the operator from inspecting the network.
func loadEnvFile(path string, required bool, stderr io.Writer) (*envFile, error) {
	f, err := os.Open(path)
	switch {
	case err == nil:
	case !required && errors.Is(err, fs.ErrNotExist):
		return nil, nil
	case !required && errors.Is(err, fs.ErrPermission):
		// Not root on a host where the file is 0600: carry on with the
		// flags and the environment, but say why weftd's settings are
		// not used.
		fmt.Fprintf(stderr, "weftctl: warning: cannot read weftd's settings in %s (permission denied): using flags and the environment only (--env-file= silences this)\n", path)
		return nil, nil
	default:
		return nil, fmt.Errorf("read weftd's settings: %w", err)
	}
	defer f.Close()
	data, err := io.ReadAll(io.LimitReader(f, maxEnvFile+1))
	if err != nil {
		return nil, fmt.Errorf("read weftd's settings %s: %w", path, err)
	}
	if len(data) > maxEnvFile {
		return nil, fmt.Errorf("read weftd's settings %s: larger than %d bytes", path, maxEnvFile)
	}
	vars := parseEnvFile(data, func(line int, why string) {
		fmt.Fprintf(stderr, "weftctl: warning: %s:%d: %s; line ignored, as systemd ignores it\n", path, line, text(why))
	})
	if st, err := f.Stat(); err == nil {
		perm := st.Mode().Perm()
		secret := ""
		for _, k := range secretNames {
			if vars[k] != "" {
				secret = k
				break
			}
		}
		switch {
		case perm&0o022 != 0:
			fmt.Fprintf(stderr, "weftctl: warning: %s is writable by other users (mode %04o), who could point weftd and weftctl at another etcd: chmod 600 %s\n", path, perm, path)
		case secret != "" && perm&0o044 != 0:
			fmt.Fprintf(stderr, "weftctl: warning: %s holds %s and is readable by other users (mode %04o): chmod 600 %s\n", path, secret, perm, path)
		}
	}
	return &envFile{path: path, vars: vars}, nil
}
