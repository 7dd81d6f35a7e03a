"""A container's filesystem from the host: cp (both directions, - as a tar), diff,
commit (-c/-m/-a), export (-o: the harness runs no shell, so no `> web.tar`)."""

from compat_cases import Case

DOCS = "https://docs.docker.com/reference/cli/docker/container/"
SHA = r"^sha256:[0-9a-f]{64}$"

CASES = [
    Case('docker run --name c1 busybox sh -c "mkdir -p /work /var/logs && echo started > /var/logs/app.log"',
         source="CI usage"),
    # docs: `docker cp ./some_file CONTAINER:/work` (app.sh is in the work dir)
    Case("docker cp ./app.sh c1:/work", source=DOCS + "cp/"),
    # docs: `docker cp CONTAINER:/var/logs/ /tmp/app_logs` (a dir of the test's own)
    Case("docker cp c1:/var/logs/ app_logs", source=DOCS + "cp/"),
    Case("docker cp c1:/var/logs/app.log -", out=r"started", source=DOCS + "cp/"),
    Case("docker cp c1:/nonexistent .", code=1,
         err=r"Could not find the file /nonexistent in container c1", source=DOCS + "cp/"),
    Case("docker diff c1", out=r"^A /work/app\.sh$", source=DOCS + "diff/"),
    Case("docker diff c1", out=r"^C /var$", source=DOCS + "diff/"),
    Case("docker commit c1 myimg:v2", out=SHA, lines=1, source=DOCS + "commit/"),
    Case("docker run --rm myimg:v2 cat /work/app.sh", out=r"^echo app running",
         source=DOCS + "run/"),
    Case("""docker commit --change='CMD ["apachectl", "-DFOREGROUND"]' -c "EXPOSE 80" c1 svc:v2""",
         out=SHA, lines=1, source=DOCS + "commit/"),
    Case("docker inspect svc:v2", out=r'"80/tcp"', source=DOCS + "commit/"),
    Case('docker commit -m "added app" -a "Jane Doe <jane@example.com>" c1 myimg:v3', out=SHA,
         source=DOCS + "commit/"),
    Case("docker history myimg:v3", out=r"added app", source=DOCS + "commit/"),
    # docs: `docker export red_panda > latest.tar` / `docker export --output="latest.tar" red_panda`
    Case('docker export --output="latest.tar" c1', source=DOCS + "export/"),
    Case("docker export -o web.tar c1", lines=0, source=DOCS + "export/"),
    Case("docker rm c1", out=r"^c1$", source=DOCS + "rm/"),
]
