#!/usr/bin/env bash
# Sets up everything hybridbridge needs on a Debian 12 machine. Idempotent and resumable: every
# step checks its own result first, downloads land in .cache/ (ignored by git) and are unpacked into
# a temporary folder that is renamed into place only when complete.
#
#   scripts/setup.sh          packages, kernel, Unicorn, build, the Debian guest image
#
# Nothing here changes the machine's apt configuration: the Debian 13 Unicorn package is fetched
# with a private sources list and private state and cache folders.
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
# Go installed from its release archive lives here and is not always on a non-interactive PATH.
[ -d /usr/local/go/bin ] && PATH="$PATH:/usr/local/go/bin"
cache="$root/.cache"
mkdir -p "$cache"

step() { printf '\033[1m==> %s\033[0m\n' "$*"; }
die() { printf 'setup: %s\n' "$*" >&2; exit 1; }

as_root() {
	if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi
}

# 1. Debian 12 packages.
# qemu-system-x86 boots the guests; busybox-static fills their initramfs; gcc builds the cgo
# binding; tmux drives the console in tests; xz-utils and zstd unpack .deb members. The libvirt
# packages run libvirt domains as targets (virsh and a libvirtd the tests start themselves: no
# systemd needed). debootstrap and e2fsprogs build the Debian guest's disk, qemu-utils gives each of
# its boots a copy-on-write layer.
packages=(qemu-system-x86 qemu-utils busybox-static gcc libc6-dev tmux xz-utils zstd ca-certificates
	libvirt-daemon-system libvirt-clients libvirt-daemon-driver-qemu debootstrap e2fsprogs)
missing=()
for p in "${packages[@]}"; do
	dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
	step "installing Debian packages: ${missing[*]}"
	as_root apt-get update -q
	as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}"
else
	step "Debian packages present"
fi
# go.mod names the oldest Go that builds the project; an older go would try to download a newer
# toolchain, which is not reachable everywhere.
need_go=$(awk '$1 == "go" {print $2; exit}' "$root/go.mod")
command -v go >/dev/null || die "Go is not on PATH; install Go $need_go or newer"
have_go=$(GOTOOLCHAIN=local go env GOVERSION)
have_go=${have_go#go}
[ "$(printf '%s\n%s\n' "$need_go" "$have_go" | sort -V | head -n 1)" = "$need_go" ] ||
	die "Go $have_go is too old: go.mod needs Go $need_go or newer"

# 2. The guest kernel: the concrete package linux-image-amd64 depends on, never installed on the
# host, only unpacked.
kdir="$cache/kernel"
if [ ! -f "$kdir/vmlinuz" ] || [ ! -f "$kdir/config" ] || [ ! -f "$kdir/release" ]; then
	step "fetching the Debian 6.1 guest kernel"
	if ! apt-cache show linux-image-amd64 >/dev/null 2>&1; then as_root apt-get update -q; fi
	kpkg=$(apt-cache depends linux-image-amd64 2>/dev/null | awk '/Depends: linux-image-6\.1\.0-[0-9]+-amd64$/ {print $2; exit}')
	[ -n "$kpkg" ] || die "cannot resolve linux-image-amd64 to a concrete linux-image-6.1.0-*-amd64 package"
	dl="$cache/debs"
	mkdir -p "$dl"
	if ! ls "$dl/${kpkg}"_*.deb >/dev/null 2>&1; then
		(cd "$dl" && apt-get -o APT::Sandbox::User=root download "$kpkg")
	fi
	deb=$(ls "$dl/${kpkg}"_*.deb | head -n 1)
	tmp=$(mktemp -d "$cache/kernel.tmp.XXXXXX")
	dpkg-deb -x "$deb" "$tmp/root"
	release=${kpkg#linux-image-}
	[ -f "$tmp/root/boot/vmlinuz-$release" ] || die "$deb has no /boot/vmlinuz-$release"
	ln -s "root/boot/vmlinuz-$release" "$tmp/vmlinuz"
	ln -s "root/boot/config-$release" "$tmp/config"
	ln -s "root/lib/modules/$release" "$tmp/modules"
	echo "$release" >"$tmp/release"
	rm -rf "$kdir"
	mv "$tmp" "$kdir"
fi
step "guest kernel $(cat "$kdir/release")"

# 3. Unicorn 2.1.x from Debian 13. Debian 12's 2.0.1 ignores page-table physical addresses and
# must not be used; the static library from trixie links and runs on Debian 12.
udir="$cache/unicorn"
if [ ! -f "$udir/lib/libunicorn.a" ] || [ ! -f "$udir/include/unicorn/unicorn.h" ]; then
	step "fetching Unicorn 2.1 (libunicorn-dev from Debian 13) with a private apt configuration"
	apt="$cache/apt-trixie"
	mkdir -p "$apt/state/lists/partial" "$apt/cache/archives/partial" "$apt/etc/preferences.d" "$apt/etc/sources.list.d"
	mirror=$("$root/scripts/debian-mirror.sh") || die "no Debian mirror to fetch Unicorn from (see above)"
	cat >"$apt/etc/sources.list" <<-EOF
		deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] $mirror trixie main
	EOF
	aptopts=(-o "Dir::Etc=$apt/etc" -o "Dir::Etc::sourcelist=$apt/etc/sources.list"
		-o "Dir::Etc::sourceparts=$apt/etc/sources.list.d" -o "Dir::Etc::preferencesparts=$apt/etc/preferences.d"
		-o "Dir::State=$apt/state" -o "Dir::Cache=$apt/cache" -o "Dir::State::status=/var/lib/dpkg/status"
		-o "Debug::NoLocking=1" -o "APT::Architecture=amd64" -o "Acquire::Languages=none" -o "Acquire::IndexTargets::deb::DEP-11::DefaultEnabled=false")
	apt-get "${aptopts[@]}" update -q
	dl="$cache/debs"
	mkdir -p "$dl"
	if ! ls "$dl"/libunicorn-dev_2.1.*.deb >/dev/null 2>&1; then
		(cd "$dl" && apt-get "${aptopts[@]}" -o APT::Sandbox::User=root download libunicorn-dev)
	fi
	deb=$(ls "$dl"/libunicorn-dev_2.1.*.deb 2>/dev/null | head -n 1)
	[ -n "$deb" ] || die "Debian 13 did not provide libunicorn-dev 2.1.x"
	tmp=$(mktemp -d "$cache/unicorn.tmp.XXXXXX")
	dpkg-deb -x "$deb" "$tmp/root"
	mkdir -p "$tmp/lib" "$tmp/include"
	cp "$tmp/root/usr/lib/x86_64-linux-gnu/libunicorn.a" "$tmp/lib/"
	cp -r "$tmp/root/usr/include/unicorn" "$tmp/include/"
	basename "$deb" >"$tmp/package"
	rm -rf "$tmp/root" "$udir"
	mv "$tmp" "$udir"
fi

# The check links the static library exactly as the build does and refuses anything but 2.1.x.
step "checking Unicorn"
(cd "$root" && go run ./cmd/unicorn-check) || die "Unicorn check failed (see above)"

# 4. The binary.
step "building the guest helper, the SVM agent and bin/hybridbridge"
(cd "$root" && CGO_ENABLED=0 go build -trimpath -ldflags="-s -w" -o .cache/guest/hbguest ./cmd/hbguest)
(cd "$root" && gcc -static -O2 -Wall -o .cache/guest/hbagent svm/agent/hbagent.c)
(cd "$root" && go build -o bin/hybridbridge .)

# 5. The Debian 12 guest (guest start --image debian), with the guest kernel's own package.
kdeb=$(ls "$cache/debs/linux-image-$(cat "$kdir/release")"_*.deb 2>/dev/null | head -n 1)
[ -n "$kdeb" ] || die "the guest kernel's package is not in $cache/debs (remove $kdir and run setup again)"
as_root "$root/scripts/debian-image.sh" "$cache" "$kdeb" "$cache/guest/hbguest"
step "setup complete"
