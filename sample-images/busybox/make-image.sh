#!/bin/sh
# Make the `busybox` base image in the store from the host's busybox-static.
# Usage: make-image.sh [NAME]   (default NAME: busybox; pybuild's --root/PYBUILD_ROOT apply)
set -eu
here=$(cd "$(dirname "$0")" && pwd)
name=${1:-busybox}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
sh "$here/mkrootfs.sh" "$work/rootfs"
tar -C "$work/rootfs" --numeric-owner -cf "$work/rootfs.tar" .
cp "$here/Dockerfile" "$work/Dockerfile"
pybuild build --progress quiet -t "$name" "$work" >/dev/null
echo "$name"
