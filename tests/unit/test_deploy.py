"""deploy/: the systemd units pass ``systemd-analyze verify``, the Kubernetes
manifests validate offline against the Kubernetes schemas (strict: an unknown
field fails), and the pieces agree with each other (one command path, probes on
the admin endpoints, SVIDs from the SPIFFE CSI driver, known settings only)."""

from __future__ import annotations

import shutil
import subprocess
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from krypton.config import settings

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
UNITS = sorted((DEPLOY / "systemd").glob("*.service"))
MANIFESTS = sorted((DEPLOY / "kubernetes").glob("*.yaml"))
SYSTEMD_ANALYZE = Path("/usr/bin/systemd-analyze")
K8S_VERSION = "1.30.0"
KRYPTON = "/opt/krypton/bin/krypton"  # where the Containerfile and the units put it
# Settings the manifests use that other parts of issue 14 add (admin endpoint, SPIFFE source).
ADDED_BY_ISSUE_14 = frozenset({"gateway.admin.listen", "core.admin.listen", "gateway.tls.source"})


# -- systemd ------------------------------------------------------------------------
def _unit_dirs() -> list[Path]:
    return [p for p in (Path("/usr/lib/systemd/system"), Path("/lib/systemd/system")) if p.is_dir()]


def _verify(units: list[Path], root: Path) -> subprocess.CompletedProcess[str]:
    """``systemd-analyze verify --root`` in a root that has the system's targets, the
    commands the units run (krypton where it is installed, kill) and the units."""
    system = root / "usr/lib/systemd/system"
    system.mkdir(parents=True, exist_ok=True)
    for target in _unit_dirs()[0].glob("*.target"):
        shutil.copy(target, system / target.name)
    krypton = root / KRYPTON.lstrip("/")
    krypton.parent.mkdir(parents=True, exist_ok=True)
    krypton.write_text("#!/bin/sh\n")
    krypton.chmod(0o755)
    (root / "bin").mkdir(exist_ok=True)
    shutil.copy("/bin/kill", root / "bin/kill")
    etc = root / "etc/systemd/system"
    etc.mkdir(parents=True, exist_ok=True)
    for unit in units:
        shutil.copy(unit, etc / unit.name)
    return subprocess.run(
        [str(SYSTEMD_ANALYZE), "verify", f"--root={root}", *(u.name for u in units)],
        capture_output=True, text=True, timeout=60, check=False,
    )


needs_systemd = pytest.mark.skipif(
    not SYSTEMD_ANALYZE.exists() or not _unit_dirs(),
    reason="/usr/bin/systemd-analyze (or the system's unit folder) is absent on this machine",
)


@needs_systemd
def test_systemd_units_verify(tmp_path: Path) -> None:
    assert [u.name for u in UNITS] == ["krypton-core.service", "krypton-gateway.service"]
    done = _verify(UNITS, tmp_path)
    assert (done.returncode, done.stdout + done.stderr) == (0, "")


@needs_systemd
def test_systemd_verify_catches_a_mistake(tmp_path: Path) -> None:
    broken = tmp_path / "src" / "krypton-core.service"
    broken.parent.mkdir()
    text = UNITS[0].read_text().replace("NoNewPrivileges=yes", "NoNewPrivilege=yes")
    broken.write_text(text.replace(KRYPTON, "/opt/elsewhere/krypton"))
    done = _verify([broken], tmp_path / "root")
    assert "Unknown key 'NoNewPrivilege'" in done.stderr
    assert "/opt/elsewhere/krypton is not executable" in done.stderr


def test_units_and_image_agree() -> None:
    container = (DEPLOY / "Containerfile").read_text()
    assert f'ENTRYPOINT ["{KRYPTON}"]' in container
    assert "pip install .\n" in container and "[test]" not in container  # runtime only
    assert "USER 10001:10001" in container
    for unit in UNITS:
        role = unit.stem.removeprefix("krypton-")
        assert f"ExecStart={KRYPTON} {role} --config /etc/krypton/{role}.toml" in unit.read_text()


# -- Kubernetes ---------------------------------------------------------------------
def _documents() -> Iterator[tuple[str, dict[str, Any]]]:
    for path in MANIFESTS:
        for doc in yaml.safe_load_all(path.read_text()):
            if doc:
                yield f"{path.name}:{doc['kind']}/{doc['metadata']['name']}", doc


def _find(kind: str, name: str) -> dict[str, Any]:
    for _, doc in _documents():
        if doc["kind"] == kind and doc["metadata"]["name"] == name:
            return doc
    raise AssertionError(f"no {kind} {name}")


def test_kubernetes_manifests_validate_offline() -> None:
    seen = []
    for where, doc in _documents():
        kubernetes_validate.validate(doc, K8S_VERSION, strict=True)
        seen.append(where.split(":")[1])
    assert {"Deployment/krypton-core", "DaemonSet/krypton-gateway", "Service/krypton-core",
            "Service/krypton-gateway", "ConfigMap/krypton-core"} <= set(seen)


def test_validation_catches_a_wrong_field() -> None:
    doc = _find("DaemonSet", "krypton-gateway")
    doc["spec"]["template"]["spec"]["containers"][0]["readynessProbe"] = {}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(doc, K8S_VERSION, strict=True)


@pytest.mark.parametrize(("kind", "name", "port"), [
    ("DaemonSet", "krypton-gateway", 9696),
    ("Deployment", "krypton-core", 9697),
])
def test_probes_use_the_admin_endpoint_and_svids_come_from_spiffe(kind: str, name: str,
                                                                  port: int) -> None:
    pod = _find(kind, name)["spec"]["template"]["spec"]
    main = pod["containers"][0]
    ports = {p["name"]: p["containerPort"] for p in main["ports"]}
    assert ports["admin"] == port
    assert main["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "admin"}
    assert main["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "admin"}
    assert main["securityContext"]["readOnlyRootFilesystem"] is True
    assert main["image"].endswith(":0.1.0") and main["args"][0] in ("gateway", "core")
    drivers = [v["csi"]["driver"] for v in pod["volumes"] if "csi" in v]
    assert drivers == ["csi.spiffe.io"]
    assert pod["securityContext"]["runAsNonRoot"] is True


def _setting_names(table: dict[str, Any], prefix: str) -> Iterator[str]:
    for key, value in table.items():
        if isinstance(value, dict):
            yield from _setting_names(value, f"{prefix}.{key}")
        else:  # a value, or the [[core.gateway]] tables
            yield f"{prefix}.{key}"


@pytest.mark.parametrize(("name", "root", "file"), [
    ("krypton-gateway", "gateway", "gateway.toml"),
    ("krypton-core", "core", "core.toml"),
])
def test_configmaps_name_only_real_settings(name: str, root: str, file: str) -> None:
    toml = tomllib.loads(_find("ConfigMap", name)["data"][file])
    used = set(_setting_names(toml[root], root))
    assert used - set(settings(root)) - ADDED_BY_ISSUE_14 == set()
    assert f"{root}.log_format" in used


# -- make run -----------------------------------------------------------------------
def _make_dry_run(target: str, venv: Path) -> list[str]:
    done = subprocess.run(["make", "-n", target, f"VENV={venv}"], cwd=DEPLOY.parent,
                          capture_output=True, text=True, timeout=30, check=True)
    return [line for line in done.stdout.splitlines() if "pip install" in line]


@pytest.mark.skipif(shutil.which("make") is None, reason="make is not installed")
def test_make_run_installs_only_what_running_needs(tmp_path: Path) -> None:
    run = _make_dry_run("run", tmp_path / "venv")
    assert run[-1].endswith("pip install --quiet -e .")
    assert not any("[test]" in line for line in run)
    test = _make_dry_run("test", tmp_path / "venv")
    assert test[-1].endswith("pip install --quiet -e '.[test]'")
