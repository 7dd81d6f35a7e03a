"""pybuild: Dockerfile -> OCI image, and running images (see ARCHITECTURE.md)."""

VERSION = "0.1.0"
