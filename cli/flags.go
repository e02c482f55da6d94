package cli

import (
	"fmt"
	"slices"
	"strings"

	"hybridbridge/bridge"
	"hybridbridge/ui"
)

// executor is a --fast-engine choice: what runs Fast-Bridge.
type executor string

const (
	executorAuto    executor = "auto"    // KVM if the probe finds hardware KVM, else Unicorn
	executorUnicorn executor = "unicorn" // Unicorn even where KVM would do
	executorKVM     executor = "kvm"     // KVM even when the probe finds it slow (paravirtual)
)

// The values the flags with fixed values accept, in the order help and errors list them.
var (
	modeChoices     = []bridge.Mode{bridge.ModeAuto, bridge.ModeFast, bridge.ModeSlow}
	executorChoices = []executor{executorAuto, executorUnicorn, executorKVM}
)

// choiceValue is a flag value that must be one of a fixed list. It is checked while the flags are
// parsed, so a bad value stops a command before it boots, attaches or probes anything, and every
// command that takes the flag refuses the same values with the same message.
type choiceValue[T ~string] struct {
	p       *T
	choices []T
}

// newChoice sets *p to def and returns the flag value that sets it.
func newChoice[T ~string](p *T, def T, choices []T) *choiceValue[T] {
	*p = def
	return &choiceValue[T]{p: p, choices: choices}
}

func (v *choiceValue[T]) String() string { return string(*v.p) }

func (v *choiceValue[T]) Set(s string) error {
	if !slices.Contains(v.choices, T(s)) {
		// The flag package puts the flag's name and the value in front of this.
		return fmt.Errorf("must be %s", v.join(", ", " or "))
	}
	*v.p = T(s)
	return nil
}

// Type is what help shows as the flag's argument: the choices themselves (--mode auto|fast|slow).
func (v *choiceValue[T]) Type() string { return v.join("|", "|") }

// join lists the choices with sep between them and last before the final one.
func (v *choiceValue[T]) join(sep, last string) string {
	names := make([]string, len(v.choices))
	for i, c := range v.choices {
		names[i] = string(c)
	}
	if len(names) < 2 {
		return strings.Join(names, sep)
	}
	return strings.Join(names[:len(names)-1], sep) + last + names[len(names)-1]
}

// modeFlag is --mode for *p, starting at auto.
func modeFlag(p *bridge.Mode) *choiceValue[bridge.Mode] {
	return newChoice(p, bridge.ModeAuto, modeChoices)
}

// executorFlag is --fast-engine for *p, starting at auto.
func executorFlag(p *executor) *choiceValue[executor] {
	return newChoice(p, executorAuto, executorChoices)
}

// uiMode is m as the console's mode, which has the same names (TestModeNamesAgree keeps them so).
func uiMode(m bridge.Mode) (ui.Mode, error) {
	um, ok := ui.ParseMode(string(m))
	if !ok {
		return um, fmt.Errorf("the console has no mode %q", m)
	}
	return um, nil
}
