"""Listing: images/ps/volume ls filters and flags, rm going on past a missing name, prunes
reporting what they freed."""

from compat_cases import Case

DOCS = "https://docs.docker.com/reference/cli/docker/"
IMAGES = DOCS + "image/ls/"
PS = DOCS + "container/ls/"
VOLUMES = DOCS + "volume/ls/"
HEADER = r"^REPOSITORY\s+TAG\s+IMAGE ID\s+CREATED\s+SIZE$"

CASES = [
    Case("docker build -t myapp:1.0 .", source=DOCS + "buildx/build/"),
    Case("docker images myapp", out=r"^myapp\s+1\.0\s+[0-9a-f]{12}\s+.*\s\d[\d.]*[kMG]?B$",
         lines=2, source=IMAGES),
    Case('docker images --filter "dangling=true"', out=HEADER, lines=1, source=IMAGES),
    Case("docker images -q -f dangling=true", lines=0, source="CI usage"),
    Case("docker images --filter=reference='busy*:*libc'", out=HEADER, lines=1, source=IMAGES),
    Case('docker images --filter "before=myapp:1.0"', out=r"^busybox\s+latest\s", lines=2,
         source=IMAGES),
    Case('docker images --filter "label=com.example.version"', out=HEADER, lines=1,
         source=IMAGES),
    Case("docker images --digests",
         out=r"^REPOSITORY\s+TAG\s+DIGEST\s+IMAGE ID\s+CREATED\s+SIZE\n.*sha256:[0-9a-f]{64}",
         source=IMAGES),
    Case("docker images --filter foo=bar", code=1, err=r"invalid filter 'foo'", source=IMAGES),
    Case("docker run --name exited0 busybox true", source=DOCS + "container/run/"),
    Case("docker ps -a --filter 'exited=0'", out=r"\sexited0$", lines=2, source=PS),
    Case("docker ps -aq", out=r"^[0-9a-f]{12}$", lines=1, source=PS),
    Case("docker ps --filter status=running", lines=1, source=PS),
    Case("docker ps -a --filter 'name=exited0' -s", out=r"\sNAMES\s+SIZE\n.*exited0\s+0B "
         r"\(virtual [\d.]+[kM]B\)$", source=PS),
    Case("docker ps -l -q", out=r"^[0-9a-f]{12}$", lines=1, source=PS),
    Case("docker rm exited0 nosuch", out=r"^exited0$", code=1, err=r"no such container: nosuch",
         source=DOCS + "container/rm/"),
    Case("docker volume create my-vol", out=r"^my-vol$", source=DOCS + "volume/create/"),
    Case("docker volume ls -f dangling=true", out=r"^local\s+my-vol$", lines=2, source=VOLUMES),
    Case("docker volume prune --all --force", out=r"Total reclaimed space: \d",
         source=DOCS + "volume/prune/"),
    Case("docker container prune -f", out=r"^Total reclaimed space: \d",
         source=DOCS + "container/prune/"),
]
