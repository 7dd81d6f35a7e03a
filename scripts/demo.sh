#!/bin/sh
# The main job on the sample images: make a busybox base image, build the
# samples on it with `pybuild build`, and run the results.
set -eu
cd "$(dirname "$0")/.."
export PYBUILD_ROOT="${PYBUILD_ROOT:-$(mktemp -d /tmp/pybuild-demo.XXXXXX)}"
echo "store: $PYBUILD_ROOT"
sh sample-images/busybox/make-image.sh busybox
pybuild build --progress plain -t hello sample-images/hello
echo "--- rebuild with no change (every step CACHED):"
pybuild build --progress plain -t hello sample-images/hello
pybuild build --progress plain -t multistage sample-images/multistage
pybuild build --progress plain -t cache-mount sample-images/cache-mount
pybuild images
pybuild history hello
echo "--- running the results:"
pybuild run --rm hello
pybuild run --rm multistage demo
pybuild run --rm cache-mount
pybuild fsck
