"""docker's --cidfile: the container's full id written to a file that must not exist.

Checked before the container is made (docker's message), then written whole or not at
all: the id goes to a temporary file beside it, which is hard-linked to the name, so a
reader never sees a partial id and a file made there meanwhile is not overwritten.
"""

from __future__ import annotations

import os
import secrets

from .errors import RunError


def check(path: str) -> None:
    if os.path.lexists(path):
        raise RunError(f"container ID file found, make sure the other container isn't "
                       f"running or delete {path}")


def write(path: str, cid: str) -> None:
    directory = os.path.dirname(os.path.abspath(path))
    tmp = os.path.join(directory, f".{os.path.basename(path)}.{secrets.token_hex(6)}.tmp")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                     0o644)
    except OSError as e:
        raise RunError(f"failed to create the container ID file {path}: {e.strerror}") from None
    try:
        with open(fd, "w") as f:
            f.write(cid)
            f.flush()
            os.fsync(f.fileno())
        os.link(tmp, path)
    except FileExistsError:
        raise RunError(f"container ID file found, make sure the other container isn't "
                       f"running or delete {path}") from None
    except OSError as e:
        raise RunError(f"failed to write the container ID file {path}: {e.strerror}") from None
    finally:
        try:
            os.unlink(tmp)
        except OSError:
            pass
