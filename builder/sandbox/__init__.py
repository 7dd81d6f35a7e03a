"""One container implementation: namespaces, an overlay or plain root, docker's
defaults for capabilities, seccomp and masked paths, cgroup limits, networking.

Two entry points, both ending in the same privilege-dropping finalize step
(finalize.py): `start(spec)` returns a new Container to wait on, kill or tear
down (`run(spec)` runs one to completion); `exec(spec, pidfd)` starts one more
process inside a running container. Nothing here knows about images.
"""

from .container import Container, run, start
from .join import Process, exec  # noqa: A004 (the sandbox's second entry point)
from .netconfig import NetworkConfig, PortMapping
from .spec import (DEFAULT_CAPS, BindMount, DeviceNode, DirRoot, ExecSpec, Limits, OverlayRoot,
                   Result, SandboxError, SandboxSpec, SecretMount, TmpfsMount, UserNamespace)

__all__ = [
    "BindMount", "Container", "DEFAULT_CAPS", "DeviceNode", "DirRoot", "ExecSpec", "Limits",
    "NetworkConfig",
    "OverlayRoot", "PortMapping", "Process", "Result", "SandboxError", "SandboxSpec",
    "SecretMount", "TmpfsMount", "UserNamespace", "exec", "run", "start",
]
