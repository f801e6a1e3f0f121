package udplab

import (
	"testing"
	"time"
)

func TestParsePing(t *testing.T) {
	out := `PING 198.18.2.2 (198.18.2.2) 56(84) bytes of data.
64 bytes from 198.18.2.2: icmp_seq=1 ttl=62 time=0.512 ms
64 bytes from 198.18.2.2: icmp_seq=2 ttl=62 time=0.101 ms
From 198.18.1.1 icmp_seq=3 Destination Host Unreachable
64 bytes from 198.18.2.2: icmp_seq=4 ttl=62 time=1.25 ms
64 bytes from 198.18.2.2: icmp_seq=5 ttl=62 time=bogus ms

--- 198.18.2.2 ping statistics ---
5 packets transmitted, 3 received, 40% packet loss, time 4ms
rtt min/avg/max/mdev = 0.101/0.621/1.250/0.470 ms
`
	rtts, sent := ParsePing(out)
	want := []time.Duration{512 * time.Microsecond, 101 * time.Microsecond, 1250 * time.Microsecond}
	if sent != 5 || len(rtts) != len(want) {
		t.Fatalf("got %v, %d sent; want %v, 5 sent", rtts, sent, want)
	}
	for i := range want {
		if rtts[i] != want[i] {
			t.Errorf("rtt %d = %v, want %v", i, rtts[i], want[i])
		}
	}
	if rtts, sent := ParsePing("connect: Network is unreachable"); len(rtts) != 0 || sent != 0 {
		t.Errorf("from an error: %v, %d", rtts, sent)
	}
}

func TestSummarise(t *testing.T) {
	var rtts []time.Duration
	for i := 200; i >= 1; i-- {
		rtts = append(rtts, time.Duration(i)*time.Microsecond)
	}
	r := Summarise(rtts, 210)
	if r.Median != 100*time.Microsecond || r.P99 != 198*time.Microsecond || r.Replies != 200 || r.Sent != 210 {
		t.Errorf("got %+v", r)
	}
	if rtts[0] != 200*time.Microsecond {
		t.Error("Summarise reordered its input")
	}
	if r := Summarise(nil, 3); r.Median != 0 || r.Replies != 0 || r.Sent != 3 {
		t.Errorf("no replies: %+v", r)
	}
}
