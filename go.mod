module hybridbridge

go 1.26.0

require (
	github.com/cavaliergopher/cpio v1.0.1
	golang.org/x/sys v0.50.0
)
