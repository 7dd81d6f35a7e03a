"""One container implementation: namespaces, an overlay or plain root, docker's
defaults for capabilities, seccomp and masked paths, cgroup limits, networking.

`run(spec)` runs a command to completion; `start(spec)` returns a Container
to wait on, kill or tear down. Nothing here knows about images.
"""

from .container import Container, run, start
from .netconfig import NetworkConfig, PortMapping
from .spec import (DEFAULT_CAPS, BindMount, DirRoot, Limits, OverlayRoot, Result, SandboxError,
                   SandboxSpec, TmpfsMount, UserNamespace)

__all__ = [
    "BindMount", "Container", "DEFAULT_CAPS", "DirRoot", "Limits", "NetworkConfig", "OverlayRoot",
    "PortMapping", "Result", "SandboxError", "SandboxSpec", "TmpfsMount", "UserNamespace",
    "run", "start",
]
