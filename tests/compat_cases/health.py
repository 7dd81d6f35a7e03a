"""Restart policies and health checks of detached containers (run -d --restart,
--health-*), carried out by the container's supervisor (no daemon)."""

from compat_cases import Case

RUN = "https://docs.docker.com/reference/cli/docker/container/run/"
AUTO = "https://docs.docker.com/engine/containers/start-containers-automatically/"
ID = r"^[0-9a-f]{64}$"

CASES = [
    Case("docker run --name=test -d --health-cmd='stat /etc/passwd || exit 1' "
         "--health-interval=2s busybox sleep 1d", out=ID, source=RUN + "#healthcheck"),
    Case("docker run -d --restart on-failure:2 --name r1 busybox false", out=ID,
         source=RUN + "#restart"),
    Case("docker run -d --restart unless-stopped --name r2 busybox sleep 300", out=ID,
         source=AUTO + "#use-a-restart-policy"),
    # the supervisor restarts r1 twice, then it stays exited with false's status
    Case("docker wait r1", out=r"^1$", lines=1, source=RUN + "#restart"),
    Case("docker inspect r1", out=r'"RestartCount": 2,', source=RUN + "#restart"),
    Case("docker inspect r1",
         out=r'"RestartPolicy": \{\s*"MaximumRetryCount": 2,\s*"Name": "on-failure"\s*\}|'
             r'"RestartPolicy": \{\s*"Name": "on-failure",\s*"MaximumRetryCount": 2\s*\}',
         source=RUN + "#restart"),
    Case("docker ps", out=r"Up .* \((healthy|health: starting)\)\s+test$",
         source="https://docs.docker.com/reference/cli/docker/container/ls/#status"),
    Case("docker inspect test",
         out=r'"Health": \{\s*"Status": "(starting|healthy)",\s*"FailingStreak": 0,\s*"Log": \[',
         source=RUN + "#healthcheck"),
    Case("docker exec test rm /etc/passwd", source=RUN + "#healthcheck"),
    Case("docker stop -t 1 r2", out=r"^r2$", lines=1, source=AUTO + "#restart-policy-details"),
    Case("docker inspect r2", out=r'"Status": "exited",', source=AUTO + "#restart-policy-details"),
    Case("docker run --rm --restart always busybox true", code=125,
         err=r"Conflicting options: --restart and --rm", source=RUN + "#restart"),
    Case("docker run -d --restart on-failure:-1 busybox true", code=125,
         err=r"maximum retry count cannot be negative", source=RUN + "#restart"),
]
