package cli

import (
	"io"
	"slices"
	"testing"

	"github.com/spf13/cobra"

	"hybridbridge/bridge"
	"hybridbridge/ui"
)

// The console's modes are named as the bridge's: --mode converts one to the other by name.
func TestModeNamesAgree(t *testing.T) {
	for _, m := range modeChoices {
		if um, ok := ui.ParseMode(string(m)); !ok || um.String() != string(m) {
			t.Errorf("bridge mode %q is not a console mode", m)
		}
	}
	for m := ui.ModeAuto; ; {
		if !slices.Contains(modeChoices, bridge.Mode(m.String())) {
			t.Errorf("console mode %q is not a --mode choice", m)
		}
		if m = m.Next(); m == ui.ModeAuto {
			break
		}
	}
}

// Every command that takes --mode or --fast-engine takes the checked value, so each refuses a bad
// one the same way.
func TestFixedValueFlagsChecked(t *testing.T) {
	var walk func(c *cobra.Command)
	walk = func(c *cobra.Command) {
		for name, choices := range map[string]string{"mode": "auto|fast|slow", "fast-engine": "auto|unicorn|kvm"} {
			f := c.Flags().Lookup(name)
			if f == nil {
				f = c.InheritedFlags().Lookup(name)
			}
			if f == nil {
				continue
			}
			if f.Value.Type() != choices || f.Value.Set("bogus") == nil {
				t.Errorf("%s --%s takes %s values and accepts %q", c.CommandPath(), name, f.Value.Type(), "bogus")
			}
			if f.DefValue != "auto" {
				t.Errorf("%s --%s defaults to %q, not auto", c.CommandPath(), name, f.DefValue)
			}
		}
		for _, sub := range c.Commands() {
			walk(sub)
		}
	}
	walk(newRoot(&env{stdout: io.Discard, stderr: io.Discard}))
}
