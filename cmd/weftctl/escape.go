package main

import (
	"bytes"
	"fmt"
	"strconv"
	"strings"
	"unicode"
	"unicode/utf16"
	"unicode/utf8"
)

// Everything weftctl prints from etcd (keys, values, and the error texts
// that embed them) or from weftd's /status goes through one of the helpers
// below, so that a hostile key cannot move the cursor, recolour or clear
// the terminal, forge extra lines, or break the table's columns: no control
// character (C0, DEL, C1), no other non-printing rune (bidi overrides,
// zero-width characters) and no invalid UTF-8 reaches the terminal raw.

// needsEscape reports whether s holds a byte or rune that must not reach a
// terminal raw. keepNewlines lets '\n' and '\t' through, for multi-line
// text whose layout weftctl itself made.
func needsEscape(s string, keepNewlines bool) bool {
	for _, r := range s {
		if r == utf8.RuneError || !unicode.IsPrint(r) && !(keepNewlines && (r == '\n' || r == '\t')) {
			return true
		}
	}
	return false
}

// field renders one string from etcd as a table cell or a word of a line:
// unchanged when it is printable and has no space, else Go-quoted
// ("/coreos.com/network/subnets/\x1b[2J"), so that it stays one field and
// the reader sees that it was escaped.
func field(s string) string {
	if s == "" || needsEscape(s, false) || strings.ContainsAny(s, " \"") {
		return strconv.Quote(s)
	}
	return s
}

// text escapes the non-printing runes of free text, such as an error
// message that embeds a key, in place: "\x1b" for ESC, "\n" for a newline,
// "\u202e" for a bidi override, "\xff" for a byte that is not UTF-8.
func text(s string) string {
	return escapeRunes(s, false)
}

// textLines is text for multi-line output whose newlines and tabs are
// weftctl's own layout; every other non-printing rune is escaped.
func textLines(s string) string {
	return escapeRunes(s, true)
}

func escapeRunes(s string, keepNewlines bool) string {
	if !needsEscape(s, keepNewlines) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); {
		r, size := utf8.DecodeRuneInString(s[i:])
		switch {
		case r == utf8.RuneError && size <= 1:
			fmt.Fprintf(&b, `\x%02x`, s[i])
		case unicode.IsPrint(r) || keepNewlines && (r == '\n' || r == '\t'):
			b.WriteString(s[i : i+size])
		default:
			q := strconv.QuoteRune(r) // '\x1b', '\n', '\u202e'
			b.WriteString(q[1 : len(q)-1])
		}
		i += size
	}
	return b.String()
}

// safeJSON rewrites encoded JSON so that it holds no raw control or
// non-printing rune. encoding/json already escapes C0 controls in the
// strings it encodes, but it passes DEL, C1 controls, bidi overrides and
// the content of a json.RawMessage through as they are. The input is valid
// JSON, so such a rune can only sit inside a string, where \uXXXX means the
// same character: the document's meaning is unchanged. A byte that is not
// UTF-8 becomes \ufffd, as encoding/json does for strings.
func safeJSON(b []byte) []byte {
	if !needsEscape(string(b), true) {
		return b
	}
	var out bytes.Buffer
	out.Grow(len(b) + 32)
	for i := 0; i < len(b); {
		r, size := utf8.DecodeRune(b[i:])
		switch {
		case r == utf8.RuneError && size <= 1:
			out.WriteString(`\ufffd`)
		case unicode.IsPrint(r) || r == '\n' || r == '\t' || r == '\r':
			out.Write(b[i : i+size])
		case r > 0xffff:
			// Outside the BMP: a UTF-16 surrogate pair, as JSON wants.
			r1, r2 := utf16.EncodeRune(r)
			fmt.Fprintf(&out, `\u%04x\u%04x`, r1, r2)
		default:
			fmt.Fprintf(&out, `\u%04x`, r)
		}
		i += size
	}
	return out.Bytes()
}
