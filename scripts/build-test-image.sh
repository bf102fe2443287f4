#!/usr/bin/env bash
# Builds the Docker image the tests run jobs in, when it is missing. The engine these tests
# use has no registry, so nothing can be pulled: the image is a Debian bookworm root file
# system made by debootstrap (minbase, plus make and procps) from this machine's own apt
# mirror, imported into the engine.
#
# The image deliberately has NO autodriver: the Docker backend injects its own static one at
# copy-in, and the tests prove that a stock image with sh and make works unchanged.
#
#   scripts/build-test-image.sh          # builds tango-test:latest (+ autograding_image:latest)
#   TANGO_TEST_IMAGE=name:tag scripts/build-test-image.sh
#
# Idempotent: when the image exists it only makes sure the extra tag exists. The root file
# system tarball is cached under ~/.cache/tango-rs/ (debootstrap takes about 45 s; the import
# about 10 s). Needs root (debootstrap) and a running Docker engine; installs debootstrap
# through apt when it is missing.
set -euo pipefail

image=${TANGO_TEST_IMAGE:-tango-test:latest}
# Tango's default image name, so a job that names it finds the same image.
alias_tag=${TANGO_TEST_IMAGE_ALIAS:-autograding_image:latest}
suite=bookworm
cache=${XDG_CACHE_HOME:-$HOME/.cache}/tango-rs
rootfs_tar=$cache/rootfs-$suite-minbase-make.tar

say() { printf 'build-test-image: %s\n' "$*" >&2; }

command -v docker >/dev/null || { say "docker CLI not found"; exit 1; }
docker info >/dev/null 2>&1 || { say "cannot reach the Docker engine (is dockerd running?)"; exit 1; }

mkdir -p "$cache"
# Several test runs may start at once: one builds, the others wait and then find the image.
exec 9>"$cache/build-test-image.lock"
flock 9

tag_alias() {
  if [[ -n $alias_tag ]] && ! docker image inspect "$alias_tag" >/dev/null 2>&1; then
    say "tagging $image as $alias_tag"
    docker tag "$image" "$alias_tag"
  fi
}

if docker image inspect "$image" >/dev/null 2>&1; then
  say "$image exists; nothing to build"
  tag_alias
  echo "$image"
  exit 0
fi

# The Debian mirror this machine's apt uses (deb822 .sources or one-line .list), else the
# public one.
apt_mirror() {
  local files=(/etc/apt/sources.list /etc/apt/sources.list.d/*.sources /etc/apt/sources.list.d/*.list)
  local uri
  uri=$(awk '
    /^URIs:/ { for (i = 2; i <= NF; i++) if ($i ~ /debian\/?$/) { print $i; exit } }
    /^deb / { for (i = 2; i <= NF; i++) if ($i ~ /^(http|https|file):/ && $i ~ /debian\/?$/) { print $i; exit } }
  ' "${files[@]}" 2>/dev/null | head -n1)
  echo "${uri:-http://deb.debian.org/debian}"
}

if [[ ! -s $rootfs_tar ]]; then
  if ! command -v debootstrap >/dev/null; then
    say "installing debootstrap (apt)"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq debootstrap >/dev/null
  fi
  mirror=$(apt_mirror)
  work=$(mktemp -d /tmp/tango-rootfs.XXXXXX)
  trap 'rm -rf "$work"' EXIT
  say "debootstrap --variant=minbase --include=make,procps $suite from $mirror (about 45 s)"
  debootstrap --variant=minbase --include=make,procps "$suite" "$work/rootfs" "$mirror" \
    >"$work/debootstrap.log" 2>&1 || {
    say "debootstrap failed; its log:"
    tail -n 30 "$work/debootstrap.log" >&2
    exit 1
  }
  # Downloaded packages and apt lists are of no use inside the image.
  rm -rf "$work"/rootfs/var/cache/apt/archives/*.deb "$work"/rootfs/var/lib/apt/lists/*
  say "packing the root file system into $rootfs_tar"
  tar -C "$work/rootfs" --numeric-owner -cf "$rootfs_tar.tmp" .
  mv "$rootfs_tar.tmp" "$rootfs_tar"
else
  say "using the cached root file system $rootfs_tar"
fi

say "importing $rootfs_tar as $image"
docker import \
  --change 'CMD ["/bin/sh"]' \
  --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
  --message "tango-rs test image: Debian $suite minbase + make, procps; no autodriver" \
  "$rootfs_tar" "$image" >/dev/null
tag_alias
say "built $image"
echo "$image"
