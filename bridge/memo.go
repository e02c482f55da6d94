package bridge

import (
	"path/filepath"

	"hybridbridge/decision"
	"hybridbridge/memo"
	"hybridbridge/svm"
)

// MemoKey is what a memo of decisions is valid for: the snapshot's kernel build, and the lists
// and taint rules that made the decisions.
func MemoKey(snap *svm.Snapshot) memo.Key {
	return memo.Key{Kernel: MemoID(snap) + " " + snap.Release, Policy: PolicyVersion()}
}

// MemoID names the memo a snapshot's sessions learn into: one per kernel build, and one per
// KASLR layout of it. Decisions are keyed by instruction address, which a layout moves: an
// address of one layout can be another instruction in another, so memos of different layouts
// must never be mixed.
func MemoID(snap *svm.Snapshot) string {
	if snap.KASLR == nil {
		return snap.KernelID
	}
	return snap.KernelID + "-kaslr-" + snap.KASLR.Key()
}

// MemoPath is where the memo of a kernel build (its ID, as svm.Snapshot.KernelID) lives in the
// cache, unless the user names another file.
func MemoPath(cacheDir, kernelID string) string {
	return filepath.Join(cacheDir, "memo", kernelID+".memo")
}

// learn records one decision for the instruction at pc, reading its bytes the first time so the
// memo can show it without the kernel.
func (s *Session) learn(pc uint64, d decision.Decision, region string) {
	if s.Memo == nil {
		return
	}
	o := memo.Observation{Decision: d, Region: region, View: s.View, Syscall: svm.SyscallName(s.Machine.CurrentSyscall())}
	if _, ok := s.Memo.Peek(pc); !ok {
		b := make([]byte, memo.MaxInsnBytes)
		if s.Machine.ReadVirt(pc, b) == nil {
			o.Bytes = b
		}
	}
	if _, err := s.Memo.Learn(pc, o); err != nil && s.learnErr == nil {
		// The hook cannot return it; the operation does (runSlow), so nothing learned is lost
		// without a word.
		s.learnErr = err
	}
}
