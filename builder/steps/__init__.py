"""The ops of the build solver, one per step kind (base.py: the op shape and what the
solver gives an op; ops.py: which op runs an instruction): config-only instructions
(meta.py), WORKDIR (workdir.py), COPY/ADD (copyop.py over copy.py and download.py),
RUN (run.py over mounts.py and the sandbox)."""
