#!/usr/bin/env bash
# Builds the Debian 12 guest image (guest start --image debian) from Debian's packages, without
# mounting anything on this machine: debootstrap into a folder, the guest kernel's own package
# (the one setup.sh unpacked for the SVM) installed inside it, which makes its initramfs there, the
# guest's configuration and workload, then an ext4 image made from the folder by mkfs.ext4 -d.
#
#   scripts/debian-image.sh CACHE KERNEL_DEB HELPER
#
# CACHE is the project's .cache, KERNEL_DEB the linux-image .deb, HELPER the static hbguest.
# Idempotent: each stage leaves a stamp in CACHE/debian/stamps and is skipped when it is there (the
# last one's stamp holds a hash of what it used, so a new helper or workload redoes only it). Logs
# are in CACHE/debian/logs. Run as root (debootstrap and chroot need it).
set -euo pipefail
[ $# -eq 3 ] || { echo "usage: $0 CACHE KERNEL_DEB HELPER" >&2; exit 2; }
cache=$(cd "$1" && pwd) kdeb=$(realpath -e "$2") helper=$(realpath -e "$3")
root=$(cd "$(dirname "$0")/.." && pwd)
dir="$cache/debian"
rootfs="$dir/rootfs"
stamps="$dir/stamps"
logs="$dir/logs"
mkdir -p "$stamps" "$logs" "$cache/debs/debian"
export DEBIAN_FRONTEND=noninteractive LC_ALL=C.UTF-8

step() { printf '\033[1m==> %s\033[0m\n' "$*"; }
die() { printf 'debian-image: %s\n' "$*" >&2; exit 1; }
# run LOG CMD...: runs CMD with its output in LOG, printing the log's end if it fails.
run() {
	local log=$1
	shift
	if ! "$@" >>"$log" 2>&1; then
		tail -n 30 "$log" >&2
		die "failed: $* (whole log: $log)"
	fi
}

[ "$(id -u)" = 0 ] || die "must run as root (debootstrap and chroot)"
[ -f "$kdeb" ] || die "no kernel package $kdeb"
[ -x "$helper" ] || die "no guest helper $helper"
release=$(dpkg-deb -f "$kdeb" Package)
release=${release#linux-image-}
suite=bookworm

# 1. The base system: systemd and what the workload and the tests use. linux-base and
# initramfs-tools are the kernel package's dependencies.
if [ ! -e "$stamps/debootstrap" ]; then
	mirror=$(DEBIAN_CODENAME=$suite "$root/scripts/debian-mirror.sh") || die "no Debian $suite mirror in this machine's apt configuration"
	step "debootstrap Debian 12 into $rootfs (about a minute; log: $logs/debootstrap.log)"
	rm -rf "$rootfs"
	: >"$logs/debootstrap.log"
	run "$logs/debootstrap.log" debootstrap --variant=minbase --cache-dir="$cache/debs/debian" \
		--include=systemd,systemd-sysv,udev,dbus,libpam-systemd,openssh-server,cron,procps,iproute2,kmod,busybox-static,initramfs-tools,linux-base,zstd,util-linux \
		"$suite" "$rootfs" "$mirror"
	touch "$stamps/debootstrap"
fi

# 2. The guest kernel, the SVM's own build, installed by dpkg inside the image: its postinst makes
# the initramfs there (initramfs-tools, without /proc: it needs none). Services must not start in
# the chroot.
if [ "$(cat "$stamps/kernel" 2>/dev/null)" != "$release" ]; then
	step "installing the guest kernel $release in the image (about 30 s; log: $logs/kernel.log)"
	printf '#!/bin/sh\nexit 101\n' >"$rootfs/usr/sbin/policy-rc.d"
	chmod 755 "$rootfs/usr/sbin/policy-rc.d"
	cp "$kdeb" "$rootfs/tmp/kernel.deb"
	: >"$logs/kernel.log"
	run "$logs/kernel.log" chroot "$rootfs" dpkg -i /tmp/kernel.deb
	rm -f "$rootfs/tmp/kernel.deb" "$rootfs/usr/sbin/policy-rc.d"
	[ -s "$rootfs/boot/initrd.img-$release" ] || run "$logs/kernel.log" chroot "$rootfs" update-initramfs -c -k "$release"
	[ -s "$rootfs/boot/vmlinuz-$release" ] || die "the image has no /boot/vmlinuz-$release"
	echo "$release" >"$stamps/kernel"
fi

# 3. Configuration, workload and helper, then the disk image. Redone when any of them changes.
want=$(cat "$0" "$helper" | sha256sum | cut -c1-16)
if [ "$(cat "$stamps/image" 2>/dev/null)" != "$want" ] || [ ! -f "$dir/root.img" ]; then
	step "configuring the Debian guest and making its ext4 image"
	echo hb-debian >"$rootfs/etc/hostname"
	printf '127.0.0.1\tlocalhost\n127.0.1.1\thb-debian\n::1\tlocalhost ip6-localhost ip6-loopback\n' >"$rootfs/etc/hosts"
	printf '/dev/vda\t/\text4\trw,errors=remount-ro\t0\t1\n' >"$rootfs/etc/fstab"
	chroot "$rootfs" id analyst >/dev/null 2>&1 || chroot "$rootfs" useradd -m -u 1000 -U -s /bin/bash analyst
	cat >"$rootfs/etc/systemd/network/20-wired.network" <<-'EOF'
		[Match]
		Name=en* eth*
		[Network]
		DHCP=ipv4
	EOF
	chroot "$rootfs" systemctl enable systemd-networkd.service >/dev/null 2>&1
	chroot "$rootfs" systemctl set-default multi-user.target >/dev/null 2>&1

	# The workload of a small server: sshd (enabled by its package), long-running processes of
	# the user analyst, one in its own PID and network namespace, a unit of our own name, the
	# dummy module besides what udev loads.
	install -m 755 "$helper" "$rootfs/usr/local/sbin/hbguest"
	echo dummy >"$rootfs/etc/modules-load.d/hb.conf"
	cat >"$rootfs/etc/systemd/system/hb-analyst.service" <<-'EOF'
		[Unit]
		Description=Long-running processes of the user analyst
		[Service]
		User=analyst
		WorkingDirectory=/home/analyst
		ExecStart=/bin/sh -c 'sleep infinity & sleep infinity & exec /bin/busybox httpd -f -p 8080 -h /home/analyst'
		[Install]
		WantedBy=multi-user.target
	EOF
	cat >"$rootfs/etc/systemd/system/hb-isolated.service" <<-'EOF'
		[Unit]
		Description=A process in its own PID and network namespaces
		[Service]
		ExecStart=/usr/bin/unshare --fork --pid --net --mount-proc /bin/sh -c 'sleep infinity & exec /bin/busybox nc -ll -p 9000 -e /bin/cat'
		[Install]
		WantedBy=multi-user.target
	EOF
	# The command channel (ground truth for tests only) answers once the workload is up: the
	# host waits for it to know the guest is ready.
	cat >"$rootfs/etc/systemd/system/hbguest.service" <<-'EOF'
		[Unit]
		Description=hybridbridge test channel on the second serial port
		After=multi-user.target hb-analyst.service hb-isolated.service ssh.service systemd-modules-load.service
		[Service]
		ExecStart=/usr/local/sbin/hbguest serve /dev/ttyS1
		Restart=always
		[Install]
		WantedBy=multi-user.target
	EOF
	for u in hb-analyst hb-isolated hbguest; do
		chroot "$rootfs" systemctl enable "$u.service" >/dev/null 2>&1
	done
	chroot "$rootfs" apt-get clean
	if grep -q " $rootfs[/ ]" /proc/mounts; then die "something is mounted under $rootfs; refusing to image it"; fi
	tmp="$dir/root.img.tmp"
	rm -f "$tmp"
	mkfs.ext4 -q -F -d "$rootfs" -L root "$tmp" 2G
	cp "$rootfs/boot/vmlinuz-$release" "$dir/vmlinuz.tmp"
	cp "$rootfs/boot/initrd.img-$release" "$dir/initrd.img.tmp"
	mv "$dir/vmlinuz.tmp" "$dir/vmlinuz"
	mv "$dir/initrd.img.tmp" "$dir/initrd.img"
	mv "$tmp" "$dir/root.img"
	echo "$want" >"$stamps/image"
fi
step "Debian guest image: $(du -sh "$dir/root.img" | cut -f1) ($dir/root.img, kernel $release)"
