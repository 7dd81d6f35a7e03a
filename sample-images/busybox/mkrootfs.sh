#!/bin/sh
# Make a small busybox root filesystem from the host's busybox-static.
# Usage: mkrootfs.sh DIR   (DIR must not exist or be empty)
set -eu
dir=${1:?usage: mkrootfs.sh DIR [DEBIAN-ARCH]}
arch=${2:-}
bb=$(command -v busybox || true)
[ -n "$bb" ] || { echo "mkrootfs.sh: busybox not found (apt-get install busybox-static)" >&2; exit 1; }
file -L "$bb" 2>/dev/null | grep -q 'statically linked' || ldd "$bb" 2>&1 | grep -q 'not a dynamic' \
  || { echo "mkrootfs.sh: $bb is not static (apt-get install busybox-static)" >&2; exit 1; }
src=$bb
if [ -n "$arch" ] && [ "$arch" != "$(dpkg --print-architecture)" ]; then
  # a foreign busybox-static from its .deb: installing busybox-static:$arch would replace
  # the host's own (the package is not co-installable); setup.sh downloads it here
  debs=${BUSYBOX_DEBS:-/var/cache/pybuild-samples}
  deb=$(ls "$debs"/busybox-static_*_"$arch".deb 2>/dev/null | head -n 1)
  [ -n "$deb" ] || { echo "mkrootfs.sh: no busybox-static $arch package in $debs (run scripts/setup.sh)" >&2; exit 1; }
  tmp=$(mktemp -d)
  trap 'rm -rf "$tmp"' EXIT
  dpkg-deb -x "$deb" "$tmp"
  src=$tmp/bin/busybox
fi
mkdir -p "$dir"
cd "$dir"
mkdir -p bin sbin usr/bin usr/sbin etc root home/user tmp proc sys dev var/tmp
chmod 1777 tmp var/tmp
chmod 700 root
cp "$src" bin/busybox
chmod 755 bin/busybox
# the applet list of the host's busybox (the same Debian version): a foreign one may not run here
for applet in $("$bb" --list-full); do
  [ "$applet" = bin/busybox ] && continue
  [ "$applet" = linuxrc ] && continue
  mkdir -p "$(dirname "$applet")"
  rel=$(echo "$(dirname "$applet")" | sed -e 's#[^/][^/]*#..#g')
  ln -sf "$rel/bin/busybox" "$applet"
done
cat > etc/passwd <<'P'
root:x:0:0:root:/root:/bin/sh
daemon:x:1:1:daemon:/usr/sbin:/bin/false
user:x:1000:1000:user:/home/user:/bin/sh
nobody:x:65534:65534:nobody:/nonexistent:/bin/false
P
cat > etc/group <<'G'
root:x:0:
daemon:x:1:
wheel:x:10:user
users:x:100:user
user:x:1000:
nogroup:x:65534:
G
chown 1000:1000 home/user
echo "pybuild-busybox" > etc/hostname
