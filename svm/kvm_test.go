//go:build linux

package svm

import (
	"bytes"
	"errors"
	"testing"
	"time"

	"hybridbridge/guest"
	"hybridbridge/internal/testenv"
	"hybridbridge/vmm"
)

// openKVM opens the snapshot under KVM, or skips where /dev/kvm cannot be opened (fails under
// CI). A paravirtual /dev/kvm is enough: it is slow, not wrong.
func openKVM(t *testing.T) *Machine {
	t.Helper()
	if buildErr != nil {
		t.Fatalf("SVM snapshot build failed: %v", buildErr)
	}
	k, err := vmm.OpenKVM()
	if err != nil {
		testenv.SkipNoKVM(t, err.Error())
	}
	k.Close()
	opts := Options{Blocking: blocking, KVM: &KVMOptions{Timeout: 20 * time.Second}}
	if cache, err := guest.FindCacheDir(); err == nil {
		// Symbols only name where a failing call stopped.
		opts.Symbols, _ = vmm.LoadSymbols(cache + "/symbols/" + snap.KernelID + ".kallsyms")
	}
	m, err := Open(snap, opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := m.Close(); err != nil {
			t.Errorf("close: %v", err)
		}
	})
	return m
}

// TestKVMSyscallMatchesUnicorn: a call injected under KVM returns what the same call returns
// under Unicorn, and neither writes the snapshot.
func TestKVMSyscallMatchesUnicorn(t *testing.T) {
	km := openKVM(t)
	um := open(t, Options{})
	before, _, _, err := checksumRAM(snap.RAMPath())
	if err != nil {
		t.Fatal(err)
	}

	start := time.Now()
	want, err := um.Syscall(SysGetpid)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("getpid under Unicorn: %d in %v", want, time.Since(start))
	start, exits := time.Now(), km.Stats().Exits
	got, err := km.Syscall(SysGetpid)
	if err != nil {
		t.Fatalf("getpid under KVM: %v (exits %v)", err, km.ExitsByReason())
	}
	t.Logf("getpid under KVM: %d in %v, %d exits", got, time.Since(start), km.Stats().Exits-exits)
	if km.exec.(*kvmCPU).synced {
		// The registers KVM stored at the last exit (the halt at the return address) are the
		// vCPU's.
		synced, err := km.exec.(*kvmCPU).cpu.ExitRegs()
		if err != nil {
			t.Fatal(err)
		}
		regs, err := km.exec.(*kvmCPU).cpu.Regs()
		if err != nil {
			t.Fatal(err)
		}
		if *synced != *regs || synced.RIP != snap.ReturnAddr+1 {
			t.Fatalf("registers synced at the exit %+v, KVM_GET_REGS %+v", synced, regs)
		}
	} else {
		t.Log("KVM cannot sync registers at exits (KVM_CAP_SYNC_REGS): each exit that needs them asks")
	}
	if got != want || int(got) != snap.Agent.PID {
		t.Fatalf("getpid: KVM %d, Unicorn %d, agent %d", got, want, snap.Agent.PID)
	}

	start = time.Now()
	wantData, err := um.ReadFile("/proc/version")
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("/proc/version under Unicorn: %v", time.Since(start))
	calls, exits := km.Stats().Syscalls, km.Stats().Exits
	start = time.Now()
	gotData, err := km.ReadFile("/proc/version")
	if err != nil {
		t.Fatalf("/proc/version under KVM: %v (exits %v)", err, km.ExitsByReason())
	}
	n := km.Stats().Syscalls - calls
	t.Logf("/proc/version under KVM: %d calls in %v (%v each), %d exits", n, time.Since(start),
		time.Since(start)/time.Duration(n), km.Stats().Exits-exits)
	if !bytes.Equal(gotData, wantData) {
		t.Fatalf("/proc/version\nKVM:     %q\nUnicorn: %q", gotData, wantData)
	}
	// Warm: Unicorn's first read includes translating the code it runs.
	const reps = 5
	for name, read := range map[string]func(string) ([]byte, error){"Unicorn": um.ReadFile, "KVM": km.ReadFile} {
		start := time.Now()
		for i := 0; i < reps; i++ {
			if data, err := read("/proc/version"); err != nil || !bytes.Equal(data, wantData) {
				t.Fatalf("%s: /proc/version read %d: %q, %v", name, i+2, data, err)
			}
		}
		t.Logf("/proc/version under %s, warm: %v per read", name, time.Since(start)/reps)
	}
	for name, call := range map[string]func(int, ...uint64) (int64, error){"Unicorn": um.Syscall, "KVM": km.Syscall} {
		start := time.Now()
		for i := 0; i < 4*reps; i++ {
			if pid, err := call(SysGetpid); err != nil || pid != want {
				t.Fatalf("%s: getpid %d: %d, %v", name, i+2, pid, err)
			}
		}
		t.Logf("getpid under %s, warm: %v per call", name, time.Since(start)/(4*reps))
	}
	t.Logf("exits by reason: %v; instructions emulated in user space: %d", km.ExitsByReason(), km.Stats().Emulated)

	after, _, _, err := checksumRAM(snap.RAMPath())
	if err != nil {
		t.Fatal(err)
	}
	if before != after || after != snap.RAMCRC32C {
		t.Fatalf("snapshot RAM changed: %08x -> %08x (recorded %08x)", before, after, snap.RAMCRC32C)
	}
}

// TestKVMBlockedCallResets: a call that sleeps halts in the idle loop, which the machine reports
// and recovers from with a reset.
func TestKVMBlockedCallResets(t *testing.T) {
	m := openKVM(t)
	err := sleepOneSecond(t, m)
	t.Logf("nanosleep: %v", err)
	var se *StopError
	if !errors.Is(err, ErrBlocked) || !errors.As(err, &se) {
		t.Fatalf("nanosleep: %v, want ErrBlocked", err)
	}
	if pid, err := m.Syscall(SysGetpid); err != nil || int(pid) != snap.Agent.PID {
		t.Fatalf("getpid after a blocked call: %d, %v", pid, err)
	}
	if st := m.Stats(); st.Resets != 1 {
		t.Fatalf("stats %+v, want 1 reset", st)
	}
}

// TestKVMRunawayCallTimesOut: a call that spins without ever leaving the guest is pulled out by
// the watchdog, and the reset puts the kernel text back. The spin never ends by itself, so the
// call returning ErrBudget from the spin's address is the watchdog's work; how late the watchdog
// fired depends on the host's load and is only logged; the bound catches a watchdog that ignores
// the timeout set here and waits for openKVM's 20 s.
func TestKVMRunawayCallTimesOut(t *testing.T) {
	m := openKVM(t)
	m.exec.(*kvmCPU).opts.Timeout = 300 * time.Millisecond
	spin := snap.Symbols["do_syscall_64"]
	pa, err := m.Phys(spin)
	if err != nil {
		t.Fatal(err)
	}
	copy(m.ram[pa:], []byte{0xeb, 0xfe}) // jmp . : no exit to user space, ever
	start := time.Now()
	_, err = m.Syscall(SysGetpid)
	took := time.Since(start)
	t.Logf("spinning getpid: %v after %v (timeout %v)", err, took, m.exec.(*kvmCPU).opts.Timeout)
	var se *StopError
	if !errors.Is(err, ErrBudget) || !errors.As(err, &se) || se.RIP != spin {
		t.Fatalf("spinning getpid: %v, want ErrBudget at the spin (%#x)", err, spin)
	}
	if st := m.Stats(); st.OverBudget != 1 || st.Resets != 1 {
		t.Fatalf("stats %+v, want 1 over budget and 1 reset", st)
	}
	if took > 15*time.Second {
		t.Fatalf("the watchdog took %v to stop a call with a %v timeout", took, m.exec.(*kvmCPU).opts.Timeout)
	}
	if pid, err := m.Syscall(SysGetpid); err != nil || int(pid) != snap.Agent.PID {
		t.Fatalf("getpid after the reset: %d, %v", pid, err)
	}
}
