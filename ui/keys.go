package ui

import "charm.land/bubbles/v2/key"

// KeyMap holds every binding the console reacts to. Panes read the ones they own; the help bar
// and the full help are generated from it, so what is shown is what works.
type KeyMap struct {
	NextPane, PrevPane key.Binding
	Refresh            key.Binding
	Auto               key.Binding
	Faster, Slower     key.Binding
	Mode               key.Binding
	Filter             key.Binding
	Details            key.Binding
	Back               key.Binding
	Sort, Reverse      key.Binding
	Up, Down           key.Binding
	PageUp, PageDown   key.Binding
	Home, End          key.Binding
	ClearMemo          key.Binding
	Prompt             key.Binding // opens the prompt that runs a program
	Confirm, Cancel    key.Binding
	Help               key.Binding
	Quit               key.Binding
	// Interrupt quits even while typing a filter, where q is text.
	Interrupt key.Binding
	// While typing a filter.
	ApplyFilter, ClearFilter key.Binding
	// While typing a command line at the prompt. PromptComplete only documents the text input's
	// own completion key, which must stay the same.
	PromptRun, PromptCancel, PromptComplete key.Binding
}

// DefaultKeyMap is the console's key layout.
func DefaultKeyMap() KeyMap {
	return KeyMap{
		NextPane:  key.NewBinding(key.WithKeys("tab"), key.WithHelp("tab", "next pane")),
		PrevPane:  key.NewBinding(key.WithKeys("shift+tab"), key.WithHelp("shift+tab", "previous pane")),
		Refresh:   key.NewBinding(key.WithKeys("r"), key.WithHelp("r", "refresh now")),
		Auto:      key.NewBinding(key.WithKeys("a"), key.WithHelp("a", "auto-refresh on/off")),
		Faster:    key.NewBinding(key.WithKeys("+", "="), key.WithHelp("+", "refresh more often")),
		Slower:    key.NewBinding(key.WithKeys("-"), key.WithHelp("-", "refresh less often")),
		Mode:      key.NewBinding(key.WithKeys("m"), key.WithHelp("m", "mode auto/fast/slow")),
		Filter:    key.NewBinding(key.WithKeys("/"), key.WithHelp("/", "filter")),
		Details:   key.NewBinding(key.WithKeys("enter"), key.WithHelp("enter", "details")),
		Back:      key.NewBinding(key.WithKeys("esc"), key.WithHelp("esc", "back / clear filter")),
		Sort:      key.NewBinding(key.WithKeys("s"), key.WithHelp("s", "sort by next column")),
		Reverse:   key.NewBinding(key.WithKeys("S"), key.WithHelp("S", "reverse sort")),
		Up:        key.NewBinding(key.WithKeys("up", "k"), key.WithHelp("↑/k", "up")),
		Down:      key.NewBinding(key.WithKeys("down", "j"), key.WithHelp("↓/j", "down")),
		PageUp:    key.NewBinding(key.WithKeys("pgup"), key.WithHelp("pgup", "page up")),
		PageDown:  key.NewBinding(key.WithKeys("pgdown", "space"), key.WithHelp("pgdn", "page down")),
		Home:      key.NewBinding(key.WithKeys("home", "g"), key.WithHelp("g/home", "first row")),
		End:       key.NewBinding(key.WithKeys("end", "G"), key.WithHelp("G/end", "last row")),
		ClearMemo: key.NewBinding(key.WithKeys("c"), key.WithHelp("c", "clear memo")),
		Prompt:    key.NewBinding(key.WithKeys(":"), key.WithHelp(":", "run a program")),
		Confirm:   key.NewBinding(key.WithKeys("y"), key.WithHelp("y", "yes")),
		Cancel:    key.NewBinding(key.WithKeys("n", "esc"), key.WithHelp("n", "no")),
		Help:      key.NewBinding(key.WithKeys("?"), key.WithHelp("?", "help")),
		Quit:      key.NewBinding(key.WithKeys("q", "ctrl+c"), key.WithHelp("q", "quit")),
		Interrupt: key.NewBinding(key.WithKeys("ctrl+c"), key.WithHelp("ctrl+c", "quit")),

		ApplyFilter: key.NewBinding(key.WithKeys("enter"), key.WithHelp("enter", "apply filter")),
		ClearFilter: key.NewBinding(key.WithKeys("esc"), key.WithHelp("esc", "clear filter")),

		PromptRun:      key.NewBinding(key.WithKeys("enter"), key.WithHelp("enter", "run")),
		PromptCancel:   key.NewBinding(key.WithKeys("esc"), key.WithHelp("esc", "cancel")),
		PromptComplete: key.NewBinding(key.WithKeys("tab"), key.WithHelp("tab", "complete from history")),
	}
}

// ShortHelp is the help bar.
func (k KeyMap) ShortHelp() []key.Binding {
	return []key.Binding{k.Help, k.Quit, k.NextPane, k.Refresh, k.Prompt, k.Auto, k.Mode, k.Filter, k.Details, k.Sort, k.ClearMemo}
}

// FullHelp is the `?` screen, one column per group.
func (k KeyMap) FullHelp() [][]key.Binding {
	return [][]key.Binding{
		{k.NextPane, k.PrevPane, k.Refresh, k.Auto, k.Faster, k.Slower, k.Mode},
		{k.Filter, k.Details, k.Back, k.Sort, k.Reverse},
		{k.Up, k.Down, k.PageUp, k.PageDown, k.Home, k.End},
		{k.Prompt, k.ClearMemo, k.Help, k.Quit},
	}
}
