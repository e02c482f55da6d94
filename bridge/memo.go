package bridge

import (
	"path/filepath"

	"hybridbridge/decision"
	"hybridbridge/memo"
	"hybridbridge/svm"
)

// MemoKey is what a memo of decisions is valid for: the snapshot's kernel build, and the lists
// and taint rules that made the decisions. Not the KASLR layout: the memo keeps link addresses
// (learn), so one memo serves every boot of a build.
func MemoKey(snap *svm.Snapshot) memo.Key {
	return memo.Key{Kernel: snap.KernelID + " " + snap.Release, Policy: PolicyVersion()}
}

// MemoPath is where the memo of a kernel build (its ID, as svm.Snapshot.KernelID) lives in the
// cache, unless the user names another file.
func MemoPath(cacheDir, kernelID string) string {
	return filepath.Join(cacheDir, "memo", kernelID+".memo")
}

// learn records one decision for the instruction at pc, reading its bytes the first time so the
// memo can show it without the kernel. The memo keeps the build's link addresses and bytes
// (svm.Snapshot.LinkAddr, LinkBytes): what one KASLR layout learns, every other replays.
func (s *Session) learn(pc uint64, d decision.Decision, region string) {
	if s.Memo == nil {
		return
	}
	o := memo.Observation{Decision: d, Region: region, View: s.View, Syscall: svm.SyscallName(s.Machine.CurrentSyscall())}
	at := s.snap.LinkAddr(pc)
	if _, ok := s.Memo.Peek(at); !ok {
		o.Bytes = s.linkedInsn(pc)
	}
	if _, err := s.Memo.Learn(at, o); err != nil && s.learnErr == nil {
		// The hook cannot return it; the operation does (runSlow), so nothing learned is lost
		// without a word.
		s.learnErr = err
	}
}

// linkedInsn reads the (at most) 15 bytes of the instruction at pc as the build links them, or
// nil if they cannot be read. A relocated place is up to 8 bytes and may begin before pc's
// window ends, so the read takes a margin on each side when the page allows.
func (s *Session) linkedInsn(pc uint64) []byte {
	const margin = 8
	b := make([]byte, margin+memo.MaxInsnBytes+margin)
	start := pc - margin
	if s.Machine.ReadVirt(start, b) != nil {
		start, b = pc, b[:memo.MaxInsnBytes+margin]
		if s.Machine.ReadVirt(start, b) != nil {
			b = b[:memo.MaxInsnBytes]
			if s.Machine.ReadVirt(start, b) != nil {
				return nil
			}
		}
	}
	s.snap.LinkBytes(start, b)
	off := pc - start
	return b[off : off+memo.MaxInsnBytes]
}
