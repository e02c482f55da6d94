package gdbstub

// MaxMemChunk lets the external tests read across a packet boundary.
const MaxMemChunk = maxMemChunk
