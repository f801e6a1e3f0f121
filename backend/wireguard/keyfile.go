package wireguard

import (
	"bytes"
	"encoding/base64"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"

	"golang.org/x/sys/unix"
	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"
)

// DefaultKeyFile is flannel's private key file. /run is wiped at boot, so
// the key, and with it the public key in the lease, changes at every
// reboot; peers pick the new one up from the lease.
const DefaultKeyFile = "/run/flannel/wgkey"

// KeyFileEnv overrides DefaultKeyFile, as in flannel.
const KeyFileEnv = "WIREGUARD_KEY_FILE"

// ErrKeyFileExposed is wrapped by LoadOrCreateKey's error for a key file
// that users other than its owner may read or write.
var ErrKeyFileExposed = errors.New("private key file is accessible to other users")

// LoadOrCreateKey reads the base64 private key at path, or, when the file
// does not exist, generates a key and writes it there with mode 0400
// (creating missing directories with mode 0700). It refuses a file that
// group or others may read or write, a file that is not a regular file
// (a symbolic link is not followed), and one that does not hold a key.
// created reports whether a new key was written.
func LoadOrCreateKey(path string) (key wgtypes.Key, created bool, err error) {
	key, err = readKey(path)
	if !errors.Is(err, fs.ErrNotExist) {
		return key, false, err
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return wgtypes.Key{}, false, fmt.Errorf("create directory of key file: %w", err)
	}
	key, err = wgtypes.GeneratePrivateKey()
	if err != nil {
		return wgtypes.Key{}, false, fmt.Errorf("generate private key: %w", err)
	}
	// Written to a private temporary file and renamed into place, so that
	// the key is never readable by others and never half written. A link
	// fails if another writer won the race: then its key is used.
	tmp, err := os.CreateTemp(filepath.Dir(path), ".wgkey-*")
	if err != nil {
		return wgtypes.Key{}, false, fmt.Errorf("write key file: %w", err)
	}
	defer os.Remove(tmp.Name())
	if err := tmp.Chmod(0o400); err != nil {
		tmp.Close()
		return wgtypes.Key{}, false, fmt.Errorf("write key file: %w", err)
	}
	_, werr := tmp.WriteString(base64.StdEncoding.EncodeToString(key[:]) + "\n")
	serr := tmp.Sync()
	cerr := tmp.Close()
	if err := errors.Join(werr, serr, cerr); err != nil {
		return wgtypes.Key{}, false, fmt.Errorf("write key file: %w", err)
	}
	if err := os.Link(tmp.Name(), path); err != nil {
		if errors.Is(err, fs.ErrExist) {
			key, err = readKey(path)
			return key, false, err
		}
		return wgtypes.Key{}, false, fmt.Errorf("write key file: %w", err)
	}
	return key, true, nil
}

// readKey reads and checks an existing key file.
func readKey(path string) (wgtypes.Key, error) {
	f, err := os.OpenFile(path, os.O_RDONLY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
	if err != nil {
		if errors.Is(err, unix.ELOOP) {
			return wgtypes.Key{}, fmt.Errorf("key file %s is a symbolic link; refusing it", path)
		}
		return wgtypes.Key{}, fmt.Errorf("read key file: %w", err)
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return wgtypes.Key{}, fmt.Errorf("read key file: %w", err)
	}
	if !st.Mode().IsRegular() {
		return wgtypes.Key{}, fmt.Errorf("key file %s is not a regular file", path)
	}
	if perm := st.Mode().Perm(); perm&0o077 != 0 {
		return wgtypes.Key{}, fmt.Errorf("key file %s has mode %04o: %w; chmod 0400 it, or delete it to have a new key generated", path, perm, ErrKeyFileExposed)
	}
	buf := make([]byte, 256)
	n, err := f.Read(buf)
	if err != nil && n == 0 {
		return wgtypes.Key{}, fmt.Errorf("read key file %s: %w", path, err)
	}
	k, err := base64.StdEncoding.DecodeString(string(bytes.TrimSpace(buf[:n])))
	if err != nil || len(k) != wgtypes.KeyLen {
		// The content is secret: never quote it.
		return wgtypes.Key{}, fmt.Errorf("key file %s does not hold a base64 WireGuard private key", path)
	}
	var key wgtypes.Key
	copy(key[:], k)
	return key, nil
}
