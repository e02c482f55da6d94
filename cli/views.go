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

// view is one inspection command: how to compute its records from a session (and what vanished
// while they were read) and how to print them as a table.
type view struct {
	use, short, long string
	pid              bool // takes --pid
	run              func(s *bridge.Session, pid int) (any, inspect.Vanished, error)
	print            func(w io.Writer, v any) error
}

// views are the inspection commands besides ps. The console and the benchmark run their own
// lists of walkers (consoleViews, benchViews) and print differently.
var views = []view{
	{use: "lsmod", short: "List the guest's kernel modules (/proc/modules)",
		run:   func(s *bridge.Session, _ int) (any, inspect.Vanished, error) { return whole(inspect.ListModules(s)) },
		print: printModules},
	{use: "netstat", short: "List the guest's TCP, UDP and Unix sockets with the processes holding them",
		long: `Sockets from /proc/net/{tcp,tcp6,udp,udp6,unix} of the guest's initial network namespace, and
the processes holding each one (from every /proc/<pid>/fd link socket:[inode]).`,
		run: func(s *bridge.Session, _ int) (any, inspect.Vanished, error) {
			return nonNil(inspect.ListSockets(s, true))
		},
		print: printSockets},
	{use: "uptime", short: "The guest's uptime and load (its clock, not the host's)",
		long: `The guest's time since boot and idle time (/proc/uptime) and load averages (/proc/loadavg).
The guest is paused while it is read: its clock is shown as of its last timekeeping update.`,
		run: func(s *bridge.Session, _ int) (any, inspect.Vanished, error) {
			u, err := inspect.ReadUptime(s)
			if err != nil {
				return nil, inspect.Vanished{}, err
			}
			l, err := inspect.ReadLoadAvg(s)
			return whole(uptimeView{u, l}, err)
		},
		print: printUptime},
	{use: "uname", short: "The guest's kernel and host names (uname -a)",
		run:   func(s *bridge.Session, _ int) (any, inspect.Vanished, error) { return whole(inspect.ReadUname(s)) },
		print: printUname},
	{use: "free", short: "The guest's memory (/proc/meminfo)",
		run:   func(s *bridge.Session, _ int) (any, inspect.Vanished, error) { return whole(inspect.ReadMeminfo(s)) },
		print: printMeminfo},
	{use: "mounts", short: "The guest's mounted file systems (/proc/mounts of its init)",
		run:   func(s *bridge.Session, _ int) (any, inspect.Vanished, error) { return whole(inspect.ReadMounts(s)) },
		print: printMounts},
	{use: "lsof", short: "Open files of a guest process (/proc/PID/fd and fdinfo)", pid: true,
		run: func(s *bridge.Session, pid int) (any, inspect.Vanished, error) {
			return nonNil(inspect.ListOpenFiles(s, s, pid))
		},
		print: printOpenFiles},
	{use: "env", short: "The environment of a guest process (/proc/PID/environ)", pid: true,
		run: func(s *bridge.Session, pid int) (any, inspect.Vanished, error) {
			return whole(inspect.ReadEnviron(s, pid))
		},
		print: printLines},
	{use: "dmesg", short: "The guest's kernel log (its /dev/kmsg)",
		run:   func(s *bridge.Session, _ int) (any, inspect.Vanished, error) { return whole(inspect.ReadKernelLog(s)) },
		print: printLog},
	{use: "arp", short: "The guest's neighbour table (/proc/net/arp)",
		run:   func(s *bridge.Session, _ int) (any, inspect.Vanished, error) { return whole(inspect.ListNeighbours(s)) },
		print: printNeighbours},
	{use: "ifconfig", short: "The guest's network interfaces, counters and addresses",
		long: `Interfaces and counters from /proc/net/dev, IPv6 addresses from /proc/net/if_inet6, IPv4
addresses from the local routing table (/proc/net/fib_trie). procfs does not say which interface
an IPv4 address belongs to: it is placed on the interface of the connected route that covers it
(/proc/net/route), and listed as unassigned otherwise.`,
		run:   func(s *bridge.Session, _ int) (any, inspect.Vanished, error) { return whole(inspect.ListInterfaces(s)) },
		print: printInterfaces},
}

// nonNil keeps empty lists as [] in JSON.
func nonNil[T any](v []T, gone inspect.Vanished, err error) (any, inspect.Vanished, error) {
	if v == nil {
		v = []T{}
	}
	return v, gone, err
}

// whole adapts a walker that reads fixed files: nothing it reads can vanish.
func whole[T any](v T, err error) (any, inspect.Vanished, error) {
	return v, inspect.Vanished{}, err
}

type uptimeView struct {
	Uptime  inspect.Uptime  `json:"uptime"`
	LoadAvg inspect.LoadAvg `json:"loadavg"`
}

func (e *env) viewCommands() []*cobra.Command {
	var out []*cobra.Command
	for _, v := range views {
		v := v
		var name string
		var asJSON bool
		var pid int
		c := &cobra.Command{
			Use:   v.use,
			Short: v.short,
			Long: v.long + `

The guest is paused while its own kernel code, run in the SVM against its memory (Slow-Bridge),
produces the files; then it resumes. One line of engine work goes to stderr, with what vanished
while it was read (a process that exited, a descriptor closed), which is left out. Any other
failure to read fails the command: no records are printed.`,
			Args: cobra.NoArgs,
			RunE: func(cmd *cobra.Command, _ []string) error {
				if v.pid && pid <= 0 {
					return fmt.Errorf("%s needs --pid PID (a process of the guest; see hybridbridge ps)", v.use)
				}
				var res any
				var gone inspect.Vanished
				run, err := e.inspectGuest(cmd.Context(), name, v.use, func(s *bridge.Session) error {
					var err error
					res, gone, err = v.run(s, pid)
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
				return printWhole(e.stdout, func(w io.Writer) error { return v.print(w, res) })
			},
		}
		c.Flags().StringVar(&name, "guest", "demo", "the running guest to inspect")
		c.Flags().BoolVar(&asJSON, "json", false, "print the records as JSON")
		if v.pid {
			c.Flags().IntVar(&pid, "pid", 0, "the guest process (required)")
		}
		out = append(out, c)
	}
	return out
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

func printModules(w io.Writer, v any) error {
	return table(w, "MODULE\tSIZE\tUSED\tBY\tSTATE\tADDRESS", func(tw io.Writer) {
		for _, m := range v.([]inspect.Module) {
			fmt.Fprintf(tw, "%s\t%d\t%d\t%s\t%s\t%#x\n", m.Name, m.Size, m.Refs, strings.Join(m.Users, ","), m.State, m.Addr)
		}
	})
}

func printSockets(w io.Writer, v any) error {
	return table(w, "PROTO\tLOCAL\tREMOTE\tSTATE\tRECV-Q\tSEND-Q\tUID\tINODE\tPIDS", func(tw io.Writer) {
		for _, s := range v.([]inspect.Socket) {
			pids := make([]string, len(s.PIDs))
			for i, p := range s.PIDs {
				pids[i] = fmt.Sprint(p)
			}
			state := s.State
			if s.Type != "" {
				state = s.Type + " " + state
			}
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%d\t%d\t%d\t%d\t%s\n", s.Proto, cell(s.Local), s.Remote, state, s.RxQueue, s.TxQueue, s.UID, s.Inode, strings.Join(pids, ","))
		}
	})
}

func printUptime(w io.Writer, v any) error {
	u := v.(uptimeView)
	secs := int64(u.Uptime.Seconds)
	_, err := fmt.Fprintf(w, "up %dd %02d:%02d:%02d (%.2f s), idle %.2f s, load average: %.2f, %.2f, %.2f, %d/%d runnable, last pid %d\n",
		secs/86400, secs/3600%24, secs/60%60, secs%60, u.Uptime.Seconds, u.Uptime.IdleSeconds,
		u.LoadAvg.Load1, u.LoadAvg.Load5, u.LoadAvg.Load15, u.LoadAvg.Running, u.LoadAvg.Threads, u.LoadAvg.LastPID)
	return err
}

func printUname(w io.Writer, v any) error {
	u := v.(inspect.Uname)
	_, err := fmt.Fprintf(w, "%s %s %s %s %s\n", u.Sysname, u.Nodename, u.Release, u.Version, u.Machine)
	return err
}

func printMeminfo(w io.Writer, v any) error {
	return table(w, "FIELD\tVALUE", func(tw io.Writer) {
		for _, m := range v.([]inspect.MemField) {
			fmt.Fprintf(tw, "%s\t%d %s\n", m.Name, m.Value, m.Unit)
		}
	})
}

func printMounts(w io.Writer, v any) error {
	return table(w, "DEVICE\tMOUNT POINT\tTYPE\tOPTIONS", func(tw io.Writer) {
		for _, m := range v.([]inspect.Mount) {
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\n", cell(m.Device), cell(m.Point), m.Type, m.Options)
		}
	})
}

func printOpenFiles(w io.Writer, v any) error {
	return table(w, "FD\tPOS\tFLAGS\tTARGET", func(tw io.Writer) {
		for _, o := range v.([]inspect.OpenFile) {
			fmt.Fprintf(tw, "%d\t%d\t%s\t%s\n", o.FD, o.Pos, o.Flags, cell(o.Target))
		}
	})
}

func printLines(w io.Writer, v any) error {
	for _, l := range v.([]string) {
		if _, err := fmt.Fprintln(w, cell(l)); err != nil {
			return err
		}
	}
	return nil
}

func printLog(w io.Writer, v any) error {
	for _, l := range v.([]inspect.LogLine) {
		if _, err := fmt.Fprintf(w, "[%5d.%06d] <%d> %s\n", l.Micros/1e6, l.Micros%1e6, l.Level, l.Text); err != nil {
			return err
		}
	}
	return nil
}

func printNeighbours(w io.Writer, v any) error {
	return table(w, "ADDRESS\tHWTYPE\tFLAGS\tHWADDRESS\tMASK\tDEVICE", func(tw io.Writer) {
		for _, n := range v.([]inspect.Neighbour) {
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\n", n.IP, n.HWType, n.Flags, n.HWAddr, n.Mask, n.Device)
		}
	})
}

func printInterfaces(w io.Writer, v any) error {
	ifs := v.(inspect.Interfaces)
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
