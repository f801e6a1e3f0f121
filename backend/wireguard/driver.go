package wireguard

import (
	"errors"
	"fmt"
	"net/netip"
	"os"
	"strings"

	"golang.org/x/sys/unix"
	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"
)

// driver runs the WireGuard device weft-wg: the kernel's (kernelDriver)
// or wireguard-go's in this process (userspaceDriver). The backend
// programs the link, its address and route over netlink either way; the
// driver owns the WireGuard side: key, port and peers.
type driver interface {
	// Name is "kernel" or "userspace".
	Name() string
	// Ensure creates or adopts the device and makes it run with key on
	// port. It reports whether the device had to be (re)created or
	// (re)attached, after which it holds no peers. Idempotent.
	Ensure(key wgtypes.Key, port int) (fresh bool, err error)
	// Peers lists the peers the device holds.
	Peers() ([]DevicePeer, error)
	// Configure applies peer changes (diffPeers). Where it can, it starts
	// a handshake with every peer added or changed, so that a restarted or
	// re-keyed host is reachable again without waiting for timers.
	Configure(changes []wgtypes.PeerConfig) error
	// Close releases what the process holds. The kernel device stays,
	// peers included; the userspace one keeps its TUN device, address and
	// routes, while its WireGuard state ends with the process.
	Close() error
}

// Driver choices for --wireguard-driver.
const (
	DriverAuto      = "auto"
	DriverKernel    = "kernel"
	DriverUserspace = "userspace"
)

// ErrNoKernelModule is wrapped by the error of a driver forced to kernel
// on a host without the wireguard kernel module.
var ErrNoKernelModule = errors.New("the wireguard kernel module is not available")

// kernelModule reports whether the kernel has WireGuard: loaded (or built
// in), or installed as a module the kernel loads when the first wireguard
// link is created. why describes what was looked at.
func kernelModule() (ok bool, why string) {
	if _, err := os.Stat("/sys/module/wireguard"); err == nil {
		return true, "/sys/module/wireguard exists"
	}
	var u unix.Utsname
	if err := unix.Uname(&u); err != nil {
		return false, "no /sys/module/wireguard"
	}
	rel := unix.ByteSliceToString(u.Release[:])
	dir := "/lib/modules/" + rel
	for _, f := range []string{"modules.builtin", "modules.dep"} {
		b, err := os.ReadFile(dir + "/" + f)
		if err != nil {
			continue
		}
		for _, line := range strings.Split(string(b), "\n") {
			name, _, _ := strings.Cut(line, ":")
			if strings.HasSuffix(name, "/wireguard.ko") || strings.Contains(name, "/wireguard.ko.") {
				return true, dir + "/" + f + " lists wireguard.ko"
			}
		}
	}
	return false, fmt.Sprintf("no /sys/module/wireguard and no wireguard.ko in %s for kernel %s", dir, rel)
}

// chooseDriver resolves --wireguard-driver: auto takes the kernel's when
// the module is there.
func chooseDriver(want string) (string, string, error) {
	ok, why := kernelModule()
	switch want {
	case "", DriverAuto:
		if ok {
			return DriverKernel, "auto: " + why, nil
		}
		return DriverUserspace, "auto: " + why, nil
	case DriverKernel:
		if !ok {
			return "", "", fmt.Errorf("wireguard driver kernel: %w (%s); load it with modprobe wireguard, or use --wireguard-driver=userspace or auto", ErrNoKernelModule, why)
		}
		return DriverKernel, "--wireguard-driver=kernel", nil
	case DriverUserspace:
		return DriverUserspace, "--wireguard-driver=userspace", nil
	}
	return "", "", fmt.Errorf("wireguard driver %q: want auto, kernel or userspace", want)
}

func unmapAddrPort(a netip.AddrPort) netip.AddrPort {
	return netip.AddrPortFrom(a.Addr().Unmap(), a.Port())
}
