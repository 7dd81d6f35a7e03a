#!/bin/sh
# Install everything pybuild and its tests need on Debian 12 (run as root).
set -eu
cd "$(dirname "$0")/.."
PKGS="busybox-static skopeo umoci runc buildah docker-registry zstd xz-utils bzip2 gzip tar \
      debootstrap iproute2 iptables openssl apache2-utils uidmap libseccomp2 file \
      python3 python3-pip python3-venv git gcc libc6-dev qemu-user-static \
      slirp4netns fuse-overlayfs"
missing=""
for p in $PKGS; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing="$missing $p"
done
if [ -n "$missing" ]; then
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -q
  apt-get install -y -q --no-install-recommends $missing
fi
# foreign-architecture test bases: busybox-static for arm64 as a .deb (installing it would
# replace the host's busybox; sample-images/busybox/mkrootfs.sh DIR arm64 unpacks it)
if ! ls /var/cache/pybuild-samples/busybox-static_*_arm64.deb >/dev/null 2>&1; then
  dpkg --print-foreign-architectures | grep -qx arm64 || { dpkg --add-architecture arm64; apt-get update -q; }
  mkdir -p /var/cache/pybuild-samples
  (cd /var/cache/pybuild-samples && apt-get download -q busybox-static:arm64) \
    || { apt-get update -q; (cd /var/cache/pybuild-samples && apt-get download -q busybox-static:arm64); }
fi
# rootless pybuild: slirp4netns opens /dev/net/tun as the user. Debian's udev makes it
# 0666; machines without udev (this VM, many CI containers) leave it 0600 root.
for dev in /dev/net/tun /dev/fuse; do   # and fuse-overlayfs (rootless fallback) /dev/fuse
  if [ -c "$dev" ] && [ "$(stat -c %a "$dev")" != 666 ]; then chmod 0666 "$dev"; fi
done
# --break-system-packages: Debian's own python3 is "externally managed".
# editable_mode=compat: a plain path entry; the default import-hook finder costs
# ~15 ms at every start of the pybuild command.
python3 -m pip install -q --disable-pip-version-check --root-user-action=ignore \
  --break-system-packages --config-settings editable_mode=compat -e '.[test]'
