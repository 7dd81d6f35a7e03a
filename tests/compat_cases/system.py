"""Management groups and whole-system commands: image/container/builder words, system
prune/info, info, version."""

from compat_cases import Case

DOCS = "https://docs.docker.com/reference/cli/docker/"

CASES = [
    Case("docker image ls", out=r"^REPOSITORY\s+TAG\s+IMAGE ID\s+CREATED\s+SIZE\n"
         r"busybox\s+latest\s+[0-9a-f]{12}\s", source=DOCS + "image/ls/"),
    Case("docker image build -t sysapp .", source=DOCS + "image/build/"),
    Case("docker image inspect sysapp", out=r'"RepoTags": \[\s*"sysapp:latest"',
         source=DOCS + "image/inspect/"),
    Case("docker image history sysapp", out=r"^IMAGE\s+CREATED\s+CREATED BY\s+SIZE\s+COMMENT$",
         source=DOCS + "image/history/"),
    Case("docker image tag sysapp sysapp:v1", source=DOCS + "image/tag/"),
    Case("docker image rm sysapp:v1", out=r"^Untagged: sysapp:v1$", source=DOCS + "image/rm/"),
    Case("docker container run --name sys1 busybox true", source=DOCS + "container/run/"),
    Case("docker container ls -a", out=r"^CONTAINER ID\s+IMAGE\s+COMMAND\s+CREATED\s+STATUS\s+"
         r"PORTS\s+NAMES\n[0-9a-f]{12}\s+busybox\s.*Exited \(0\).*\ssys1$",
         source=DOCS + "container/ls/"),
    Case("docker container rm sys1", out=r"^sys1$", source=DOCS + "container/rm/"),
    Case("docker image prune -f", out=r"^Total reclaimed space: \d+(\.\d+)?[kMG]?B$",
         source=DOCS + "image/prune/"),
    Case("docker builder prune -f", out=r"^Total reclaimed space: ", source=DOCS + "builder/prune/"),
    Case("docker system prune -f", out=r"^Total reclaimed space: ", source=DOCS + "system/prune/"),
    Case("docker system prune -a --volumes -f", out=r"^untagged: sysapp:latest$",
         source=DOCS + "system/prune/"),
    Case("docker info", out=r"^Server:\n Containers: 0\n  Running: 0\n  Paused: 0\n  Stopped: 0\n"
         r" Images: 0\n", source=DOCS + "system/info/"),
    Case("docker system info --format '{{json .}}'", out=r'^\{"ID": .*"DockerRootDir": "/',
         source=DOCS + "system/info/"),
    Case("docker version", out=r"^Client:\n Version:\s+\d+\.\d+\.\d+\n",
         source=DOCS + "version/"),
    Case("docker version --format '{{json .}}'", out=r'^\{"Client": \{"Version": "\d',
         source=DOCS + "version/"),
    Case("docker version --format '{{.Server.Version}}'", out=r"^\d+\.\d+\.\d+$", lines=1,
         source=DOCS + "version/"),
    Case("docker info --format '{{.OSType}}/{{.Architecture}}'", out=r"^linux/x86_64$",
         source=DOCS + "system/info/"),
]
