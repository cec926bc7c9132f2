"""`krypton conformance` end to end: OASIS cases over mutual TLS against real servers.

Against a fresh `krypton dev`, mandatory cases of each claimed profile that the
gateway passes must PASS (and the run exit 0): SKLC, SKFF, OMOS, CS-BC, CS-RNG,
QS and BL, in several versions (AX passes none: see docs/conformance.md); a case
it fails for a documented reason must give a well-formed FAIL line and exit 1.
Against PyKMIP 0.11's own server (scripts/pykmip_server.py, same dev PKI) the
runner only has to run and report: that shows it is not tied to Krypton.
"""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from tests.helpers.fixtures import DevStacks
from tests.helpers.oasis import CASES, needs_cases
from tests.helpers.servers import free_port

from krypton.pki.dev import init_dev_dir

pytestmark = [pytest.mark.slow, needs_cases]

ROOT = Path(__file__).resolve().parents[2]
PASSING = [  # mandatory cases of claimed profiles that krypton dev passes
    "v1.0/XML/mandatory/SKFF-M-1-10.xml",  # KMIP 1.0, literal time stamps
    "v1.0/XML/mandatory/SKLC-M-1-10.xml",  # a 1.0 Digest: no Key Format Type
    "v1.4/XML/mandatory/SKLC-M-1-14.xml",  # Digest of a created key
    "v2.1/XML/mandatory/SKLC-M-2-21.xml",
    "v1.4/XML/mandatory/OMOS-M-1-14.xml",
    "v1.4/XML/mandatory/SKFF-M-2-14.xml",
    "v1.4/XML/mandatory/CS-RNG-M-1-14.xml",
    "v1.4/XML/mandatory/CS-BC-M-GCM-1-14.xml",
    "v1.3/XML/mandatory/CS-BC-M-4-12-3DES-13.xml",  # Triple DES registered and used
    "v2.1/XML/mandatory/QS-M-2-21.xml",  # Quantum Safe AES-128: General Failure
    "v2.1/XML/mandatory/BL-M-3-21.xml",  # Interop; served as registered (Transparent)
    "v2.1/XML/mandatory/BL-M-10-21.xml",  # a certificate and what is read off it
    "v2.1/XML/mandatory/BL-M-12-21.xml",  # Transparent DSA public key; Sensitive
]
# Each of these Locates by Name: run once only, on the fresh server.
PASSING_ONCE = [
    "v1.4/XML/mandatory/SKFF-M-9-14.xml",  # every attribute a 1.4 server keeps
    "v1.4/XML/mandatory/SKFF-M-8-14.xml",  # Triple DES made by the server
    "v2.1/XML/mandatory/BL-M-1-21.xml",  # Interop and Log
]
FAILING = "v2.1/XML/mandatory/QS-M-1-21.xml"  # Query: operations we do not implement
LINE = re.compile(r"^(PASS [\w.-]+|FAIL [\w.-]+: step \d+: \S.*)$")
SUMMARY = re.compile(r"^(\d+) passed, (\d+) failed$")


def conformance(port: int, pki: Path, *args: str) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-m", "krypton.cli.main", "conformance", "--port", str(port)]
    cmd += ["--pki", str(pki), *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=60, check=False)


def check_report(out: str, total: int) -> dict[str, str]:
    """Every line but the last is a case line; the last one counts them."""
    lines = out.strip().splitlines()
    assert len(lines) == total + 1, out
    for text in lines[:-1]:
        assert LINE.match(text), text
    summary = SUMMARY.match(lines[-1])
    assert summary is not None, lines[-1]
    passed, failed = int(summary[1]), int(summary[2])
    assert passed + failed == total
    assert passed == sum(1 for t in lines[:-1] if t.startswith("PASS "))
    return {t.split()[1].rstrip(":"): t for t in lines[:-1]}


def test_against_krypton_dev(tmp_path: Path, start_dev: DevStacks) -> None:
    files = [str(CASES / name) for name in [*PASSING, *PASSING_ONCE, FAILING]]
    server = start_dev()
    run = conformance(
        server.port, server.pki, "--cases", *files, "--json", str(tmp_path / "out.json")
    )
    clean = conformance(
        server.port,
        server.pki,
        "--reuse-connection",
        "--cases",
        *(str(CASES / n) for n in PASSING),
    )
    assert run.returncode == 1, run.stdout + run.stderr
    lines = check_report(run.stdout, len(files))
    for name in [*PASSING, *PASSING_ONCE]:
        assert lines[Path(name).stem] == f"PASS {Path(name).stem}"
    assert lines["QS-M-1-21"].startswith("FAIL QS-M-1-21: step 0: ")
    assert "missing Enumeration AdjustAttribute" in lines["QS-M-1-21"]
    report = json.loads((tmp_path / "out.json").read_text())
    assert report["passed"] == len(PASSING) + len(PASSING_ONCE) and report["failed"] == 1
    assert report["by_version"]["v2.1"]["QS"] == {"passed": 1, "failed": 1}
    assert report["by_version"]["v2.1"]["BL"] == {"passed": 4, "failed": 0}
    assert report["by_version"]["v1.4"]["SKLC"] == {"passed": 1, "failed": 0}
    assert clean.returncode == 0, clean.stdout + clean.stderr
    assert clean.stdout.strip().splitlines()[-1] == f"{len(PASSING)} passed, 0 failed"


@pytest.fixture
def pykmip(tmp_path: Path) -> Iterator[tuple[int, Path]]:
    layout = init_dev_dir(tmp_path / "dev")
    port = free_port()
    log = (tmp_path / "pykmip.log").open("w")
    cmd = [sys.executable, str(ROOT / "scripts" / "pykmip_server.py"), "--port", str(port)]
    cmd += ["--pki", str(layout.pki), "--workdir", str(tmp_path / "pykmip")]
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 30
        while "PyKMIP server ready on" not in (tmp_path / "pykmip.log").read_text():
            assert proc.poll() is None, (tmp_path / "pykmip.log").read_text()
            assert time.monotonic() < deadline, "PyKMIP server did not start"
            time.sleep(0.1)
        yield port, layout.pki
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)
        log.close()


def test_against_pykmip_server(pykmip: tuple[int, Path]) -> None:
    port, pki = pykmip
    names = ["SKFF-M-1-14", "SKLC-M-1-14", "QS-M-1-21"]
    files = [str(next(CASES.rglob(f"{n}.xml"))) for n in names]
    run = conformance(port, pki, "--cases", *files)
    assert run.returncode in (0, 1), run.stderr
    lines = check_report(run.stdout, len(names))
    assert sorted(lines) == sorted(names)
