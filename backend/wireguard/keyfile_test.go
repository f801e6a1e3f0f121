package wireguard

import (
	"encoding/base64"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestLoadOrCreateKey(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "sub", "wgkey")

	k1, created, err := LoadOrCreateKey(path)
	if err != nil || !created {
		t.Fatalf("first call: created=%v err=%v", created, err)
	}
	st, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if st.Mode().Perm() != 0o400 {
		t.Errorf("key file mode %04o, want 0400", st.Mode().Perm())
	}
	if dst, _ := os.Stat(filepath.Dir(path)); dst.Mode().Perm() != 0o700 {
		t.Errorf("created directory mode %04o, want 0700", dst.Mode().Perm())
	}
	b, _ := os.ReadFile(path)
	if raw, err := base64.StdEncoding.DecodeString(strings.TrimSpace(string(b))); err != nil || len(raw) != 32 || string(raw) != string(k1[:]) {
		t.Errorf("file holds %q, want the base64 key", b)
	}
	entries, _ := os.ReadDir(filepath.Dir(path))
	if len(entries) != 1 {
		t.Errorf("directory holds %d entries, want only the key (no temporary file)", len(entries))
	}

	k2, created, err := LoadOrCreateKey(path)
	if err != nil || created || k2 != k1 {
		t.Fatalf("second call: created=%v err=%v same=%v", created, err, k2 == k1)
	}

	// flannel's file: base64 without a newline, written by someone else.
	other := filepath.Join(dir, "flannel-wgkey")
	if err := os.WriteFile(other, []byte(base64.StdEncoding.EncodeToString(k1[:])), 0o400); err != nil {
		t.Fatal(err)
	}
	if k3, _, err := LoadOrCreateKey(other); err != nil || k3 != k1 {
		t.Fatalf("flannel's key file: %v", err)
	}
}

func TestLoadOrCreateKeyRefuses(t *testing.T) {
	dir := t.TempDir()
	k := mustKey(t)
	good := base64.StdEncoding.EncodeToString(k[:]) + "\n"
	for _, tc := range []struct {
		name    string
		content string
		mode    os.FileMode
		want    string
	}{
		{"readable by others", good, 0o404, "accessible to other users"},
		{"readable by group", good, 0o440, "accessible to other users"},
		{"writable by others", good, 0o602, "accessible to other users"},
		{"not a key", "hello\n", 0o400, "does not hold"},
		{"empty", "", 0o600, "read key file"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			path := filepath.Join(dir, strings.ReplaceAll(tc.name, " ", "-"))
			if err := os.WriteFile(path, []byte(tc.content), 0o600); err != nil {
				t.Fatal(err)
			}
			if err := os.Chmod(path, tc.mode); err != nil {
				t.Fatal(err)
			}
			_, _, err := LoadOrCreateKey(path)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("error %v, want one saying %q", err, tc.want)
			}
			if strings.Contains(err.Error(), strings.TrimSpace(good)) {
				t.Fatal("the error quotes the private key")
			}
			if tc.want == "accessible to other users" && !errors.Is(err, ErrKeyFileExposed) {
				t.Fatalf("error %v does not wrap ErrKeyFileExposed", err)
			}
			// The file is left as it was: weftd never replaces a key it
			// refuses.
			if b, _ := os.ReadFile(path); string(b) != tc.content {
				t.Fatal("the refused file was changed")
			}
		})
	}
	t.Run("symbolic link", func(t *testing.T) {
		target := filepath.Join(dir, "target")
		os.WriteFile(target, []byte(good), 0o400)
		link := filepath.Join(dir, "link")
		os.Symlink(target, link)
		if _, _, err := LoadOrCreateKey(link); err == nil || !strings.Contains(err.Error(), "symbolic link") {
			t.Fatalf("error %v, want a refusal of the link", err)
		}
	})
}
