package wireguard

import (
	"bytes"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"

	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"

	"github.com/weftnet/weft/subnet"
)

// LeaseData is the BackendData of a wireguard lease, as flannel writes it:
// {"PublicKey":"<base64>","Port":51820}. A Port of 0 means "the port the
// reader listens on itself".
type LeaseData struct {
	PublicKey wgtypes.Key
	Port      int
}

// leaseJSON is the wire form; field names match case-insensitively.
type leaseJSON struct {
	PublicKey string
	Port      json.RawMessage
}

// maxLeaseData bounds the BackendData we are willing to parse: the
// canonical form is under 80 bytes.
const maxLeaseData = 4096

// Errors of ParseLeaseData, for errors.Is.
var (
	ErrNoLeaseData = errors.New("wireguard BackendData is missing")
	ErrBadKey      = errors.New("not a usable WireGuard public key")
	ErrBadPort     = errors.New("not a UDP port")
)

// ParseLeaseData reads a peer's BackendData. It never panics, whatever the
// input: anything but a 32-byte base64 key that is not all zeros, and a
// Port in 0-65535, is an error naming what is wrong.
func ParseLeaseData(raw json.RawMessage) (LeaseData, error) {
	raw = bytes.TrimSpace(raw)
	if len(raw) == 0 || string(raw) == "null" {
		return LeaseData{}, ErrNoLeaseData
	}
	if len(raw) > maxLeaseData {
		return LeaseData{}, fmt.Errorf("wireguard BackendData: %d bytes is too long", len(raw))
	}
	var j leaseJSON
	if err := json.Unmarshal(raw, &j); err != nil {
		return LeaseData{}, fmt.Errorf("wireguard BackendData: %w", err)
	}
	var d LeaseData
	k, err := base64.StdEncoding.DecodeString(j.PublicKey)
	switch {
	case j.PublicKey == "":
		return LeaseData{}, fmt.Errorf("wireguard BackendData: PublicKey is missing: %w", ErrBadKey)
	case err != nil:
		return LeaseData{}, fmt.Errorf("wireguard BackendData: PublicKey is not base64: %w", ErrBadKey)
	case len(k) != wgtypes.KeyLen:
		return LeaseData{}, fmt.Errorf("wireguard BackendData: PublicKey has %d bytes, want %d: %w", len(k), wgtypes.KeyLen, ErrBadKey)
	}
	copy(d.PublicKey[:], k)
	if d.PublicKey == (wgtypes.Key{}) {
		return LeaseData{}, fmt.Errorf("wireguard BackendData: PublicKey is all zeros: %w", ErrBadKey)
	}
	if port := bytes.TrimSpace(j.Port); len(port) > 0 && string(port) != "null" {
		var n json.Number
		err := json.Unmarshal(port, &n)
		p, perr := n.Int64()
		if err != nil || port[0] == '"' || perr != nil || p < 0 || p > 65535 {
			return LeaseData{}, fmt.Errorf("wireguard BackendData: Port %.20s: %w (0-65535)", port, ErrBadPort)
		}
		d.Port = int(p)
	}
	return d, nil
}

// Marshal returns the canonical BackendData.
func (d LeaseData) Marshal() json.RawMessage {
	b, _ := json.Marshal(struct {
		PublicKey string
		Port      int
	}{base64.StdEncoding.EncodeToString(d.PublicKey[:]), d.Port})
	return b
}

// PeerData judges a peer's wireguard BackendData for subnet.FilterPeers:
// its identity is the public key, which two hosts must never share (the
// device holds one peer per key); unusable data is an error, and the peer
// is refused with it.
func PeerData(a subnet.LeaseAttrs) (string, error) {
	d, err := ParseLeaseData(a.BackendData)
	if err != nil {
		return "", err
	}
	return string(d.PublicKey[:]), nil
}
