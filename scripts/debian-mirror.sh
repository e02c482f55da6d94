#!/usr/bin/env bash
# Prints the Debian archive this machine's apt already uses: the site of its main suite (the
# release codename, not -security or -updates), whatever the format of its sources (sources.list
# lines or deb822 .sources files), as apt itself resolves them. setup.sh fetches packages of other
# Debian releases from it, so no mirror is written into the repository.
set -euo pipefail
codename=${DEBIAN_CODENAME:-$(. /etc/os-release && echo "${VERSION_CODENAME:-}")}
if [ -z "$codename" ]; then
	echo "debian-mirror: cannot tell this machine's Debian release (no VERSION_CODENAME in /etc/os-release)" >&2
	exit 1
fi
site=$(apt-get indextargets --no-release-info --format '$(SITE) $(RELEASE) $(TARGET_OF)' |
	awk -v want="$codename" '$2 == want && $3 == "deb" {print $1; exit}')
if [ -z "$site" ]; then
	echo "debian-mirror: apt has no source for Debian $codename (its main archive); add one to /etc/apt/sources.list or /etc/apt/sources.list.d/" >&2
	exit 1
fi
echo "${site%/}"
