package gdbstub

// MaxMemChunk and MaxMemWrite let the external tests cross packet boundaries.
const (
	MaxMemChunk = maxMemChunk
	MaxMemWrite = maxMemWrite
)
