"""--format / -f with Go templates: docker's formatting docs and each command's --format."""

from compat_cases import Case

DOCS = "https://docs.docker.com/reference/cli/docker/"
FORMATTING = "https://docs.docker.com/engine/cli/formatting/"


def setup(shell) -> None:
    for line in ("docker build -t fmtapp:1.0 .", "docker volume create myvol"):
        p = shell(line)
        assert p.returncode == 0, p.stderr


CASES = [
    Case('docker images --format "{{.ID}}: {{.Repository}}"', out=r"^[0-9a-f]{12}: fmtapp$",
         source=DOCS + "image/ls/#format"),
    Case(r'docker images --format "table {{.ID}}\t{{.Repository}}\t{{.Tag}}"',
         out=r"^IMAGE ID       REPOSITORY   TAG\n[0-9a-f]{12}   fmtapp       1\.0\n", lines=3,
         source=DOCS + "image/ls/#format"),
    Case("docker images --format json", out=r'^\{.*"Repository": ?"fmtapp".*\}$', lines=2,
         source=DOCS + "image/ls/#format"),
    Case("docker inspect --format='{{.Config.Cmd}}' fmtapp:1.0", out=r"^\[sh /app/app.sh\]$",
         lines=1, source=DOCS + "inspect/"),
    Case("docker inspect --format='{{json .Config.ExposedPorts}}' fmtapp:1.0",
         out=r'^\{"8080/tcp":\{\}\}$', source=DOCS + "inspect/"),
    Case("docker run --name container fmtapp:1.0", out=r"^app running in test mode$",
         source=DOCS + "container/run/"),
    Case("docker inspect --format='{{.Config.Image}}' container", out=r"^fmtapp:1.0$",
         source=DOCS + "inspect/#get-an-instances-image-name"),
    Case('docker inspect --format "{{upper .Name}}" container', out=r"^/CONTAINER$",
         source=FORMATTING),
    Case('docker inspect --format "{{split .Image \\":\\"}}" container',
         out=r"^\[sha256 [0-9a-f]{64}\]$", source=FORMATTING),
    Case("docker inspect --format '{{json .State.Status}}' container", out=r'^"exited"$',
         source=FORMATTING),
    Case('docker ps -a --format "{{.ID}}: {{.Command}}"', out=r'^[0-9a-f]{12}: "sh /app/app.sh"$',
         lines=1, source=DOCS + "container/ls/#format"),
    Case(r'docker ps -a --format "table {{.Names}}\t{{.Status}}"',
         out=r"^NAMES       STATUS\ncontainer   Exited \(0\) .* ago$",
         source=DOCS + "container/ls/#format"),
    Case('docker history --format "{{.ID}}: {{.CreatedSince}}" busybox',
         out=r"^[0-9a-f]{12}: .* ago$", lines=1, source=DOCS + "image/history/#format"),
    Case('docker volume ls --format "{{.Name}}: {{.Driver}}"', out=r"^myvol: local$", lines=1,
         source=DOCS + "volume/ls/#format"),
    Case("docker volume inspect --format '{{ .Mountpoint }}' myvol",
         out=r"^/\S+/volumes/myvol/_data$", source=DOCS + "volume/inspect/"),
    Case("docker inspect --format '{{.Nope}}' busybox", code=1,
         err=r'template parsing error: template: :1:2: executing "" at <\.Nope>: '
             r'map has no entry for key "Nope"$', source="docker's error for a wrong field"),
]
