package svm

import (
	"bytes"
	"debug/elf"
	"errors"
	"fmt"
)

// CheckStaticX86 refuses, with the reason, a file the SVM cannot run as a program: anything but
// a statically linked x86-64 Linux executable. The SVM has the image's busybox and nothing else,
// so a dynamically linked program would not find its libraries.
func CheckStaticX86(name string, data []byte) error {
	f, err := elf.NewFile(bytes.NewReader(data))
	if err != nil {
		var fe *elf.FormatError
		if errors.As(err, &fe) || len(data) < 4 || !bytes.HasPrefix(data, []byte(elf.ELFMAG)) {
			return fmt.Errorf("%s is not an ELF executable", name)
		}
		return fmt.Errorf("%s: %w", name, err)
	}
	defer f.Close()
	if f.Class != elf.ELFCLASS64 || f.Machine != elf.EM_X86_64 {
		return fmt.Errorf("%s is a %s %s program; the SVM runs x86-64 programs only", name, f.Class, f.Machine)
	}
	if f.Type != elf.ET_EXEC && f.Type != elf.ET_DYN {
		return fmt.Errorf("%s is an ELF %s, not an executable", name, f.Type)
	}
	for _, p := range f.Progs {
		if p.Type == elf.PT_INTERP {
			interp, err := segmentString(p)
			if err != nil {
				interp = "unreadable: " + err.Error()
			}
			return fmt.Errorf("%s is dynamically linked (interpreter %s); the SVM runs static programs only (link it with -static)", name, interp)
		}
	}
	if f.Type == elf.ET_DYN && f.Entry == 0 {
		return fmt.Errorf("%s is a shared library, not an executable", name)
	}
	if libs, err := f.ImportedLibraries(); err == nil && len(libs) > 0 {
		return fmt.Errorf("%s needs shared libraries (%s); the SVM runs static programs only (link it with -static)", name, libs[0])
	}
	return nil
}

// segmentString reads a small segment as a NUL-terminated string.
func segmentString(p *elf.Prog) (string, error) {
	b := make([]byte, min(p.Filesz, 4096))
	if _, err := p.ReadAt(b, 0); err != nil {
		return "", err
	}
	return string(bytes.TrimRight(b, "\x00")), nil
}
