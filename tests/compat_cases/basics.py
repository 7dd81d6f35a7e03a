"""Lines every docker user types on day one: build, images, run, ps, rm, rmi."""

from compat_cases import Case

DOCS = "https://docs.docker.com/reference/cli/docker/"

CASES = [
    Case("docker build -t myapp:1.0 .", source=DOCS + "buildx/build/"),
    Case("docker images", out=r"^REPOSITORY\s+TAG\s+IMAGE ID\s+CREATED\s+SIZE$",
         source=DOCS + "image/ls/"),
    Case("docker run --rm myapp:1.0", out=r"^app running in test mode$",
         source=DOCS + "container/run/"),
    Case("docker run --rm busybox echo hello", out=r"^hello$", source=DOCS + "container/run/"),
    Case("docker tag myapp:1.0 myapp:latest", source=DOCS + "image/tag/"),
    Case("docker rmi myapp:latest", out=r"^Untagged: myapp:latest$", source=DOCS + "image/rm/"),
]
