"""The last commands and flags of issue 13's list: system df, prune filters, attach,
run/build --platform, build --add-host/--shm-size."""

from compat_cases import Case

DOCS = "https://docs.docker.com/reference/cli/docker/"

CASES = [
    Case("docker system df", out=r"^TYPE\s+TOTAL\s+ACTIVE\s+SIZE\s+RECLAIMABLE\n"
         r"Images\s+1\s+0\s+", source=DOCS + "system/df/"),
    Case("docker system df --format '{{.Type}}: {{.TotalCount}}'", out=r"^Images: 1$",
         source=DOCS + "system/df/"),
    Case("docker build --add-host=docker:10.180.0.1 --shm-size=128m -t hosts .",
         source=DOCS + "buildx/build/#add-host"),
    Case("docker run --rm --platform linux/amd64 busybox uname -m", out=r"^x86_64$",
         source=DOCS + "container/run/#platform"),
    Case("docker build --platform linux/amd64 -t plat .", source=DOCS + "buildx/build/#platform"),
    Case("docker build --platform linux/amd64,linux/arm64 -t plat .", code=1,
         err=r"does not match the specified platform: wanted linux/arm64, actual: linux/amd64",
         source=DOCS + "buildx/build/#platform"),
    Case("docker run -d --name att busybox sh -c 'sleep 1; echo attached-out'",
         out=r"^[0-9a-f]{64}$", source=DOCS + "container/attach/"),
    Case("docker attach att", out=r"^attached-out$", source=DOCS + "container/attach/"),
    Case("docker image prune -a --force --filter \"until=240h\"",
         out=r"^Total reclaimed space: ", source=DOCS + "image/prune/#filter"),
    Case("docker image prune --force --filter \"label!=keep\"",
         out=r"^Total reclaimed space: ", source=DOCS + "image/prune/#filter"),
    Case("docker image prune --filter \"nope=1\"", code=1, err=r"invalid filter 'nope",
         source=DOCS + "image/prune/#filter"),
    Case("docker system prune --force --filter \"label=gone\"",
         out=r"^Total reclaimed space: ", source=DOCS + "system/prune/#filter"),
]
