package bench

import (
	"fmt"
	"runtime"
	"time"

	"golang.org/x/sys/unix"
)

// Thread wake-ups on this machine: what the kernel costs to run a thread
// that waits in read(2) when another thread writes, both when the waiting
// thread sits on another, idle CPU and when it shares the writer's CPU.
// A udp round trip wakes weftd three times (our TUN reader, the peer's
// socket reader, our socket reader) where vxlan wakes it never, so this
// is the floor under the udp backend's idle RTT above vxlan's.

// WakeupCost is the median cost of one wake-up, each way measured as half
// a pipe ping-pong between two threads, the rounds gap apart so that the
// CPUs go idle in between as they do between a user's pings.
type WakeupCost struct {
	OtherCPU time.Duration // the woken thread pinned to another CPU than the writer's
	SameCPU  time.Duration // both threads pinned to one CPU
	Rounds   int
	Gap      time.Duration
}

func (w WakeupCost) String() string {
	return fmt.Sprintf("%s onto another, idle CPU; %s on the writer's CPU", fmtDur(w.OtherCPU), fmtDur(w.SameCPU))
}

// MeasureWakeup measures WakeupCost with rounds ping-pongs gap apart for
// each placement. It needs two CPUs for the cross-CPU figure; with one,
// OtherCPU is zero.
func MeasureWakeup(rounds int, gap time.Duration) (WakeupCost, error) {
	w := WakeupCost{Rounds: rounds, Gap: gap}
	var set unix.CPUSet
	if err := unix.SchedGetaffinity(0, &set); err != nil {
		return w, fmt.Errorf("cpu affinity: %w", err)
	}
	var cpus []int
	for c := 0; c < 1024 && len(cpus) < 2; c++ {
		if set.IsSet(c) {
			cpus = append(cpus, c)
		}
	}
	if len(cpus) == 0 {
		return w, fmt.Errorf("no CPU in this process's affinity")
	}
	var err error
	if w.SameCPU, err = pingPong(cpus[0], cpus[0], rounds, gap); err != nil {
		return w, err
	}
	if len(cpus) > 1 {
		if w.OtherCPU, err = pingPong(cpus[0], cpus[1], rounds, gap); err != nil {
			return w, err
		}
	}
	return w, nil
}

// pingPong bounces a byte between a thread on CPU a and one on CPU b
// through two blocking pipes and returns the median of half a round.
func pingPong(a, b, rounds int, gap time.Duration) (time.Duration, error) {
	var there, back [2]int
	if err := unix.Pipe2(there[:], unix.O_CLOEXEC); err != nil {
		return 0, err
	}
	defer unix.Close(there[0])
	writerOpen := true
	defer func() {
		if writerOpen {
			unix.Close(there[1])
		}
	}()
	if err := unix.Pipe2(back[:], unix.O_CLOEXEC); err != nil {
		return 0, err
	}
	defer unix.Close(back[0])
	defer unix.Close(back[1])

	echoErr := make(chan error, 1)
	go func() {
		runtime.LockOSThread() // this thread ends with the goroutine: its affinity goes with it
		if err := pin(b); err != nil {
			echoErr <- err
			return
		}
		buf := make([]byte, 1)
		for range rounds {
			if _, err := unix.Read(there[0], buf); err != nil {
				echoErr <- err
				return
			}
			if _, err := unix.Write(back[1], buf); err != nil {
				echoErr <- err
				return
			}
		}
		echoErr <- nil
	}()

	errc := make(chan error, 1)
	var halves []time.Duration
	go func() {
		runtime.LockOSThread()
		if err := pin(a); err != nil {
			errc <- err
			return
		}
		buf := []byte{1}
		for range rounds {
			time.Sleep(gap)
			t := time.Now()
			if _, err := unix.Write(there[1], buf); err != nil {
				errc <- err
				return
			}
			if _, err := unix.Read(back[0], buf); err != nil {
				errc <- err
				return
			}
			halves = append(halves, time.Since(t)/2)
		}
		errc <- nil
	}()
	if err := <-errc; err != nil {
		unix.Close(there[1]) // ends the echo thread's read
		writerOpen = false
		<-echoErr
		return 0, fmt.Errorf("wake-up ping-pong: %w", err)
	}
	if err := <-echoErr; err != nil {
		return 0, fmt.Errorf("wake-up ping-pong: %w", err)
	}
	return Median(halves), nil
}

// pin binds the calling thread to cpu.
func pin(cpu int) error {
	var s unix.CPUSet
	s.Set(cpu)
	if err := unix.SchedSetaffinity(0, &s); err != nil {
		return fmt.Errorf("pin to cpu %d: %w", cpu, err)
	}
	return nil
}
