package decision

import "testing"

// Memo files store the numbers: a renumbering would make old files mean something else.
func TestStoredValues(t *testing.T) {
	for d, want := range map[Decision]uint8{Invalid: 0, Local: 1, Redirect: 2, Both: 3, Unknown: 4} {
		if uint8(d) != want {
			t.Errorf("%v = %d, memo files store it as %d", d, uint8(d), want)
		}
	}
	var zero Decision
	if zero != Invalid || zero.Valid() {
		t.Error("the zero value must be Invalid")
	}
}

func TestMergeTable(t *testing.T) {
	all := []Decision{Invalid, Local, Redirect, Both, Unknown}
	want := map[[2]Decision]Decision{
		{Invalid, Invalid}: Invalid, {Invalid, Local}: Local, {Invalid, Redirect}: Redirect, {Invalid, Both}: Both, {Invalid, Unknown}: Unknown,
		{Local, Invalid}: Local, {Local, Local}: Local, {Local, Redirect}: Both, {Local, Both}: Both, {Local, Unknown}: Unknown,
		{Redirect, Invalid}: Redirect, {Redirect, Local}: Both, {Redirect, Redirect}: Redirect, {Redirect, Both}: Both, {Redirect, Unknown}: Unknown,
		{Both, Invalid}: Both, {Both, Local}: Both, {Both, Redirect}: Both, {Both, Both}: Both, {Both, Unknown}: Unknown,
		{Unknown, Invalid}: Unknown, {Unknown, Local}: Unknown, {Unknown, Redirect}: Unknown, {Unknown, Both}: Unknown, {Unknown, Unknown}: Unknown,
	}
	for _, a := range all {
		for _, b := range all {
			if got := Merge(a, b); got != want[[2]Decision{a, b}] {
				t.Errorf("Merge(%v, %v) = %v, want %v", a, b, got, want[[2]Decision{a, b}])
			}
			if Merge(a, b) != Merge(b, a) {
				t.Errorf("Merge(%v, %v) not commutative", a, b)
			}
		}
	}
}

func TestText(t *testing.T) {
	for _, d := range []Decision{Local, Redirect, Both, Unknown} {
		got, err := Parse(d.String())
		if err != nil || got != d {
			t.Errorf("Parse(%q) = %v, %v", d.String(), got, err)
		}
	}
	if _, err := Parse("invalid"); err == nil {
		t.Error("Parse(invalid) succeeded")
	}
	if _, err := Invalid.MarshalText(); err == nil {
		t.Error("Invalid.MarshalText succeeded")
	}
	if !Both.Replayable() || Unknown.Replayable() || Invalid.Replayable() {
		t.Error("Replayable wrong")
	}
	if s := Decision(9).String(); s != "decision(9)" {
		t.Errorf("Decision(9) = %q", s)
	}
}

func TestCounts(t *testing.T) {
	var c Counts
	for _, d := range []Decision{Invalid, Local, Local, Redirect, Both, Unknown, Decision(9)} {
		c.Add(d, 1)
	}
	c.Add(Redirect, 4)
	if want := (Counts{Local: 2, Redirect: 5, Both: 1, Unknown: 1}); c != want {
		t.Errorf("counts %+v, want %+v", c, want)
	}
	if got, want := c.Minus(Counts{Local: 1, Redirect: 5}), (Counts{Local: 1, Both: 1, Unknown: 1}); got != want {
		t.Errorf("Minus = %+v, want %+v", got, want)
	}
}
