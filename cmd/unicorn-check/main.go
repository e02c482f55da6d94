// Command unicorn-check proves that the Unicorn library linked into this
// project is 2.1.x, is linked statically, and executes x86-64 code.
// scripts/setup.sh runs it after building.
package main

import (
	"bufio"
	"fmt"
	"os"
	"strings"

	"hybridbridge/emu"
)

func main() {
	maj, min, pat := emu.Version()
	shared := sharedUnicorn()
	link := "static"
	if shared != "" {
		link = "shared " + shared
	}
	fmt.Printf("unicorn %d.%d.%d (%s)\n", maj, min, pat, link)
	if maj != 2 || min != 1 {
		fail("need Unicorn 2.1.x: 2.0.x mistranslates 4 KiB pages; rebuild against .cache/unicorn (scripts/setup.sh)")
	}
	if shared != "" {
		fail("libunicorn is loaded as a shared library; this binary must link .cache/unicorn/lib/libunicorn.a")
	}
	if err := run(); err != nil {
		fail(err.Error())
	}
	fmt.Println("unicorn executes x86-64 code: ok")
}

// sharedUnicorn returns the path of a libunicorn shared object mapped into
// this process, if any.
func sharedUnicorn() string {
	f, err := os.Open("/proc/self/maps")
	if err != nil {
		return ""
	}
	defer f.Close()
	s := bufio.NewScanner(f)
	for s.Scan() {
		if i := strings.Index(s.Text(), "/"); i >= 0 && strings.Contains(s.Text()[i:], "libunicorn") {
			return s.Text()[i:]
		}
	}
	return ""
}

// run executes two instructions in 64-bit mode and checks the result.
func run() error {
	e, err := emu.Open(emu.CPUDefault)
	if err != nil {
		return err
	}
	defer e.Close()
	const base = 0x1000
	code := []byte{
		0x48, 0xc7, 0xc0, 0x2a, 0x00, 0x00, 0x00, // mov rax, 42
		0x48, 0x83, 0xc0, 0x11, // add rax, 17
	}
	if err := e.Map(base, 0x1000, emu.ProtAll); err != nil {
		return err
	}
	if err := e.WritePhys(base, code); err != nil {
		return err
	}
	if err := e.Start(base, base+uint64(len(code)), 0); err != nil {
		return err
	}
	rax, err := e.Reg(emu.RAX)
	if err != nil {
		return err
	}
	if rax != 59 {
		return fmt.Errorf("mov rax, 42; add rax, 17 left rax = %d, want 59", rax)
	}
	return nil
}

func fail(msg string) {
	fmt.Fprintln(os.Stderr, "unicorn-check:", msg)
	os.Exit(1)
}
