#!/bin/sh
echo "$GREETING ($(cat /opt/hello/build-info), running as $(id -un))"
