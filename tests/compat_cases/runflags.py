"""`docker run` flags that reach host resources: --add-host, --dns, --dns-search, --sysctl,
--shm-size, --group-add, --device, --pid/--uts/--ipc, --cidfile, --label-file."""

import re
import socket

from compat_cases import Case

RUN = "https://docs.docker.com/reference/cli/docker/container/run/"
RUNNING = "https://docs.docker.com/engine/containers/run/"


def setup(shell) -> None:
    (shell.work / "labels").write_text("# docker's label-file format\n"
                                       "com.example.label1=a label\ncom.example.label2=two\n")


CASES = [
    Case("docker run --rm --add-host=docker:93.184.216.34 busybox cat /etc/hosts",
         out=r"^93\.184\.216\.34\s+docker$", source=RUN + "#add-host"),
    Case("docker run --rm --add-host=host.docker.internal:host-gateway busybox cat /etc/hosts",
         out=r"^\d+\.\d+\.\d+\.\d+\s+host\.docker\.internal$", source=RUN + "#add-host"),
    Case("docker run --rm --dns=10.0.0.1 busybox cat /etc/resolv.conf",
         out=r"^nameserver 10\.0\.0\.1$", source=RUNNING + "#network-settings"),
    Case("docker run --rm --sysctl net.ipv4.ip_forward=1 busybox sysctl net.ipv4.ip_forward",
         out=r"^net\.ipv4\.ip_forward = 1$", source=RUN + "#sysctl"),
    Case("docker run --rm --sysctl vm.swappiness=10 busybox true", code=125,
         err=r"not in a separate kernel namespace", source=RUN + "#sysctl"),
    Case("docker run --rm --shm-size=128m busybox df -h /dev/shm",
         out=r"^shm\s+128\.0M\s", source=RUN + "#shm-size"),
    Case("docker run --rm --group-add 29 busybox id", out=r"groups=.*\b29\b",
         source=RUN + "#group-add"),
    Case("docker run --rm --device=/dev/zero:/dev/xvdc busybox ls -l /dev/xvdc",
         out=r"^crw.*\b1,\s+5\b.*/dev/xvdc$", source=RUN + "#device"),
    Case("docker run --rm --pid=host busybox ps", out=r"^\s*PID\s+USER", source=RUN + "#pid"),
    Case("docker run --rm --uts=host busybox hostname",
         out="^" + re.escape(socket.gethostname()) + "$", source=RUN + "#uts"),
    Case('docker run --cidfile docker_test.cid --rm busybox echo "test"', out=r"^test$",
         source=RUN + "#cidfile"),
    Case('docker run --cidfile docker_test.cid --rm busybox echo "test"', code=125,
         err=r"ID file found", source=RUN + "#cidfile"),
    Case("docker run --label-file ./labels --name labelled busybox true", source=RUN + "#label"),
    Case("docker inspect labelled", out=r'"com\.example\.label1": "a label"',
         source=RUN + "#label"),
    Case("docker rm labelled", out=r"^labelled$", source=RUN + "#label"),
]
