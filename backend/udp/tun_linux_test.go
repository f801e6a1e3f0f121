package udp

import (
	"os/exec"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/weftnet/weft/internal/nl"
)

// TestKernelTUNReadBatch checks how tunFile.ReadBatch batches, on a real
// TUN in a throwaway namespace: packets already queued come back together
// in one call; a call that had to wait returns the first packet alone and
// the next call the rest, without waiting; a lone packet round trip
// allocates nothing.
func TestKernelTUNReadBatch(t *testing.T) {
	n := newTestNS(t) // skips without root or in -short mode
	name, h := n.name, n.h
	var tun *tunFile
	var sock int
	if err := nl.Do(h, func() (err error) {
		if tun, err = openTUN("wtt0", true); err != nil {
			return err
		}
		sock, err = unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
		return err
	}); err != nil {
		t.Fatal(err)
	}
	defer tun.Close()
	defer unix.Close(sock)
	for _, argv := range [][]string{
		// No IPv6: the kernel's own solicitations would land in the queue.
		{"ip", "netns", "exec", name, "sysctl", "-qw", "net.ipv6.conf.all.disable_ipv6=1"},
		{"ip", "-n", name, "addr", "add", "198.18.0.1/24", "dev", "wtt0"},
		{"ip", "-n", name, "link", "set", "wtt0", "up"},
	} {
		if out, err := exec.Command(argv[0], argv[1:]...).CombinedOutput(); err != nil {
			t.Fatalf("%v: %v: %s", argv, err, out)
		}
	}
	// Datagrams to 198.18.0.2 go into the TUN, in the sender's context.
	dst := &unix.SockaddrInet4{Port: 9, Addr: [4]byte{198, 18, 0, 2}}
	payload := make([]byte, 100)
	send := func(k int) {
		t.Helper()
		for i := 0; i < k; i++ {
			payload[0] = byte(i)
			if err := unix.Sendto(sock, payload, 0, dst); err != nil {
				t.Fatalf("sendto: %v", err)
			}
		}
	}
	bufs := make([][]byte, txBatch)
	for i := range bufs {
		bufs[i] = make([]byte, headroom+maxPacket+1)
	}
	sizes := make([]int, txBatch)
	read := func() int {
		t.Helper()
		n, err := tun.ReadBatch(bufs, sizes)
		if err != nil {
			t.Fatal(err)
		}
		for i := 0; i < n; i++ {
			if want := headroom + 20 + 8 + len(payload); sizes[i] != want {
				t.Fatalf("packet %d: %d bytes, want %d", i, sizes[i], want)
			}
		}
		return n
	}

	send(3)
	if n := read(); n != 3 {
		t.Fatalf("3 queued packets: ReadBatch returned %d, want 3", n)
	}

	type result struct {
		n   int
		err error
	}
	done := make(chan result, 1)
	go func() {
		n, err := tun.ReadBatch(bufs, sizes)
		done <- result{n, err}
	}()
	time.Sleep(50 * time.Millisecond) // let it wait in the poller
	select {
	case r := <-done:
		t.Fatalf("ReadBatch on an empty queue returned %d, %v", r.n, r.err)
	default:
	}
	send(3)
	r := <-done
	if r.err != nil || r.n != 1 {
		t.Fatalf("after a wait: ReadBatch returned %d, %v; want the first packet alone", r.n, r.err)
	}
	if n := read(); n != 2 {
		t.Fatalf("the rest: ReadBatch returned %d, want 2", n)
	}

	lone := func() {
		send(1)
		if n := read(); n != 1 {
			t.Fatalf("lone packet: ReadBatch returned %d", n)
		}
	}
	lone()
	if a := testing.AllocsPerRun(50, lone); a != 0 {
		t.Fatalf("%v allocations per lone packet", a)
	}
}
