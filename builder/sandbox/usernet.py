"""Container networking for rootless mode: the `private` mode through slirp4netns.

In rootless mode we are root only in a user namespace that does not own the host's network
namespace, so there is no veth, bridge or iptables to be had (network.py).  Instead a
user-mode TCP/IP stack, slirp4netns, sits in our network namespace and feeds a tap device
`eth0` in the container's: the container's packets become ordinary socket calls of an
unprivileged process on the host side, and published ports are sockets it listens on.

slirp4netns rather than pasta (both Debian packages, both installed here): its API socket
publishes a port on the address asked (add_hostfwd), it is tied to us by an exit fd rather
than by watching the namespace, it confines itself (--enable-sandbox: own mount namespace,
capabilities dropped; --enable-seccomp), and its layout is the one rootless docker and
podman give containers (10.0.2.100/24, gateway 10.0.2.2, DNS 10.0.2.3).  Debian 12's pasta
(2023-03) copies the host's addresses into the container, maps the gateway to the host's
loopback unless told not to and forks into the background: a second backend with other
rules for little gain, so there is no pasta fallback.

* The host's loopback is not reachable from the container (--disable-host-loopback):
  10.0.2.2 would otherwise be the host's 127.0.0.1, where services trust their callers.
* The MTU is 65520 (as rootless docker and podman): slirp terminates TCP itself, so large
  frames only save per-packet work in the user-mode stack.
* The helper dies with the container: its exit fd is the read end of a pipe whose only
  write end is held by the attaching process, which closes it at teardown; if that process
  dies (SIGKILL too) the kernel closes it.  The sandbox's monitor is forked before attach,
  so it never holds it.  Its log, pid record and API socket live in `<state dir>/usernet`,
  and an instance that never attached (the monitor's cleanup after its caller died) finds
  the helper through the pid record (pid and start time) and removes the directory.
"""

from __future__ import annotations

import errno
import json
import os
import select
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

from builder.procinfo import start_time
from layerstore.resolver import remove_tree

from .netconfig import NetworkConfig, NetworkError, PortMapping

SUBNET = "10.0.2.0/24"
GATEWAY = "10.0.2.2"
NAMESERVER = "10.0.2.3"
GUEST_IP = "10.0.2.100"
MTU = 65520
DIR_NAME = "usernet"
READY_TIMEOUT = 10.0
API_TIMEOUT = 5.0
MAX_REPLY = 64 << 10
MAX_LOG = 4096
TUN = "/dev/net/tun"


class UserNetwork:
    """One container's user-mode network: attach it once, tear it down once (or more)."""

    nameserver: str | None = NAMESERVER   # what the container's resolv.conf names

    def __init__(self, config: NetworkConfig, container_id: str, state_dir: Path) -> None:
        config.validate()
        if config.mode != "private":
            raise NetworkError(f"UserNetwork needs network mode private, not {config.mode}")
        self.config = config
        self.container_id = container_id
        self.dir = Path(state_dir) / DIR_NAME
        self.ip: str | None = None
        self._proc: subprocess.Popen | None = None
        self._lifeline = -1
        self._attached = False
        self._closed = False

    # -- attach ------------------------------------------------------------------

    def attach(self, pid: int) -> str:
        """Give the network namespace of `pid` an eth0 through slirp4netns; returns its IP.
        A failed attach leaves nothing behind and closes this instance."""
        if self._attached or self._closed:
            raise NetworkError(f"container {self.container_id}: network already "
                               f"{'attached' if self._attached else 'torn down'}")
        try:
            self._claim_dir()
        except BaseException:
            self._closed = True   # never remove what another instance made
            raise
        self._attached = True
        try:
            self._attach(pid)
        except BaseException:
            self.teardown()
            raise
        self.ip = GUEST_IP
        return GUEST_IP

    def _attach(self, pid: int) -> None:
        tool = shutil.which("slirp4netns")
        if tool is None:
            raise NetworkError("the rootless network needs slirp4netns "
                               "(apt-get install slirp4netns)")
        if not os.access(TUN, os.R_OK | os.W_OK):
            # slirp4netns opens it from our mount namespace; udev makes it 0666 on Debian
            # (systemd's 50-udev-default.rules), a system without udev may leave it 0600
            raise NetworkError(f"the rootless network needs read-write access to {TUN} "
                               f"(as root: chmod 0666 {TUN}, as udev sets it)")
        ns_fd = self._own_namespace(pid)
        fds: list[int] = [ns_fd]
        try:
            exit_r, self._lifeline = os.pipe2(os.O_CLOEXEC)
            ready_r, ready_w = os.pipe2(os.O_CLOEXEC)
            fds += [exit_r, ready_r, ready_w]
            argv = [tool, "--configure", f"--mtu={MTU}", "--disable-host-loopback",
                    "--enable-sandbox", "--enable-seccomp",
                    f"--exit-fd={exit_r}", f"--ready-fd={ready_w}"]
            if self.config.ports:
                # relative to its cwd: a socket path must fit in 108 bytes, the store's may not
                argv.append("--api-socket=api.sock")
            # the fd pins the namespace checked above: a pid reused meanwhile changes nothing
            argv += ["--netns-type=path", f"/proc/self/fd/{ns_fd}", "eth0"]
            log = os.open(self.dir / "slirp4netns.log",
                          os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
            try:
                self._proc = subprocess.Popen(
                    argv, pass_fds=(exit_r, ready_w, ns_fd), cwd=self.dir,
                    stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=log,
                    start_new_session=True)   # the terminal's Ctrl-C is for the container
            finally:
                os.close(log)
            with open(self.dir / "helper.tmp", "w") as fh:
                fh.write(f"{self._proc.pid} {start_time(self._proc.pid)}\n")
            os.rename(self.dir / "helper.tmp", self.dir / "helper")
            os.close(ready_w)
            fds.remove(ready_w)
            self._wait_ready(ready_r)
            self._publish()
        finally:
            for fd in fds:
                os.close(fd)

    def _claim_dir(self) -> None:
        """Make the helper's directory; one left by a helper that is gone (its caller and
        monitor both killed) is removed first, one of a live helper refuses the attach."""
        try:
            self.dir.mkdir(mode=0o700)
            return
        except FileExistsError:
            pass
        if self._recorded_helper() is not None:
            raise NetworkError(f"container {self.container_id}: a user-mode network of that "
                               f"container is already attached ({self.dir})")
        remove_tree(self.dir)
        self.dir.mkdir(mode=0o700)

    def _own_namespace(self, pid: int) -> int:
        """An fd of `pid`'s network namespace, which must not be ours."""
        try:
            ns_fd = os.open(f"/proc/{pid}/ns/net", os.O_RDONLY | os.O_CLOEXEC)
        except OSError as exc:
            raise NetworkError(f"container {self.container_id}: process {pid}: "
                               f"{exc.strerror}") from None
        theirs, ours = os.fstat(ns_fd), os.stat("/proc/thread-self/ns/net")
        if (theirs.st_dev, theirs.st_ino) == (ours.st_dev, ours.st_ino):
            os.close(ns_fd)
            raise NetworkError(f"container {self.container_id}: process {pid} shares our "
                               "network namespace; refusing to give it a user-mode network")
        return ns_fd

    def _wait_ready(self, ready_r: int) -> None:
        """slirp4netns writes to the ready fd once eth0 is configured; EOF means it died."""
        deadline = time.monotonic() + READY_TIMEOUT
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise NetworkError(f"container {self.container_id}: slirp4netns was not ready "
                                   f"after {READY_TIMEOUT:g}s{self._log_tail()}")
            try:
                readable, _, _ = select.select([ready_r], [], [], left)
            except InterruptedError:
                continue
            if readable:
                if os.read(ready_r, 16):
                    return
                raise NetworkError(f"container {self.container_id}: slirp4netns failed"
                                   f"{self._log_tail()}")

    def _log_tail(self) -> str:
        try:
            with open(self.dir / "slirp4netns.log", "rb") as fh:
                fh.seek(0, os.SEEK_END)
                fh.seek(max(0, fh.tell() - MAX_LOG))
                lines = fh.read(MAX_LOG).decode(errors="replace").strip().splitlines()
        except OSError:
            return ""
        lines = [ln.strip() for ln in lines if ln.strip() and "experimental" not in ln]
        return f": {'; '.join(lines[-3:])}" if lines else ""

    # -- ports -------------------------------------------------------------------

    def _publish(self) -> None:
        """Publish each port through slirp4netns's API; the bind check first gives docker's
        "already in use" error, which the API's own ("add_hostfwd failed") does not."""
        if not self.config.ports:
            return
        from .network import PrivateNetwork

        held = PrivateNetwork._reserve_ports(self.config.ports)
        try:
            for port, sock in zip(self.config.ports, held):
                sock.close()   # slirp4netns binds it next (SO_REUSEADDR; nothing listened)
                self._add_hostfwd(port)
        finally:
            for sock in held:
                sock.close()

    def _add_hostfwd(self, port: PortMapping) -> None:
        request = {"execute": "add_hostfwd",
                   "arguments": {"proto": port.proto, "host_addr": port.host_ip,
                                 "host_port": port.host_port, "guest_addr": GUEST_IP,
                                 "guest_port": port.container_port}}
        reply = self._api(request)
        if not isinstance(reply, dict) or "return" not in reply:
            desc = reply.get("error", {}).get("desc") if isinstance(reply, dict) else None
            raise NetworkError(f"host port {port.host_ip}:{port.host_port}/{port.proto} "
                               f"(published as {port}) cannot be published: "
                               f"{str(desc or reply)[:200]}")

    def _api(self, request: dict) -> object:
        """One request on the API socket, reached through a directory fd (short path)."""
        dfd = os.open(self.dir, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
                sock.settimeout(API_TIMEOUT)
                sock.connect(f"/proc/self/fd/{dfd}/api.sock")
                sock.sendall(json.dumps(request).encode())
                sock.shutdown(socket.SHUT_WR)
                data = b""
                while len(data) <= MAX_REPLY:
                    chunk = sock.recv(MAX_REPLY)
                    if not chunk:
                        break
                    data += chunk
                    try:
                        return json.loads(data)
                    except ValueError:
                        continue
        except OSError as exc:
            raise NetworkError(f"container {self.container_id}: slirp4netns API: "
                               f"{exc.strerror or exc}") from None
        finally:
            os.close(dfd)
        raise NetworkError(f"container {self.container_id}: slirp4netns API: "
                           f"no valid reply ({len(data)} bytes)")

    # -- teardown ----------------------------------------------------------------

    def teardown(self) -> None:
        """Stop the helper and remove its directory. An instance that never attached (a
        monitor cleaning up after its killed caller) stops the helper the pid record names."""
        if self._closed and not self._attached:
            return
        self._closed = True
        if self._lifeline >= 0:
            os.close(self._lifeline)
            self._lifeline = -1
        proc, self._proc = self._proc, None
        if proc is not None:
            proc.kill()   # nothing of its own to clean up; its exit fd would take a poll tick
            proc.wait()
        else:
            self._kill_recorded()
        self._attached = False
        self.ip = None
        try:
            remove_tree(self.dir)
        except OSError as exc:
            if exc.errno != errno.ENOENT:
                raise NetworkError(f"container {self.container_id}: {self.dir}: "
                                   f"{exc.strerror}") from None

    def _recorded_helper(self) -> int | None:
        """A pidfd of the helper the pid record names, None when that process is gone."""
        try:
            with open(self.dir / "helper", "rb") as fh:
                words = fh.read(64).decode(errors="replace").split()
        except OSError:
            return None
        if len(words) != 2 or not words[0].isdigit():
            return None
        pid = int(words[0])
        try:
            pidfd = os.pidfd_open(pid)
        except OSError:
            return None
        # checked after the pidfd is held: the pid cannot be reused under it any more
        if start_time(pid) != words[1]:
            os.close(pidfd)
            return None
        return pidfd

    def _kill_recorded(self) -> None:
        pidfd = self._recorded_helper()
        if pidfd is None:
            return
        try:
            signal.pidfd_send_signal(pidfd, signal.SIGKILL)
        except ProcessLookupError:
            pass
        finally:
            os.close(pidfd)
