#!/bin/sh
# Make a minimal Debian 12 base image (`debian-base`) with debootstrap, from the
# mirror apt already uses. Usage: make-base.sh [NAME] (default: debian-base).
# Set DEBIAN_MIRROR to override the mirror; the rootfs tar is kept in
# ${XDG_CACHE_HOME:-~/.cache}/pybuild/ so a second run skips debootstrap.
set -eu
here=$(cd "$(dirname "$0")" && pwd)
name=${1:-debian-base}
mirror=${DEBIAN_MIRROR:-$(sed -n 's/^URIs: *\(http[^ ]*debian\)$/\1/p' /etc/apt/sources.list.d/debian.sources 2>/dev/null | head -1)}
mirror=${mirror:-http://deb.debian.org/debian}
cache=${XDG_CACHE_HOME:-$HOME/.cache}/pybuild
tarball=$cache/debian-bookworm-minbase.tar
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
if [ ! -f "$tarball" ]; then
  mkdir -p "$cache"
  debootstrap --variant=minbase bookworm "$work/rootfs" "$mirror" >"$work/debootstrap.log" 2>&1 \
    || { tail -20 "$work/debootstrap.log" >&2; exit 1; }
  rm -rf "$work/rootfs/var/cache/apt/archives/"*.deb "$work/rootfs/var/lib/apt/lists/"*
  tar -C "$work/rootfs" --numeric-owner -cf "$tarball.tmp" . && mv "$tarball.tmp" "$tarball"
  rm -rf "$work/rootfs"
fi
ln "$tarball" "$work/rootfs.tar" 2>/dev/null || cp "$tarball" "$work/rootfs.tar"
cat > "$work/Dockerfile" <<'D'
FROM scratch
ADD rootfs.tar /
CMD ["bash"]
D
pybuild build --progress quiet -t "$name" "$work" >/dev/null
echo "$name"
