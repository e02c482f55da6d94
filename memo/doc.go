// Package memo is the training memo of HYBRID-BRIDGE (README: "Fast-Bridge and fall-back"):
// for every kernel instruction that Slow-Bridge saw touching an ambiguous
// region, whether that access read the inspected guest's memory (Redirect),
// the secure VM's own (Local), or both (semi-redirectable), so Fast-Bridge
// can replay the decision without taint tracking.
//
// A memo is only valid for the kernel build and the rule table it was trained
// with; both are part of its Key, and a file written for another key is
// rejected with a typed error instead of replaying stale decisions.
//
// File format (all integers little-endian; the framing below is fixed for
// every major version, so a reader can always find the version and the
// checksum):
//
//	offset  size  field
//	0       8     magic "HBMEMO\x00\n"
//	8       2     major version
//	10      2     minor version
//	12      4     header length H
//	16      8     payload length P
//	24      H     header  (the Key)
//	24+H    P     payload (entries and statistics)
//	24+H+P  4     CRC-32C (Castagnoli) of bytes [0, 24+H+P)
//
// Load checks, in order: magic, version, total size, CRC, key, payload; each
// rejection has its own error type (see errors.go). Nothing after the framing
// is decoded before the CRC has been verified.
//
// Several processes may hold one memo file at once (the console and CLI
// views): Save merges what each learned into the file under a lock instead of
// overwriting it, so none loses the others' learning (see save.go).
package memo
