package vmm

// FuncView is physical memory reached only through a read function, such as an emulator's,
// so that the walker can run over tables no file or slice holds. It knows no RAM ranges
// (Ranges is nil, Size 0): what is backed is whatever read accepts.
type FuncView struct {
	name string
	read func(addr uint64, buf []byte) error
}

// NewFuncView names read's memory for error messages.
func NewFuncView(name string, read func(addr uint64, buf []byte) error) *FuncView {
	return &FuncView{name: name, read: read}
}

// Name returns the name given to NewFuncView.
func (v *FuncView) Name() string { return v.name }

// Ranges returns nil: the view cannot say where its memory is.
func (v *FuncView) Ranges() []PhysRange { return nil }

// Size returns 0, the size of no ranges.
func (v *FuncView) Size() uint64 { return 0 }

// ReadPhys fills buf from addr. read's error comes back inside a *FaultError, as from every
// PhysView.
func (v *FuncView) ReadPhys(addr uint64, buf []byte) error {
	if err := v.read(addr, buf); err != nil {
		return &FaultError{View: v.name, Op: opReadPhys, Addr: addr, Err: err}
	}
	return nil
}
