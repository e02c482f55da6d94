package plainvm

import (
	"slices"
	"testing"
)

func TestSockets(t *testing.T) {
	args := []string{"-machine", "pc", "-m", "256M"}
	args = append(args, Demo{Kernel: "k", Initrd: "i"}.BootArgs("pti=on")...)
	args = append(args, ChannelArgs("/d/console.log", "/d/cmd.sock")...)
	args = append(args, QMPArgs("/d/qmp.sock")...)
	args = append(args, QMPArgs("/d/ctl.sock")...)
	qmp, channel, console := sockets(args)
	if qmp != "/d/qmp.sock" || channel != "/d/cmd.sock" || console != "/d/console.log" {
		t.Errorf("sockets: qmp %q channel %q console %q", qmp, channel, console)
	}
	if i := slices.Index(args, "-append"); i < 0 || args[i+1] != Append+" pti=on" {
		t.Errorf("boot arguments %q", args)
	}
	// No monitor, the console on a socket, no second serial port.
	qmp, channel, console = sockets([]string{"-serial", "unix:/d/s.sock,server=on", "-chardev", "socket,id=x,path=/d/x.sock"})
	if qmp != "" || channel != "" || console != "" {
		t.Errorf("sockets: qmp %q channel %q console %q; want none", qmp, channel, console)
	}
}
