"""Remote build cache: export to and import from OCI registries and layout directories."""
