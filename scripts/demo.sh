#!/bin/sh
# The main job on a sample image: make a busybox base image, then show it.
set -eu
cd "$(dirname "$0")/.."
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
sh sample-images/busybox/mkrootfs.sh "$work/rootfs"
tar -C "$work/rootfs" -cf "$work/rootfs.tar" .
pybuild import --change 'CMD ["/bin/sh"]' "$work/rootfs.tar" busybox
pybuild images
pybuild history busybox
pybuild save busybox -o "$work/busybox.tar"
skopeo inspect "oci-archive:$work/busybox.tar:docker.io/library/busybox:latest" | head -5
pybuild fsck
