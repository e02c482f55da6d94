package taint

import (
	"encoding/hex"
	"strings"
	"testing"
)

// hexCode joins hex strings (one instruction each, spaces allowed) into
// code bytes; tests keep the assembly beside each piece.
func hexCode(t testing.TB, parts ...string) []byte {
	t.Helper()
	var code []byte
	for _, p := range parts {
		b, err := hex.DecodeString(strings.ReplaceAll(p, " ", ""))
		if err != nil {
			t.Fatalf("code %q: %v", p, err)
		}
		code = append(code, b...)
	}
	return code
}
