package ui

import "charm.land/lipgloss/v2"

// Styles is every style the console draws with, built in one place.
type Styles struct {
	Title       lipgloss.Style
	Header      lipgloss.Style
	Label       lipgloss.Style
	Value       lipgloss.Style
	Switch      lipgloss.Style // the mark of a live engine switch
	Warn        lipgloss.Style // the chosen mode differs from the engine that ran
	Tab         lipgloss.Style
	ActiveTab   lipgloss.Style
	TableHeader lipgloss.Style
	Row         lipgloss.Style
	Selected    lipgloss.Style
	Dim         lipgloss.Style
	Error       lipgloss.Style
	Info        lipgloss.Style
	Spinner     lipgloss.Style
	Marked      lipgloss.Style // the faulting instruction in a disassembly
}

// DefaultStyles uses the 16 ANSI colours so the terminal's theme decides the actual colours.
func DefaultStyles() Styles {
	return Styles{
		Title:       lipgloss.NewStyle().Bold(true).Foreground(lipgloss.Color("6")),
		Header:      lipgloss.NewStyle(),
		Label:       lipgloss.NewStyle().Foreground(lipgloss.Color("8")),
		Value:       lipgloss.NewStyle().Bold(true),
		Switch:      lipgloss.NewStyle().Bold(true).Foreground(lipgloss.Color("0")).Background(lipgloss.Color("3")),
		Warn:        lipgloss.NewStyle().Foreground(lipgloss.Color("3")),
		Tab:         lipgloss.NewStyle().Padding(0, 1).Foreground(lipgloss.Color("7")),
		ActiveTab:   lipgloss.NewStyle().Padding(0, 1).Bold(true).Reverse(true),
		TableHeader: lipgloss.NewStyle().Bold(true).Underline(true),
		Row:         lipgloss.NewStyle(),
		Selected:    lipgloss.NewStyle().Reverse(true),
		Dim:         lipgloss.NewStyle().Foreground(lipgloss.Color("8")),
		Error:       lipgloss.NewStyle().Foreground(lipgloss.Color("1")).Bold(true),
		Info:        lipgloss.NewStyle().Foreground(lipgloss.Color("2")),
		Spinner:     lipgloss.NewStyle().Foreground(lipgloss.Color("5")),
		Marked:      lipgloss.NewStyle().Bold(true).Foreground(lipgloss.Color("1")),
	}
}
