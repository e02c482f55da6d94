// Command hybridbridge shows what runs inside a Linux VM from outside it. See README.md.
package main

import (
	"context"
	"os"
	"os/signal"
	"syscall"

	"hybridbridge/cli"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := cli.Main(ctx, os.Args[1:])
	stop()
	os.Exit(code)
}
