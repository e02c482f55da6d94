package cli

import (
	"bytes"
	"fmt"
	"io"
	"strings"
	"text/tabwriter"

	"github.com/spf13/cobra"

	"hybridbridge/bridge"
	"hybridbridge/inspect"
)

// engineHelp ends the help of every view command but ps, whose help says the same in its own
// words.
const engineHelp = `

The guest is paused while its own kernel code, run in the SVM against its memory (Slow-Bridge),
produces the files; then it resumes. One line of engine work goes to stderr, with what vanished
while it was read (a process that exited, a descriptor closed), which is left out. Any other
failure to read fails the command: no records are printed.`

// guestsHelp ends the help of every command that takes --guest.
const guestsHelp = `

--guest names a guest hybridbridge started or a VM attached with 'hybridbridge guest attach' (a
QEMU process, a libvirt domain, a memory dump). A running VM is paused while it is read and
resumed afterwards; one that was paused before stays paused, and a dump is read as it is. Nothing
stays paused between commands.`

// viewCommands are the commands of every view of inspect.Views but ps (psCommand).
func (e *env) viewCommands() []*cobra.Command {
	var out []*cobra.Command
	for _, v := range inspect.Views {
		if v.Name == inspect.ProcessView.Name {
			continue
		}
		out = append(out, e.viewCommand(v, v.Long+engineHelp, "print the records as JSON"))
	}
	return out
}

// viewCommand is the command that prints v's records, as its printer does or as JSON; long and
// jsonUsage are its help.
func (e *env) viewCommand(v inspect.View, long, jsonUsage string) *cobra.Command {
	p := printerFor(v.Name)
	var name string
	var asJSON bool
	var pid int
	c := &cobra.Command{
		Use:   v.Name,
		Short: v.Short,
		Long:  long + guestsHelp,
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if v.PID && pid <= 0 {
				return fmt.Errorf("%s needs --pid PID (a process of the guest; see hybridbridge ps)", v.Name)
			}
			var res any
			var gone inspect.Vanished
			run, err := e.inspectGuest(cmd.Context(), name, v.Name, func(s *bridge.Session) error {
				var err error
				res, gone, err = v.Read(s, pid)
				return err
			})
			if err != nil {
				return err
			}
			run.vanished = gone
			fmt.Fprintln(e.stderr, run.summary())
			if asJSON {
				return writeJSON(e.stdout, res)
			}
			return printWhole(e.stdout, func(w io.Writer) error { return p.print(w, res) })
		},
	}
	c.Flags().StringVar(&name, "guest", "demo", "the guest to inspect: one hybridbridge started or an attached VM")
	c.Flags().BoolVar(&asJSON, "json", false, jsonUsage)
	if v.PID {
		c.Flags().IntVar(&pid, "pid", 0, "the guest process (required)")
	}
	return c
}

// printer prints one view's records on a terminal.
type printer struct {
	view  string
	print func(w io.Writer, records any) error
}

// printers are how every view of inspect.Views prints without --json.
var printers = []printer{
	printerOf(inspect.ProcessView, printProcesses),
	printerOf(inspect.ModuleView, printModules),
	printerOf(inspect.SocketView, printSockets),
	printerOf(inspect.UptimeView, printUptime),
	printerOf(inspect.UnameView, printUname),
	printerOf(inspect.MeminfoView, printMeminfo),
	printerOf(inspect.MountView, printMounts),
	printerOf(inspect.OpenFileView, printOpenFiles),
	printerOf(inspect.EnvironView, printLines),
	printerOf(inspect.KernelLogView, printLog),
	printerOf(inspect.NeighbourView, printNeighbours),
	printerOf(inspect.InterfaceView, printInterfaces),
}

// printerOf ties print to v, so a printer that does not take v's records does not compile.
func printerOf[T any](v inspect.TypedView[T], print func(io.Writer, T) error) printer {
	return printer{view: v.Name, print: func(w io.Writer, records any) error { return print(w, records.(T)) }}
}

// printerFor is the printer of the named view. A view without one is a mistake in this
// package, caught by any test that builds the commands.
func printerFor(view string) printer {
	for _, p := range printers {
		if p.view == view {
			return p
		}
	}
	panic(fmt.Sprintf("cli: view %q has no printer: add one to printers", view))
}

// printWhole renders a view before writing any of it, so a view that fails to render prints
// nothing rather than part of a table.
func printWhole(w io.Writer, render func(io.Writer) error) error {
	var buf bytes.Buffer
	if err := render(&buf); err != nil {
		return err
	}
	_, err := w.Write(buf.Bytes())
	return err
}

// cell escapes the control characters of a name taken from the guest (a path, an argument, an
// environment value): a tab would shift a table's columns and a newline would pass for another
// row. JSON output keeps the exact value.
func cell(s string) string {
	if !strings.ContainsFunc(s, isControl) {
		return s
	}
	var b strings.Builder
	for _, r := range s {
		switch {
		case r == '\t':
			b.WriteString(`\t`)
		case r == '\n':
			b.WriteString(`\n`)
		case isControl(r):
			fmt.Fprintf(&b, `\x%02x`, r)
		default:
			b.WriteRune(r)
		}
	}
	return b.String()
}

func isControl(r rune) bool { return r < 0x20 || r == 0x7f }

func table(w io.Writer, header string, rows func(tw io.Writer)) error {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, header)
	rows(tw)
	return tw.Flush()
}

func printModules(w io.Writer, mods []inspect.Module) error {
	return table(w, "MODULE\tSIZE\tUSED\tBY\tSTATE\tADDRESS", func(tw io.Writer) {
		for _, m := range mods {
			fmt.Fprintf(tw, "%s\t%d\t%d\t%s\t%s\t%#x\n", m.Name, m.Size, m.Refs, strings.Join(m.Users, ","), m.State, m.Addr)
		}
	})
}

// printSockets renders the netstat table; a socket of another network namespace than the
// guest's initial one says which in NETNS ("-" for the initial one's).
func printSockets(w io.Writer, socks []inspect.Socket) error {
	return table(w, "PROTO\tLOCAL\tREMOTE\tSTATE\tRECV-Q\tSEND-Q\tUID\tINODE\tNETNS\tPIDS", func(tw io.Writer) {
		for _, s := range socks {
			netns := "-"
			if s.NetNS != 0 {
				netns = fmt.Sprintf("net:[%d]", s.NetNS)
			}
			pids := make([]string, len(s.PIDs))
			for i, p := range s.PIDs {
				pids[i] = fmt.Sprint(p)
			}
			state := s.State
			if s.Type != "" {
				state = s.Type + " " + state
			}
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%d\t%d\t%d\t%d\t%s\t%s\n", s.Proto, cell(s.Local), s.Remote, state, s.RxQueue, s.TxQueue, s.UID, s.Inode, netns, strings.Join(pids, ","))
		}
	})
}

func printUptime(w io.Writer, u inspect.UptimeLoad) error {
	secs := int64(u.Uptime.Seconds)
	_, err := fmt.Fprintf(w, "up %dd %02d:%02d:%02d (%.2f s), idle %.2f s, load average: %.2f, %.2f, %.2f, %d/%d runnable, last pid %d\n",
		secs/86400, secs/3600%24, secs/60%60, secs%60, u.Uptime.Seconds, u.Uptime.IdleSeconds,
		u.LoadAvg.Load1, u.LoadAvg.Load5, u.LoadAvg.Load15, u.LoadAvg.Running, u.LoadAvg.Threads, u.LoadAvg.LastPID)
	return err
}

func printUname(w io.Writer, u inspect.Uname) error {
	_, err := fmt.Fprintf(w, "%s %s %s %s %s\n", u.Sysname, u.Nodename, u.Release, u.Version, u.Machine)
	return err
}

func printMeminfo(w io.Writer, fields []inspect.MemField) error {
	return table(w, "FIELD\tVALUE", func(tw io.Writer) {
		for _, m := range fields {
			fmt.Fprintf(tw, "%s\t%d %s\n", m.Name, m.Value, m.Unit)
		}
	})
}

func printMounts(w io.Writer, mounts []inspect.Mount) error {
	return table(w, "DEVICE\tMOUNT POINT\tTYPE\tOPTIONS", func(tw io.Writer) {
		for _, m := range mounts {
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\n", cell(m.Device), cell(m.Point), m.Type, m.Options)
		}
	})
}

func printOpenFiles(w io.Writer, files []inspect.OpenFile) error {
	return table(w, "FD\tPOS\tFLAGS\tTARGET", func(tw io.Writer) {
		for _, o := range files {
			fmt.Fprintf(tw, "%d\t%d\t%s\t%s\n", o.FD, o.Pos, o.Flags, cell(o.Target))
		}
	})
}

func printLines(w io.Writer, lines []string) error {
	for _, l := range lines {
		if _, err := fmt.Fprintln(w, cell(l)); err != nil {
			return err
		}
	}
	return nil
}

func printLog(w io.Writer, log []inspect.LogLine) error {
	for _, l := range log {
		if _, err := fmt.Fprintf(w, "[%5d.%06d] <%d> %s\n", l.Micros/1e6, l.Micros%1e6, l.Level, l.Text); err != nil {
			return err
		}
	}
	return nil
}

func printNeighbours(w io.Writer, neighbours []inspect.Neighbour) error {
	return table(w, "ADDRESS\tHWTYPE\tFLAGS\tHWADDRESS\tMASK\tDEVICE", func(tw io.Writer) {
		for _, n := range neighbours {
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\n", n.IP, n.HWType, n.Flags, n.HWAddr, n.Mask, n.Device)
		}
	})
}

func printInterfaces(w io.Writer, ifs inspect.Interfaces) error {
	err := table(w, "INTERFACE\tRX BYTES\tRX PKTS\tRX ERR/DROP\tTX BYTES\tTX PKTS\tTX ERR/DROP\tADDRESSES", func(tw io.Writer) {
		for _, i := range ifs.Interfaces {
			fmt.Fprintf(tw, "%s\t%d\t%d\t%d/%d\t%d\t%d\t%d/%d\t%s\n", i.Name, i.RxBytes, i.RxPackets, i.RxErrors, i.RxDropped,
				i.TxBytes, i.TxPackets, i.TxErrors, i.TxDropped, strings.Join(append(append([]string{}, i.IPv4...), i.IPv6...), " "))
		}
	})
	if err == nil && len(ifs.Unassigned) > 0 {
		_, err = fmt.Fprintf(w, "local IPv4 addresses no connected route places on an interface: %s\n", strings.Join(ifs.Unassigned, " "))
	}
	return err
}
