"""The container lifecycle beyond run: create/start, top, port, stats, pause/unpause,
rename, restart, stop -t, logs -t, kill, start -a -i."""

from compat_cases import Case

DOCS = "https://docs.docker.com/reference/cli/docker/container/"
STATS_HEAD = r"^CONTAINER ID\s+NAME\s+CPU %\s+MEM USAGE / LIMIT\s+MEM %\s+NET I/O\s+BLOCK I/O\s+PIDS$"

CASES = [
    Case("docker create --name web -p 18480:80 busybox sleep 300", out=r"^[0-9a-f]{64}$",
         lines=1, source=DOCS + "create/"),
    Case("docker start web", out=r"^web$", lines=1, source=DOCS + "start/"),
    Case("docker top web", out=r"^UID\s+PID\s+PPID\s+C\s+STIME\s+TTY\s+TIME\s+CMD\n.*sleep 300$",
         lines=2, source=DOCS + "top/"),
    Case("docker port web", out=r"^80/tcp -> 0\.0\.0\.0:18480$", lines=1, source=DOCS + "port/"),
    Case("docker port web 80/tcp", out=r"^0\.0\.0\.0:18480$", lines=1, source=DOCS + "port/"),
    Case("docker stats --no-stream web",
         out=STATS_HEAD + r"\n[0-9a-f]{12}\s+web\s+[\d.]+%\s+[\d.]+[KMG]?i?B / [\d.]+[KMG]?i?B\s+"
         r"[\d.]+%\s+[\d.]+k?M?B / [\d.]+k?M?B\s+[\d.]+k?M?B / [\d.]+k?M?B\s+1$",
         lines=2, source=DOCS + "stats/"),
    Case("docker pause web", out=r"^web$", source=DOCS + "pause/"),
    Case("docker unpause web", out=r"^web$", source=DOCS + "unpause/"),
    Case("docker rename web web2", lines=0, source=DOCS + "rename/"),
    Case("docker restart -t 1 web2", out=r"^web2$", source=DOCS + "restart/"),
    Case("docker stop -t 1 web2", out=r"^web2$", source=DOCS + "stop/"),
    Case('docker run --name test -d busybox sh -c "while true; do $(echo date); sleep 1; done"',
         out=r"^[0-9a-f]{64}$", source=DOCS + "logs/"),
    Case("docker logs -t test",
         out=r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{9}Z \w{3} \w{3} +\d+ \d\d:\d\d:\d\d UTC \d{4}$",
         source=DOCS + "logs/"),
    Case("docker kill test", out=r"^test$", source=DOCS + "kill/"),
    Case("docker create -i --name cat busybox cat", out=r"^[0-9a-f]{64}$", source=DOCS + "create/"),
    Case("docker start -a -i cat", input="hello from stdin\n", out=r"^hello from stdin$",
         lines=1, source=DOCS + "start/"),
]
