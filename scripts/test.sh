#!/bin/sh
# Install what the tests need, then run the whole suite (slow tests included).
set -eu
cd "$(dirname "$0")/.."
sh scripts/setup.sh
exec python3 -m pytest -q -p no:cacheprovider tests "$@"
