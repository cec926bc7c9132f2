"""The admin endpoint's HTTP side: routes, pluggable readiness, TLS, workers answering together.

The gateway's and the Core's own sources are exercised against real processes
in ``tests/e2e/test_admin.py``; here a small source of fixed families and
checks drives the real server over loopback.
"""

from __future__ import annotations

import json
import ssl
import urllib.error
import urllib.request
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families
from tests.helpers.servers import free_port

from krypton.admin.checks import Check
from krypton.admin.peers import WorkerSlot
from krypton.admin.server import AdminServer
from krypton.config import AdminConfig
from krypton.errors import ConfigError
from krypton.metrics.meter import Family, counter, gauge
from krypton.pki import DevLayout, init_dev_dir


class FixedSource:
    """Families and checks the test sets."""

    def __init__(self, requests: float, *, name: str = "w") -> None:
        self.requests = requests
        self.name = name
        self.checks: list[Check] = []

    def families(self) -> list[Family]:
        return [counter("krypton_kmip_requests_total", "r", ("operation", "result"),
                        [(("Get", "success"), self.requests)]),
                gauge("krypton_uplink_up", "u", values=[((), 1.0)])]  # fmt: skip

    def status(self) -> dict[str, Any]:
        return {"title": self.name, "sections": []}


def get(url: str, context: ssl.SSLContext | None = None) -> tuple[int, str, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=10, context=context) as r:
            return r.status, r.headers["Content-Type"], r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.headers["Content-Type"], e.read()


@pytest.fixture
def served() -> Iterator[tuple[AdminServer, FixedSource]]:
    source = FixedSource(3)
    server = AdminServer(AdminConfig(listen="127.0.0.1:0"), source, setting="gateway.admin")
    server.start()
    try:
        yield server, source
    finally:
        server.close()


def test_health_metrics_page_and_unknown_paths(served: tuple[AdminServer, FixedSource]) -> None:
    server, _ = served
    base = f"http://127.0.0.1:{server.port}"
    assert get(base + "/healthz")[0] == 200
    code, ctype, body = get(base + "/metrics")
    assert code == 200 and ctype.startswith("text/plain")
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
               for f in text_string_to_metric_families(body.decode()) for s in f.samples}
    assert samples[("krypton_kmip_requests_total",
                    (("operation", "Get"), ("result", "success")))] == 3.0
    code, ctype, body = get(base + "/")
    assert code == 200 and ctype.startswith("text/html") and b"status.json" in body
    assert json.loads(get(base + "/status.json")[2]) == {"workers": [{"title": "w",
                                                                      "sections": []}]}
    assert get(base + "/nothing-here")[0] == 404


def test_readiness_is_the_list_of_named_checks(served: tuple[AdminServer, FixedSource]) -> None:
    server, source = served
    url = f"http://127.0.0.1:{server.port}/readyz"
    assert get(url)[0] == 200
    problems: list[str] = ["tenant 'other' holds no active L3"]
    source.checks.append(Check("l3", lambda: problems))
    code, _, body = get(url)
    assert code == 503
    assert json.loads(body) == {"ready": False, "missing": ["tenant 'other' holds no active L3"],
                                "checks": {"l3": ["tenant 'other' holds no active L3"]}}
    problems.clear()
    assert get(url)[0] == 200

    def broken() -> Sequence[str]:
        raise RuntimeError("secret detail")

    source.checks.append(Check("root of trust", broken))
    code, _, body = get(url)
    assert code == 503
    assert json.loads(body)["checks"]["root of trust"] == ["the check failed (RuntimeError)"]
    assert b"secret detail" not in body


def test_a_port_in_use_is_a_config_error_naming_the_setting(
    served: tuple[AdminServer, FixedSource],
) -> None:
    taken = AdminConfig(listen=f"127.0.0.1:{served[0].port}")
    with pytest.raises(ConfigError, match=r"^core\.admin\.listen: cannot listen on 127\.0\.0\.1:"):
        AdminServer(taken, FixedSource(0), setting="core.admin").start()


@pytest.fixture(scope="module")
def dev(tmp_path_factory: pytest.TempPathFactory) -> DevLayout:
    return init_dev_dir(tmp_path_factory.mktemp("dev"))


def test_https_with_cert_and_key(dev: DevLayout) -> None:
    config = AdminConfig(listen="127.0.0.1:0", cert=dev.gateway, key=dev.gateway_key)
    server = AdminServer(config, FixedSource(1), setting="gateway.admin")
    server.start()
    try:
        ctx = ssl.create_default_context(cafile=str(dev.ca))
        code, _, body = get(f"https://localhost:{server.port}/healthz", ctx)
        assert code == 200 and json.loads(body) == {"status": "ok"}
        with pytest.raises((urllib.error.URLError, ConnectionError)):
            get(f"http://127.0.0.1:{server.port}/healthz")  # plain HTTP is not spoken
    finally:
        server.close()


def test_workers_answer_one_scrape_together(tmp_path: Path) -> None:
    port = free_port()
    config = AdminConfig(listen=f"127.0.0.1:{port}")
    sources = [FixedSource(10), FixedSource(20)]
    servers = [AdminServer(config, s, setting="gateway.admin",
                           slot=WorkerSlot(n, tmp_path, len(sources)))
               for n, s in enumerate(sources)]
    for s in servers:
        s.start()  # both on one port (SO_REUSEPORT), as the gateway's workers
    try:
        for _ in range(4):  # whichever worker the kernel picks answers for both
            body = get(f"http://127.0.0.1:{port}/metrics")[2]
            got = {s.labels["worker"]: s.value
                   for f in text_string_to_metric_families(body.decode())
                   for s in f.samples if s.name == "krypton_kmip_requests_total"}
            assert got == {"0": 10.0, "1": 20.0}
        assert get(f"http://127.0.0.1:{port}/readyz")[0] == 200
        sources[1].checks.append(Check("vault", lambda: ["the vault is closed"]))
        for _ in range(4):
            code, _, body = get(f"http://127.0.0.1:{port}/readyz")
            assert code == 503
            assert json.loads(body)["missing"] == ["worker 1: the vault is closed"]
        statuses = json.loads(get(f"http://127.0.0.1:{port}/status.json")[2])["workers"]
        assert len(statuses) == 2
        servers[1].close()  # gone (a worker restarting): the other answers alone
        code, _, body = get(f"http://127.0.0.1:{port}/readyz")
        assert code == 503
        assert json.loads(body)["missing"] == ["worker 1: it did not answer"]
        body = get(f"http://127.0.0.1:{port}/metrics")[2]
        assert b'worker="0"' in body and b'worker="1"' not in body
    finally:
        for s in servers:
            s.close()
    assert not list(tmp_path.glob("*.sock"))  # each worker removed its socket
