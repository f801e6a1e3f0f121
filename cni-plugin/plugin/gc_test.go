package plugin

import (
	"errors"
	"fmt"
	"path/filepath"
	"strings"
	"testing"

	"github.com/containernetworking/cni/pkg/skel"
	"github.com/containernetworking/cni/pkg/types"

	"github.com/weftnet/weft/cni-plugin/ipam"
)

// TestGCRefusesWithoutValidAttachments: a GC request that carries no list
// of valid attachments (missing or null) is refused with an error naming the
// list, and releases nothing. The request is refused before any link is
// looked at, so this runs without root in any namespace.
func TestGCRefusesWithoutValidAttachments(t *testing.T) {
	owners := []ipam.Owner{{Network: "weft", ContainerID: "gc-test-a", IfName: "eth0"}, {Network: "weft", ContainerID: "gc-test-b", IfName: "eth0"}}
	base := `"cniVersion":"1.1.0","name":"weft","type":"weft"`
	cases := []struct {
		name, extra string
		wantErr     string // "" for success
	}{
		{"no list", ``, `no "cni.dev/valid-attachments" list`},
		{"null list", `,"cni.dev/valid-attachments":null,"cni.dev/attachments":null`, `no "cni.dev/valid-attachments" list`},
		{"not a list", `,"cni.dev/valid-attachments":{"containerID":"gc-test-a"}`, `cni.dev/valid-attachments: want a list`},
		// Every reservation is listed, so nothing is released (and no link
		// is looked up): the list is read under either name.
		{"full list", `,"cni.dev/valid-attachments":[{"containerID":"gc-test-a","ifname":"eth0"},{"containerID":"gc-test-b","ifname":"eth0"}]`, ""},
		{"old name", `,"cni.dev/attachments":[{"containerID":"gc-test-a","ifname":"eth0"},{"containerID":"gc-test-b","ifname":"eth0"}]`, ""},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			conf := fmt.Sprintf(`{%s,"dataDir":%q,"logFile":%q`, base, filepath.Join(dir, "data"), filepath.Join(dir, "log"))
			nc, err := ParseConfig([]byte(conf + `}`))
			if err != nil {
				t.Fatal(err)
			}
			store, err := openStore(nc, nil)
			if err != nil {
				t.Fatal(err)
			}
			for _, o := range owners {
				err := store.Do(func(tx *ipam.Tx) error {
					_, _, err := tx.Allocate(testEnv.LeaseSubnet(), testEnv.Subnet.Addr(), o)
					return err
				})
				if err != nil {
					t.Fatal(err)
				}
			}
			err = cmdGC(&skel.CmdArgs{StdinData: []byte(conf + tc.extra + `}`)})
			if tc.wantErr == "" {
				if err != nil {
					t.Fatalf("GC: %v", err)
				}
			} else {
				var te *types.Error
				if !errors.As(err, &te) || te.Code != types.ErrInvalidNetworkConfig || !strings.Contains(te.Msg, tc.wantErr) {
					t.Fatalf("GC: got %v, want code %d with %q", err, types.ErrInvalidNetworkConfig, tc.wantErr)
				}
			}
			left, err := store.List()
			if err != nil {
				t.Fatal(err)
			}
			if len(left) != len(owners) {
				t.Fatalf("%d reservations left, want all %d", len(left), len(owners))
			}
		})
	}
}
