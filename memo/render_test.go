package memo

import (
	"encoding/json"
	"fmt"
	"reflect"
	"strings"
	"testing"

	"hybridbridge/decision"
)

func TestDisassemble(t *testing.T) {
	for _, tc := range []struct {
		code []byte
		want string
	}{
		{movRIP, "mov rax, qword ptr [rip+0x1000]"},
		{[]byte{0x65, 0x48, 0x8b, 0x04, 0x25, 0x28, 0x00, 0x00, 0x00}, "mov rax, qword ptr gs:[0x28]"},
		{[]byte{0xff, 0xff}, "(bad: ff ff)"},
		{nil, "(no bytes)"},
		{[]byte{0x0f}, "(bad: 0f)"},
	} {
		if got := Disassemble(0xffffffff81000000, tc.code); got != tc.want {
			t.Errorf("% x: %q, want %q", tc.code, got, tc.want)
		}
	}
}

func TestFormatEntry(t *testing.T) {
	e := Entry{
		PC: 0xffffffff81234567, Decision: decision.Redirect, Region: "init_pid_ns",
		Seen: 177, Hits: 12, Misses: 1, View: "ps", Syscall: "getdents64", Bytes: movRIP,
	}
	sym := func(pc uint64) string { return fmt.Sprintf("idr_get_next_ul+%#x", pc-0xffffffff81234500) }
	got := FormatEntry(e, sym)
	fields := strings.Fields(got)
	want := []string{"idr_get_next_ul+0x67", "mov", "rax,", "qword", "ptr", "[rip+0x1000]", "redirect", "init_pid_ns", "177/12/1", "ps/getdents64"}
	if !reflect.DeepEqual(fields, want) {
		t.Errorf("got %q", got)
	}
	e = Entry{PC: 0x10, Decision: decision.Both, Region: "heap", Regions: []string{"heap", "stack"}, RegionsCapped: true}
	got = FormatEntry(e, nil)
	for _, w := range []string{"0x0000000000000010", "(no bytes)", "both", "heap,stack,...", "0/0/0", "-/-"} {
		if !strings.Contains(got, w) {
			t.Errorf("%q lacks %q", got, w)
		}
	}
}

func TestEntryJSON(t *testing.T) {
	m := sample(t, false)
	for _, e := range m.Entries() {
		b, err := json.Marshal(e)
		if err != nil {
			t.Fatal(err)
		}
		var got Entry
		if err := json.Unmarshal(b, &got); err != nil {
			t.Fatalf("%s: %v", b, err)
		}
		if !got.FirstSeen.Equal(e.FirstSeen) {
			t.Errorf("time %v != %v", got.FirstSeen, e.FirstSeen)
		}
		got.FirstSeen = e.FirstSeen
		if len(e.Bytes) == 0 {
			e.Bytes = nil
		}
		if !reflect.DeepEqual(got, e) {
			t.Errorf("JSON round trip:\n%+v\n%+v\n%s", got, e, b)
		}
	}
	e, _ := m.Peek(0xffffffff81234567)
	b, _ := json.Marshal(e)
	for _, w := range []string{`"pc":"0xffffffff81234567"`, `"bytes":"488b0500100000"`, `"decision":"redirect"`, `"region":"init_pid_ns"`} {
		if !strings.Contains(string(b), w) {
			t.Errorf("%s lacks %s", b, w)
		}
	}
	b, err := json.Marshal(m.Stats())
	if err != nil || !strings.Contains(string(b), `"hit_rate"`) || !strings.Contains(string(b), `"getdents64"`) {
		t.Errorf("stats JSON %s, %v", b, err)
	}
	if err := json.Unmarshal([]byte(`{"pc":"zz"}`), &e); err == nil {
		t.Error("bad pc accepted")
	}
}
