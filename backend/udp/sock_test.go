package udp

import (
	"testing"

	"github.com/weftnet/weft/internal/nl"
)

// TestSocketBatchNoAllocs sends and receives batches over a real socket in
// a throwaway namespace (to itself on its loopback) and checks that the
// recvmmsg/sendmmsg path allocates nothing per call.
func TestSocketBatchNoAllocs(t *testing.T) {
	n := newTestNS(t) // skips without root or in -short mode
	h := n.h
	var s *udpSock
	if err := nl.Do(h, func() (err error) { s, err = openUDP(DefaultPort, true); return err }); err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	t.Logf("UDP GSO %v, GRO %v", s.gso, s.gro)
	payload := make([]byte, 3*1000)
	out := []message{{buf: payload[:1000], addr: 0x7f000001}, {buf: payload, addr: 0x7f000001},
		{vec: [][]byte{payload[:300], payload[300:1000]}, addr: 0x7f000001}}
	if s.gso {
		out[1].seg = 1000
	}
	in := make([]message, 4)
	bufs := make([][]byte, len(in))
	for i := range bufs {
		bufs[i] = make([]byte, 65536)
	}
	got := 0
	roundTrip := func() {
		if err := s.WriteBatch(out); err != nil {
			t.Fatal(err)
		}
		// 1 + 3 + 1 datagrams, possibly merged by GRO.
		for want := 5 * 1000; want > 0; {
			for i := range in {
				in[i] = message{buf: bufs[i]}
			}
			n, err := s.ReadBatch(in)
			if err != nil {
				t.Fatal(err)
			}
			for i := 0; i < n; i++ {
				if in[i].addr != 0x7f000001 {
					t.Fatalf("from %#x", in[i].addr)
				}
				want -= in[i].n
				got += in[i].n
			}
		}
	}
	roundTrip()
	if a := testing.AllocsPerRun(50, roundTrip); a != 0 {
		t.Fatalf("%v allocations per batch round trip", a)
	}
}
