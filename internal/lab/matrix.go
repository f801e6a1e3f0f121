package lab

import (
	"context"
	"fmt"
	"net/netip"
	"strings"
	"sync"
	"time"
	"unicode/utf8"
)

// Matrix is the result of pinging from every pod to every other pod.
// Results[i][j] is Pods[i] → Pods[j]; the diagonal is unused.
type Matrix struct {
	Pods    []*Pod
	Results [][]PingResult
	Errors  [][]error
	// IPv6 is true for a matrix over the pods' IPv6 addresses.
	IPv6 bool
}

// addr is the address of p the matrix pings.
func (m Matrix) addr(p *Pod) netip.Addr {
	if m.IPv6 {
		return p.IP6
	}
	return p.IP
}

// OK reports whether every pair answered every ping.
func (m Matrix) OK() bool { return len(m.Failures()) == 0 }

// Failures lists the pairs that lost packets or could not ping, as
// "src → dst: reason".
func (m Matrix) Failures() []string {
	var out []string
	for i := range m.Pods {
		for j := range m.Pods {
			if i == j {
				continue
			}
			switch r, err := m.Results[i][j], m.Errors[i][j]; {
			case err != nil:
				out = append(out, fmt.Sprintf("%s → %s: %v", m.Pods[i].Name, m.Pods[j].Name, err))
			case !r.OK():
				out = append(out, fmt.Sprintf("%s → %s (%s): %d/%d received", m.Pods[i].Name, m.Pods[j].Name, m.addr(m.Pods[j]), r.Received, r.Sent))
			}
		}
	}
	return out
}

// String renders the matrix as an aligned table: ✓ with the average RTT
// when every ping was answered, ✗ with received/sent otherwise.
func (m Matrix) String() string {
	head := []string{"from \\ to"}
	for _, p := range m.Pods {
		head = append(head, fmt.Sprintf("%s %s", short(p), m.addr(p)))
	}
	rows := [][]string{head}
	for i, src := range m.Pods {
		row := []string{fmt.Sprintf("%s %s", short(src), m.addr(src))}
		for j := range m.Pods {
			var cell string
			switch r, err := m.Results[i][j], m.Errors[i][j]; {
			case i == j:
				cell = "-"
			case err != nil:
				cell = "✗ error"
			case r.OK():
				cell = fmt.Sprintf("✓ %.3fms", float64(r.RTTs.Avg.Microseconds())/1000)
			default:
				cell = fmt.Sprintf("✗ %d/%d", r.Received, r.Sent)
			}
			row = append(row, cell)
		}
		rows = append(rows, row)
	}
	widths := make([]int, len(head))
	for _, r := range rows {
		for c, s := range r {
			widths[c] = max(widths[c], utf8.RuneCountInString(s))
		}
	}
	var b strings.Builder
	for _, r := range rows {
		for c, s := range r {
			if c > 0 {
				b.WriteString("  ")
			}
			b.WriteString(s)
			if c < len(r)-1 {
				b.WriteString(strings.Repeat(" ", widths[c]-utf8.RuneCountInString(s)))
			}
		}
		b.WriteString("\n")
	}
	return b.String()
}

// short names a pod by its namespace without the lab prefix: "h1p1".
func short(p *Pod) string {
	if p.Host != nil {
		return strings.TrimPrefix(p.NSName, p.Host.lab.Name+"-")
	}
	return p.NSName
}

// PingMatrix pings from every pod to every other pod (3 packets, 50 ms
// apart), a few pairs at a time.
func (l *Lab) PingMatrix(ctx context.Context) Matrix {
	return l.pingMatrix(ctx, false, 3, 50*time.Millisecond)
}

// PingMatrix6 is PingMatrix over the pods' IPv6 addresses.
func (l *Lab) PingMatrix6(ctx context.Context) Matrix {
	return l.pingMatrix(ctx, true, 3, 50*time.Millisecond)
}

func (l *Lab) pingMatrix(ctx context.Context, six bool, count int, interval time.Duration) Matrix {
	pods := l.Pods()
	m := Matrix{Pods: pods, Results: make([][]PingResult, len(pods)), Errors: make([][]error, len(pods)), IPv6: six}
	for i := range pods {
		m.Results[i] = make([]PingResult, len(pods))
		m.Errors[i] = make([]error, len(pods))
	}
	sem := make(chan struct{}, 8)
	var wg sync.WaitGroup
	for i, src := range pods {
		for j, dst := range pods {
			if i == j {
				continue
			}
			wg.Add(1)
			sem <- struct{}{}
			go func() {
				defer wg.Done()
				defer func() { <-sem }()
				if !m.addr(dst).IsValid() {
					m.Errors[i][j] = fmt.Errorf("%s has no %s address", dst.Name, map[bool]string{false: "IPv4", true: "IPv6"}[six])
					return
				}
				m.Results[i][j], m.Errors[i][j] = src.Ping(ctx, m.addr(dst), count, interval)
			}()
		}
	}
	wg.Wait()
	return m
}

// WaitConnectivity pings the full matrix (one packet per pair) until every
// pair answers or timeout passes; it returns the last matrix and an error
// listing the failing pairs.
func (l *Lab) WaitConnectivity(ctx context.Context, timeout time.Duration) (Matrix, error) {
	return l.waitConnectivity(ctx, false, timeout)
}

// WaitConnectivity6 is WaitConnectivity over the pods' IPv6 addresses.
func (l *Lab) WaitConnectivity6(ctx context.Context, timeout time.Duration) (Matrix, error) {
	return l.waitConnectivity(ctx, true, timeout)
}

func (l *Lab) waitConnectivity(ctx context.Context, six bool, timeout time.Duration) (Matrix, error) {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	for {
		m := l.pingMatrix(ctx, six, 1, 200*time.Millisecond)
		if m.OK() {
			return m, nil
		}
		select {
		case <-ctx.Done():
			return m, fmt.Errorf("no full connectivity after %s: %s", timeout, strings.Join(m.Failures(), "; "))
		case <-time.After(200 * time.Millisecond):
		}
	}
}
