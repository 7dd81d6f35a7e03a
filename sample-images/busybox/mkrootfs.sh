#!/bin/sh
# Make a small busybox root filesystem from the host's busybox-static.
# Usage: mkrootfs.sh DIR   (DIR must not exist or be empty)
set -eu
dir=${1:?usage: mkrootfs.sh DIR}
bb=$(command -v busybox || true)
[ -n "$bb" ] || { echo "mkrootfs.sh: busybox not found (apt-get install busybox-static)" >&2; exit 1; }
file -L "$bb" 2>/dev/null | grep -q 'statically linked' || ldd "$bb" 2>&1 | grep -q 'not a dynamic' \
  || { echo "mkrootfs.sh: $bb is not static (apt-get install busybox-static)" >&2; exit 1; }
mkdir -p "$dir"
cd "$dir"
mkdir -p bin sbin usr/bin usr/sbin etc root home/user tmp proc sys dev var/tmp
chmod 1777 tmp var/tmp
chmod 700 root
cp "$bb" bin/busybox
chmod 755 bin/busybox
for applet in $(./bin/busybox --list-full); do
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
