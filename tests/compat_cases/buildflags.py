"""BuildKit's `docker build` flags: --call/--check, --ulimit, --no-cache-filter."""

from compat_cases import Case

BUILD = "https://docs.docker.com/reference/cli/docker/buildx/build/"
CHECKS = "https://docs.docker.com/build/checks/"

DOCKERFILE = """\
# syntax=docker/dockerfile:1

# VERSION sets the version of the app
ARG VERSION=1.0
# build builds the app
FROM busybox AS build
ARG VERSION
RUN echo "app $VERSION" > /app.txt

# release is the image that ships
FROM busybox AS release
COPY --from=build /app.txt /app.txt
RUN ulimit -n > /nofile
CMD ["cat", "/app.txt"]
"""


def setup(shell) -> None:
    (shell.work / "Dockerfile").write_text(DOCKERFILE)


CASES = [
    Case("docker build --check .", out=r"^Check complete, no warnings found\.$", source=CHECKS),
    Case("docker build --call=check .", out=r"^Check complete, no warnings found\.$",
         source=BUILD + "#call"),
    Case("docker build --call targets .",
         out=r"^TARGET\s+DESCRIPTION\nbuild\s+builds the app\nrelease \(default\)\s+is the image "
             r"that ships$", lines=3, source=BUILD + "#call-targets"),
    Case("docker build -q --call=outline .",
         out=r"^TARGET:\s+release\nDESCRIPTION:\s+is the image that ships\n\n"
             r"BUILD ARG\s+VALUE\s+DESCRIPTION\nVERSION\s+1\.0\b", source=BUILD + "#call-outline"),
    Case("docker build --call outline --target build .", out=r"^TARGET:\s+build$",
         source=BUILD + "#call-outline"),
    Case("docker build --call=targets,format=json .", out=r'"default": true',
         source=BUILD + "#call"),
    Case("docker build --ulimit nofile=1024:1024 -t x .", source=BUILD + "#ulimit"),
    Case("docker run --rm x cat /nofile", out=r"^1024$", lines=1, source=BUILD + "#ulimit"),
    Case("docker build --progress=plain .", source="CI usage"),
    Case("docker build --progress=plain .", err=r"#\d+ CACHED", source="CI usage"),
    Case("docker build --progress=plain --no-cache-filter build .",
         err=r"#(\d+) \[build 3/3\] RUN echo .*\n(?:.*\n)*?#\1 DONE", source=BUILD + "#no-cache-filter"),
    Case("docker build --call=check,format=json .", out=r'^\{\n  "warnings": \[\]', source=BUILD + "#call"),
]
