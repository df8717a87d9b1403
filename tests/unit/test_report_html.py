"""report.html: self-contained, escaped, and rendered by a real browser (Debian's chromium)
without console errors, with its plots drawn and each spike's evidence one click away."""
from __future__ import annotations

import os
import re

import pytest

from analysis import analyse
from analysis.report import write_reports
from common.rundir import RunDir
from tests.helpers.synthetic import MS, S, SyntheticRun

CHROMIUM = "/usr/bin/chromium"
EVIL = "<script>alert(1)</script>"
EVIL_PATH = '/tmp/"><img src=x onerror=alert(2)>'


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    path = tmp_path_factory.mktemp("html") / "run"
    run = SyntheticRun(path, lost_events=2, scenario=EVIL)
    run.meta.command = ["spiketrace", "run", "--out", EVIL_PATH]
    run.meta.notes = [EVIL]
    run.meta.probes["retransmit"] = EVIL
    run.meta.drop_reasons = {"5": EVIL}
    run.normal(60)
    for k in range(3):
        t = run.txn(connect_ms=1000.1 + k)
        run.event("drop", t["t_start"] + 10_000, t, side="server", reason=5, comm=EVIL)
        run.event("retransmit", t["t_start"] + S, t, state=2)
        t = run.txn(ex1_ms=130.2 + k)
        run.event("runq_delay", t["t_connected"] + 130 * MS, None, pid=run.client_pid, comm=EVIL, value=129 * MS)
        run.normal(20, seed=k)
    run.txn(ex1_ms=200)  # unexplained
    rd = RunDir.open(run.write())
    result = analyse(rd)
    write_reports(rd, result, formats=["html"])
    return path / "report.html"


def test_every_run_string_is_escaped_and_nothing_is_external(report):
    text = report.read_text()
    assert "<script" not in text.lower()  # neither ours (none needed) nor the run's
    assert "onerror=alert" not in text.replace("onerror=alert(2)&gt;", "")
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in text
    assert "&lt;img src=x onerror=alert(2)&gt;" in text
    assert "drop:&lt;script&gt;" in text  # the cause detail from a run-provided name, escaped
    # self-contained: no URL other than the SVG/XLink namespace names
    urls = set(re.findall(r"https?://[^\s\"'<>)]+", text))
    assert urls <= {"http://www.w3.org/2000/svg", "http://www.w3.org/1999/xlink"}, urls
    assert not re.search(r"""(src|href)=["']?(https?:|//)""", text)
    assert "2 lost" in text


@pytest.mark.skipif(not os.path.exists(CHROMIUM), reason=f"{CHROMIUM} is not installed (scripts/install.sh --test)")
def test_report_renders_in_headless_chromium(report, tmp_path):
    from PIL import Image
    from playwright.sync_api import sync_playwright

    console_errors, page_errors, dialogs = [], [], []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=[
            "--no-sandbox", "--headless", "--disable-gpu", "--disable-background-networking",
            "--disable-component-update", "--no-first-run", "--disable-sync"])
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            page.on("console", lambda m: console_errors.append(m.text) if m.type == "error" else None)
            page.on("pageerror", lambda e: page_errors.append(str(e)))
            page.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))
            page.goto(report.as_uri(), wait_until="load")
            shot = tmp_path / "report.png"
            page.screenshot(path=str(shot), full_page=True)

            svgs = page.query_selector_all("figure svg")
            assert len(svgs) == 3
            for svg in svgs:
                box = svg.bounding_box()
                assert box and box["width"] > 300 and box["height"] > 100, box
                assert len(svg.query_selector_all("path")) > 10  # axes, ticks, bars, markers drawn
                assert len(svg.query_selector_all("text")) > 5  # tick and axis labels

            # each spike's evidence is one click away
            first = page.query_selector("#spikes ~ table details")
            rows = first.query_selector("table")
            assert not rows.is_visible()
            first.query_selector("summary").click()
            assert rows.is_visible() and "retransmit" in rows.inner_text()
            assert page.title().startswith("spiketrace report")
        finally:
            browser.close()
    assert console_errors == [] and page_errors == [] and dialogs == []
    img = Image.open(shot).convert("RGB")
    small = img.resize((64, 256))
    colors = small.getcolors(maxcolors=64 * 256)
    assert len(colors) > 20  # not a blank page
    assert max(count for count, _ in colors) < 0.95 * 64 * 256
