"""`--format` / `-f` on inspect, images, ps, history, volume ls/inspect and system df:
Go templates over docker's field names, `table`, `json` and `{{json .}}`."""

from __future__ import annotations

import json
import re
import sys
import tarfile

import pytest

from conftest import CLI
from test_run_network import in_ns, netns  # noqa: F401  (fixture)
from test_run_support import host_resources


@pytest.fixture(scope="module")
def cli(busybox_rootfs, tmp_path_factory):
    """One store for the module (importing costs seconds): busybox:latest and :1.36."""
    tmp_path = tmp_path_factory.mktemp("fmt")
    pybuild = CLI(tmp_path / "store")
    tar = tmp_path / "busybox.tar"
    with tarfile.open(tar, "w") as t:
        t.add(busybox_rootfs, arcname=".")
    pybuild("import", "-c", 'CMD ["sh", "-c", "echo hi"]', "-c", "EXPOSE 80",
            "-c", "LABEL team=core", "-m", "imported <here>", tar, "busybox:latest")
    pybuild("tag", "busybox:latest", "busybox:1.36")
    yield pybuild
    ids = pybuild("ps", "-aq", "--no-trunc", check=False).stdout.split()
    if ids:
        pybuild("rm", "-f", *ids, check=False)
    # cgroups, veths and netns are counted machine-wide (other tests may own some): check
    # what names this store
    left = host_resources(pybuild.root)
    assert left["mounts"] == left["processes"] == left["files"] == 0, left


def fails(cli, *args: str) -> str:
    p = cli(*args, check=False)
    assert p.returncode == 1 and p.stdout == "", (p.stdout, p.stderr)
    lines = p.stderr.splitlines()
    assert len(lines) == 1 and "Traceback" not in p.stderr, p.stderr
    return lines[0]


def test_images_format(cli) -> None:
    image_id = json.loads(cli("inspect", "busybox").stdout)[0]["Id"]
    out = cli("images", "--format", "{{.Repository}}:{{.Tag}} {{.ID}}").stdout
    assert sorted(out.splitlines()) == [f"busybox:1.36 {image_id[7:19]}",
                                        f"busybox:latest {image_id[7:19]}"]
    # `table` with a literal \t (as typed in a shell): docker's headers, tabwriter columns
    out = cli("images", "--format", r"table {{.Repository}}\t{{.Tag}}\t{{.ID}}").stdout
    lines = out.splitlines()
    assert lines[0] == "REPOSITORY   TAG       IMAGE ID"
    assert re.fullmatch(r"busybox      (latest|1\.36) +[0-9a-f]{12}", lines[1])
    assert len(lines) == 3
    # --no-trunc, CreatedSince, Size, Digest
    out = cli("images", "--no-trunc", "--format", "{{.ID}}|{{.CreatedSince}}|{{.Size}}|"
              "{{.Digest}}|{{.CreatedAt}}").stdout.splitlines()[0]
    ident, since, size, digest, created = out.split("|")
    assert ident == image_id and since.endswith(" ago") and re.fullmatch(r"[\d.]+[kM]?B", size)
    assert digest.startswith("sha256:")
    assert re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d [+-]\d{4} \w+", created)
    # {{json .}}: one object per line with docker's keys (sorted, strings)
    rows = [json.loads(l) for l in cli("images", "--format", "{{json .}}").stdout.splitlines()]
    assert len(rows) == 2 and sorted(rows[0]) == [
        "Containers", "CreatedAt", "CreatedSince", "Digest", "ID", "Repository",
        "SharedSize", "Size", "Tag", "UniqueSize", "VirtualSize"]
    assert all(isinstance(v, str) for v in rows[0].values())
    # -q wins over --format, as in docker
    assert cli("images", "-q", "--format", "{{.Tag}}").stdout.split() == [image_id[7:19]]


def test_images_bad_template_is_one_line(cli) -> None:
    line = fails(cli, "images", "--format", "{{.Nope}}")
    assert line == ('pybuild: error: template: :1:2: executing "" at <.Nope>: can\'t evaluate '
                    'field Nope in type *formatter.imageContext')
    assert fails(cli, "images", "--format", "{{.Tag").startswith(
        "pybuild: error: template: :1:6: unclosed action")


def test_inspect_format_on_an_image(cli) -> None:
    def f(template: str, *names: str) -> str:
        return cli("inspect", "-f", template, *(names or ("busybox",))).stdout

    assert f("{{.Config.Cmd}}|{{json .Config.Cmd}}") == '[sh -c echo hi]|["sh","-c","echo hi"]\n'
    import platform

    arch = {"x86_64": "amd64", "aarch64": "arm64"}.get(platform.machine(), platform.machine())
    assert f("{{.Os}}/{{.Architecture}} {{.RootFS.Type}} {{len .RootFS.Layers}}") == \
        f"linux/{arch} layers 1\n"
    assert f('{{index .Config.Labels "team"}} {{json .Config.ExposedPorts}}') == \
        'core {"80/tcp":{}}\n'
    assert f('{{join .RepoTags ","}}') == "busybox:1.36,busybox:latest\n"
    # null slices and maps print as docker's typed inspect prints them
    assert f("{{.Config.Entrypoint}} {{json .Config.Entrypoint}} {{.Config.Volumes}} "
             "{{len .Config.OnBuild}}") == "[] null map[] 0\n"
    assert f("{{range .Config.Env}}{{println .}}{{else}}no env{{end}}") == "no env\n"
    assert f("{{.Id}}", "busybox:latest", "busybox:1.36").splitlines()[0] == \
        f("{{.Id}}", "busybox:1.36").strip()
    assert len(f("{{.Id}}", "busybox:latest", "busybox:1.36").splitlines()) == 2
    assert json.loads(f("json"))[0]["RepoTags"] == ["busybox:1.36", "busybox:latest"]
    assert json.loads(f("{{json .}}"))["Config"]["Labels"] == {"team": "core"}
    assert f("{{.Created}}").startswith("20")
    # a wrong field: docker's message, nothing on stdout, exit 1
    assert fails(cli, "inspect", "-f", "{{.Nope}}", "busybox") == (
        'pybuild: error: template parsing error: template: :1:2: executing "" at <.Nope>: '
        'map has no entry for key "Nope"')
    assert "range can't iterate over linux" in fails(
        cli, "inspect", "-f", "{{range .Os}}{{end}}", "busybox")


def test_history_format(cli) -> None:
    out = cli("history", "--format", r"table {{.ID}}\t{{.CreatedBy}}\t{{.Comment}}",
              "busybox").stdout.splitlines()
    assert out[0].split() == ["IMAGE", "CREATED", "BY", "COMMENT"]
    assert out[1].endswith("imported <here>")
    text = cli("history", "--format", "{{json .}}", "busybox").stdout
    rows = [json.loads(l) for l in text.splitlines()]
    assert sorted(rows[0]) == ["Comment", "CreatedAt", "CreatedBy", "CreatedSince", "ID", "Size"]
    assert rows[0]["Comment"] == "imported <here>" and text.count("\\u003chere\\u003e") == 1
    size = cli("history", "-H", "false", "--format", "{{.Size}}", "busybox").stdout.strip()
    assert size.isdigit() and int(size) > 100_000


def test_volume_and_system_df_format(cli) -> None:
    cli("volume", "create", "-l", "tier=db", "data1")
    out = cli("volume", "ls", "--format", r"table {{.Name}}\t{{.Driver}}\t{{.Labels}}").stdout
    assert out.splitlines() == ["VOLUME NAME   DRIVER    LABELS", "data1         local     tier=db"]
    obj = json.loads(cli("volume", "ls", "--format", "json").stdout)
    assert obj["Name"] == "data1" and obj["Scope"] == "local" and obj["Mountpoint"].endswith(
        "/volumes/data1/_data")
    assert cli("volume", "inspect", "-f", "{{.Mountpoint}} {{.Labels.tier}}", "data1").stdout \
        == f"{cli.root}/volumes/data1/_data db\n"
    out = cli("system", "df", "--format", r"table {{.Type}}\t{{.TotalCount}}").stdout
    assert out.splitlines()[0] == "TYPE            TOTAL"
    assert out.splitlines()[1].split() == ["Images", "1"]
    assert cli("system", "df", "--format", "{{.Type}}={{.Active}}").stdout.splitlines()[:3] == \
        ["Images=0", "Containers=0", "Local Volumes=0"]


def test_container_formats(cli) -> None:
    p = cli("run", "--name", "fmt1", "--network", "none", "-l", "app=web", "busybox",
            "sh", "-c", "exit 3", check=False)
    assert p.returncode == 3
    assert cli("inspect", "-f", "{{.State.Status}} {{.State.ExitCode}} {{.State.Running}} "
               "{{.Name}}", "fmt1").stdout == "exited 3 false /fmt1\n"
    assert cli("inspect", "-f", "{{json .Config.Cmd}}", "fmt1").stdout == \
        '["sh","-c","exit 3"]\n'
    assert cli("inspect", "-f", "{{json .NetworkSettings.Ports}} "
               "{{json .NetworkSettings.Networks}}", "fmt1").stdout == '{} {"none":{"IPAddress":""}}\n'
    out = cli("ps", "-a", "--format", r"table {{.Names}}\t{{.Image}}\t{{.Status}}").stdout
    lines = out.splitlines()
    assert lines[0] == "NAMES     IMAGE     STATUS"
    assert re.fullmatch(r"fmt1      busybox   Exited \(3\) .* ago", lines[1])
    obj = json.loads(cli("ps", "-a", "--format", "json").stdout)
    assert obj["Names"] == "fmt1" and obj["State"] == "exited"
    assert obj["Labels"] == "app=web,team=core"         # the image's labels too, as docker
    assert obj["Command"] == '"sh -c \'exit 3\'"' and len(obj["ID"]) == 12
    assert cli("ps", "-a", "--format", "{{.ID}} {{.State}}").stdout.split()[1] == "exited"
    assert cli("ps", "--format", "{{.Names}}").stdout == ""      # not running
    assert "can't evaluate field Nope in type *formatter.ContainerContext" in fails(
        cli, "ps", "-a", "--format", "{{.Nope}}")


def test_published_ports_as_docker_map(cli, netns) -> None:
    pb = (sys.executable, "-m", "builder", "--root", str(cli.root))
    cid = in_ns(netns, *pb, "run", "-d", "--name", "web", "-p", "18093:80", "busybox",
                "sleep", "300").stdout.strip()
    try:
        # the line from docker's inspect documentation
        out = in_ns(netns, *pb, "inspect", "-f",
                    "{{range $p, $conf := .NetworkSettings.Ports}} {{$p}} -> "
                    "{{(index $conf 0).HostPort}} {{end}}", "web").stdout
        assert out == " 80/tcp -> 18093 \n"
        ports = json.loads(in_ns(netns, *pb, "inspect", "web").stdout)[0]["NetworkSettings"]
        assert ports["Ports"] == {"80/tcp": [{"HostIp": "0.0.0.0", "HostPort": "18093"}]}
        assert in_ns(netns, *pb, "inspect", "-f", "{{.State.Status}} {{.State.Running}}",
                     "web").stdout == "running true\n"
        # docker's inspect docs: the address, whatever the network's name
        ip = in_ns(netns, *pb, "inspect", "-f", "{{range .NetworkSettings.Networks}}"
                   "{{.IPAddress}}{{end}}", "web").stdout
        assert re.fullmatch(r"\d+\.\d+\.\d+\.\d+\n", ip)
        assert ip.strip() == ports["IPAddress"] and list(ports["Networks"]) == ["bridge"]
        assert in_ns(netns, *pb, "ps", "--format", "{{.Names}}: {{.Ports}}").stdout == \
            "web: 0.0.0.0:18093->80/tcp\n"
    finally:
        in_ns(netns, *pb, "rm", "-f", cid, check=False)
