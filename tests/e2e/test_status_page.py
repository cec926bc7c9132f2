"""The status page at ``/``, as a browser shows it: Debian's Chromium, headless,
loads it from a real gateway (and Core), runs its script, and we read the DOM
it built — tables of tenants and L3 versions, uplink, outbox, connections, and
the latency histogram's bars."""

from __future__ import annotations

import json
import shutil
import subprocess
import urllib.request
from html.parser import HTMLParser
from pathlib import Path

import pytest
from tests.helpers.fixtures import DevStacks

from krypton.client.sync import KmipClient, tls_context
from krypton.kmip.versions import ProtocolVersion

pytestmark = pytest.mark.slow

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"


class Page(HTMLParser):
    """What the page shows: each table by the heading above it (rows of cell
    text), and the histogram's bars (their ``data-count``)."""

    def __init__(self) -> None:
        super().__init__()
        self.tables: dict[str, list[list[str]]] = {}
        self.bars: list[int] = []
        self.texts: list[str] = []
        self._heading: str | None = None
        self._in: str | None = None
        self._text = ""
        self._row: list[str] | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in ("h1", "h2", "h3", "td", "th", "div"):
            self._in, self._text = tag, ""
        if tag == "tr":
            self._row = []
        if tag == "div" and ("class", "bar") in attrs:
            self.bars.append(int(dict(attrs)["data-count"] or 0))

    def handle_data(self, data: str) -> None:
        self._text += data
        self.texts.append(data)

    def handle_endtag(self, tag: str) -> None:
        if tag == "h3":
            self._heading = self._text.strip()
            self.tables[self._heading] = []
        elif tag in ("td", "th") and self._row is not None:
            self._row.append(self._text.strip())
        elif tag == "tr" and self._row is not None and self._heading is not None:
            self.tables[self._heading].append(self._row)
            self._row = None


def render(url: str, profile: Path) -> Page:
    """The page's DOM after its script ran (a virtual-time budget of a few polls)."""
    if not Path(CHROMIUM).is_file():
        pytest.fail("Debian's chromium is not installed (apt-get install chromium; .ci/run "
                    "installs it): the status page is tested in a real browser")
    cmd = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
           "--no-first-run", "--disable-background-networking", "--disable-component-update",
           "--disable-sync", f"--user-data-dir={profile}", "--virtual-time-budget=5000",
           "--dump-dom", url]  # fmt: skip
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=90, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    page = Page()
    page.feed(done.stdout)
    return page


def test_the_status_page_shows_tenants_l3_uplink_and_latency(
    start_dev: DevStacks, tmp_path: Path
) -> None:
    srv = start_dev()
    ctx = tls_context(srv.pki / "ca.pem", srv.pki / "client.pem", srv.pki / "client-key.pem")
    with KmipClient(srv.host, srv.port, ctx, version=ProtocolVersion(2, 1)) as c:
        for _ in range(7):
            c.get(c.create())
    with urllib.request.urlopen(srv.admin_url("/status.json"), timeout=10) as r:
        status = json.load(r)["workers"][0]
    tenants = {row[0]: row for row in status["sections"][0]["rows"]}
    assert set(tenants) == {"demo", "other"}

    page = render(srv.admin_url("/"), tmp_path / "chromium-gateway")
    shown = {row[0]: row for row in page.tables["Tenants"][1:]}
    assert set(shown) == {"demo", "other"}
    for tenant, row in shown.items():
        assert row[1] == tenants[tenant][1] and row[1].startswith("v")  # the active L3
        assert f"{row[1]} active" in row[2]  # its versions, with their states
        assert row[3].startswith(("23 h", "24 h"))  # the lease left
    assert page.tables["Uplink"][1][0] == "ready"
    assert page.tables["Outbox"][0][0] == "keys waiting"
    assert page.tables["Connections"][0][:2] == ["handshaking", "open"]
    requests = {(r[0], r[1]): r[2] for r in page.tables["KMIP requests"][1:]}
    assert requests == {("Create", "success"): "7", ("Get", "success"): "7"}
    assert len(page.bars) == 8  # the seven KPI buckets and +Inf
    assert sum(page.bars) == 14  # every request, in some bucket
    assert "ready" in page.texts and "Krypton Gateway gw-dev" in page.texts

    core = render(srv.admin_url("/", core=True), tmp_path / "chromium-core")
    assert [r[0] for r in core.tables["Gateways connected"][1:]] == [
        "spiffe://krypton.dev/gateway/gw-dev"]
    assert {r[0] for r in core.tables["Tenants"][1:]} == {"demo", "other"}
