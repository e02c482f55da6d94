package gdbstub

import (
	"bytes"
	"errors"
	"testing"
)

func TestChecksumAndFrame(t *testing.T) {
	for _, tc := range []struct{ payload, want string }{
		{"", "$#00"},
		{"g", "$g#67"},
		{"OK", "$OK#9a"},
		{"?", "$?#3f"},
		{"qSupported", "$qSupported#37"},
		{"m ffffffff82161900,10", "$m ffffffff82161900,10#" + hex2(checksum([]byte("m ffffffff82161900,10")))},
	} {
		if got := string(frame([]byte(tc.payload))); got != tc.want {
			t.Errorf("frame(%q) = %q, want %q", tc.payload, got, tc.want)
		}
	}
	// The checksum wraps modulo 256.
	if got := checksum(bytes.Repeat([]byte{0xff}, 3)); got != 0xfd {
		t.Errorf("checksum wrap = %#x, want 0xfd", got)
	}
}

func hex2(b byte) string {
	const digits = "0123456789abcdef"
	return string([]byte{digits[b>>4], digits[b&15]})
}

func TestBinaryUnescape(t *testing.T) {
	got, err := unescapeBinary([]byte("a}\x03b}]}\x04}\n"))
	if err != nil || string(got) != "a#b}$*" {
		t.Errorf("unescape = %q, %v; want %q", got, err, "a#b}$*")
	}
	if _, err := unescapeBinary([]byte("abc}")); err == nil {
		t.Error("unescape of a trailing escape succeeded")
	}
}

func TestRunLengthDecoding(t *testing.T) {
	for _, tc := range []struct{ in, want string }{
		{"abc", "abc"},
		{"0* ", "0000"},          // ' ' = 32: three more copies
		{"0*!", "00000"},         // four more
		{"X*\"Y", "XXXXXXY"},     // five more, then Y
		{"00*~", "00" + rep(97)}, // '~' = 126: 97 more
		{"a* b* ", "aaaabbbb"},
	} {
		got, err := expandRLE([]byte(tc.in))
		if err != nil || string(got) != tc.want {
			t.Errorf("expandRLE(%q) = %q, %v; want %q", tc.in, got, err, tc.want)
		}
	}
	for _, bad := range []string{"*a", "a*", "a*\x01"} {
		if got, err := expandRLE([]byte(bad)); err == nil {
			t.Errorf("expandRLE(%q) = %q, want an error", bad, got)
		}
	}
}

func rep(n int) string { return string(bytes.Repeat([]byte{'0'}, n)) }

func TestReplyClassification(t *testing.T) {
	if !isConsoleOutput([]byte("O48690a")) {
		t.Error("O48690a is console output")
	}
	for _, s := range []string{"OK", "O", "O4", "OKAY"} {
		if isConsoleOutput([]byte(s)) {
			t.Errorf("%q taken for console output", s)
		}
	}
	for _, s := range []string{"S05", "T05thread:01;", "W00", "X09", "T02"} {
		if !isStopReply([]byte(s)) {
			t.Errorf("%q is a stop reply", s)
		}
	}
	for _, s := range []string{"OK", "E14", "", "1", "Sx5", "l<xml/>"} {
		if isStopReply([]byte(s)) {
			t.Errorf("%q taken for a stop reply", s)
		}
	}

	var re *RemoteError
	if err := replyError("m", []byte("E14")); !errors.As(err, &re) || re.Code != 0x14 {
		t.Errorf("replyError(E14) = %v", err)
	}
	if err := replyError("m", []byte("E.bad address")); !errors.As(err, &re) || re.Code != -1 {
		t.Errorf("replyError(E.bad address) = %v", err)
	}
	if err := replyError("Z0", nil); !errors.Is(err, ErrUnsupported) {
		t.Errorf("replyError(empty) = %v, want ErrUnsupported", err)
	}
	if err := replyError("m", []byte("e4f0")); err != nil {
		t.Errorf("replyError(hex data) = %v, want nil", err)
	}
}

func TestParseStopReply(t *testing.T) {
	st, err := parseStopReply([]byte("T05thread:p01.01;06:1122334455667788;swbreak:;core:0;"))
	if err != nil {
		t.Fatal(err)
	}
	if st.Kind != 'T' || st.Signal != 5 || st.Thread != "p01.01" || !st.Stopped() {
		t.Errorf("parsed %+v", st)
	}
	if got := st.Registers[6]; !bytes.Equal(got, []byte{0x11, 0x22, 0x33, 0x44, 0x55, 0x66, 0x77, 0x88}) {
		t.Errorf("register 6 = %x", got)
	}
	if v, ok := st.Fields["swbreak"]; !ok || v != "" {
		t.Errorf("swbreak field = %q, %v", v, ok)
	}
	if st.Fields["core"] != "0" {
		t.Errorf("core field = %q", st.Fields["core"])
	}
	st, err = parseStopReply([]byte("S02"))
	if err != nil || st.Signal != 2 || st.Kind != 'S' {
		t.Errorf("S02 parsed as %+v, %v", st, err)
	}
	st, err = parseStopReply([]byte("W00"))
	if err != nil || st.Stopped() {
		t.Errorf("W00 parsed as %+v, %v", st, err)
	}
	if _, err := parseStopReply([]byte("OK")); err == nil {
		t.Error("OK parsed as a stop reply")
	}
}

func TestParseFeatures(t *testing.T) {
	f := parseFeatures([]byte("PacketSize=1000;qXfer:features:read+;multiprocess-;QStartNoAckMode+;vContSupported+"))
	want := map[string]string{"PacketSize": "1000", "qXfer:features:read": "+", "multiprocess": "-", "QStartNoAckMode": "+", "vContSupported": "+"}
	for k, v := range want {
		if f[k] != v {
			t.Errorf("feature %s = %q, want %q", k, f[k], v)
		}
	}
}
