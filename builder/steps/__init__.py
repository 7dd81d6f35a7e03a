"""Step handlers of the build solver: RUN (sandbox), COPY/ADD, config-only instructions."""
