"""Build failure output (BuildKit's frame, `>>>` excerpt, `ERROR: failed to solve`), the
plain progress labels, and `history` as docker's table shows it (a heredoc RUN on one
line, a WORKDIR that made a layer without `#(nop)`)."""

from compat_cases import Case

DOCS = "https://docs.docker.com/reference/cli/docker/"
BUILD = DOCS + "buildx/build/"
HISTORY = DOCS + "image/history/"

FAILING = """\
FROM busybox
RUN echo preparing
RUN echo compiling; echo 'error: missing ;' >&2; false
RUN echo never
"""

HEREDOC = """\
FROM busybox
RUN <<EOF
echo hello > /greeting
echo world >> /greeting
EOF
"""


def setup(shell) -> None:
    (shell.work / "Dockerfile.fail").write_text(FAILING)
    (shell.work / "Dockerfile.heredoc").write_text(HEREDOC)


CASES = [
    # the failing step's framed log, the Dockerfile excerpt, then BuildKit's error line
    Case("docker build --progress=plain -f Dockerfile.fail -t fail .", code=1,
         err=r"^------\n > \[3/4\] RUN echo compiling; echo 'error: missing ;' >&2; false:\n"
             r"\d+\.\d+ compiling\n\d+\.\d+ error: missing ;\n------\nDockerfile.fail:3\n-{20}\n"
             r"   1 \|     FROM busybox\n   2 \|     RUN echo preparing\n"
             r"   3 \| >>> RUN echo compiling.*\n   4 \|     RUN echo never\n",
         source=BUILD + "#progress"),
    Case("docker build --progress=plain -f Dockerfile.fail .", code=1,
         err=r"\nERROR: failed to solve: process \"/bin/sh -c echo compiling; echo 'error: "
             r"missing ;' >&2; false\" did not complete successfully: exit code: 1\n\Z",
         source="CI usage"),
    Case("docker build -q -f Dockerfile.fail .", code=1,
         err=r"^ERROR: failed to solve: process .* exit code: 1$", source=BUILD + "#quiet"),
    Case("docker inspect fail", code=1, source=DOCS + "inspect/"),
    # a single-stage build's steps read [1/8], not [stage-0 1/8]
    Case("docker build --progress=plain -t myimg .",
         err=r"^#1 \[1/8\] FROM busybox\n(.|\n)*^#\d+ \[3/8\] RUN echo hello > /hello$",
         source=BUILD + "#progress"),
    Case("docker history myimg", out=r"^IMAGE\s+CREATED\s+CREATED BY\s+SIZE\s+COMMENT$",
         source=HISTORY),
    Case("docker history --no-trunc myimg", out=r"^<missing>\s+.*\s+WORKDIR /app\s+\d",
         source=HISTORY),
    Case("docker history --human=false myimg", out=r"^<missing>\s+\d{4}-\d\d-\d\dT\S+\s+.*\s+\d+\s*$",
         source=HISTORY),
    Case("docker build -t greeting -f Dockerfile.heredoc .", source=BUILD + "#file"),
    Case("docker history --no-trunc greeting",
         out=r"^sha256:[0-9a-f]{64}\s+.*echo hello > /greeting\\necho world >> /greeting\\n",
         source=HISTORY),
]
