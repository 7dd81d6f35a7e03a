"""`pybuild run --pull missing|always|never` against a docker-registry on 127.0.0.1."""

from __future__ import annotations

from conftest import CLI
from test_registry_helpers import config_env, registry  # noqa: F401  (fixtures)
from test_run_support import run_store  # noqa: F401  (fixture)


def test_run_pulls_a_missing_image(run_store, registry, config_env, tmp_path):
    ref = f"{registry.host}/run/busybox:1"
    run_store("push", "busybox", ref)
    fresh = CLI(tmp_path / "fresh")
    p = fresh("run", "--rm", "--network", "none", "--pull", "never", ref, "true", check=False)
    assert p.returncode == 125 and "--pull=never" in p.stderr
    p = fresh("run", "--rm", "--network", "none", ref, "echo", "pulled")
    assert p.stdout == "pulled\n"
    assert "run/busybox" in fresh("images").stdout
    p = fresh("run", "--rm", "--network", "none", "--pull", "always", ref, "echo", "again")
    assert p.stdout == "again\n"
    p = fresh("run", "--rm", "--network", "none", f"{registry.host}/run/absent:1", "true",
              check=False)
    assert p.returncode == 125 and "absent" in p.stderr and len(p.stderr.splitlines()) == 1
