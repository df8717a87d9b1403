"""report.html as a person sees it, rendered by headless Chromium: on bursty data (bursts of fast
transactions, each ended by a 1 s SYN retransmit) the median per time bin stays visible at the
bottom of the latency plot rather than vanishing (which made every transaction look ~1 s), every
axis and tick label is drawn inside its figure (nothing clipped), log axes read `1 ms`, `1 s`
(not `10^2` or `3x10^1`), the time axis is UTC, and evidence shows reason names and hex
addresses."""
from __future__ import annotations

import os
import re

import pytest

from analysis import analyse
from analysis.report import write_reports
from analysis.report.plots import MEDIAN_COLOR
from common.rundir import RunDir
from tests.helpers.synthetic import MS, S, SyntheticRun

CHROMIUM = "/usr/bin/chromium"
BURSTS = 30
pytestmark = pytest.mark.skipif(not os.path.exists(CHROMIUM),
                                reason=f"{CHROMIUM} is not installed (scripts/install.sh --test)")


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    path = tmp_path_factory.mktemp("browser") / "run"
    run = SyntheticRun(path)
    run.meta.drop_reasons = {"3": "NO_SOCKET"}
    for b in range(BURSTS):  # ~16 ms of fast transactions, then one stalled for 1 s
        run.normal(20, seed=b)
        t = run.txn(connect_ms=1000.2)
        run.event("retransmit", t["t_start"] + S, t, state=2)
        run.event("drop", t["t_start"] + MS, t, side="server", reason=3, value=-2 ** 63 + 0x1234)
        if b % 5 == 0:
            run.event("synack_retransmit", t["t_start"] + S + MS, t, side="server")
            run.event("reset_received", t["t_end"], t, state=1)
    rd = RunDir.open(run.write())
    write_reports(rd, analyse(rd), formats=["html"])
    return path / "report.html"


def _rgb(hex_color: str):
    return tuple(int(hex_color[i:i + 2], 16) for i in (1, 3, 5))


def test_report_reads_right_in_chromium(report, tmp_path):
    from PIL import Image
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=[
            "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"])
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            page.goto(report.as_uri(), wait_until="load")
            # every label is drawn inside its figure's box: nothing clipped
            clipped = page.evaluate("""() => {
                const out = [];
                for (const svg of document.querySelectorAll('figure svg')) {
                    const box = svg.getBoundingClientRect();
                    for (const t of svg.querySelectorAll('text')) {
                        const r = t.getBoundingClientRect();
                        if (!t.textContent.trim()) continue;
                        if (r.left < box.left - 1 || r.right > box.right + 1 || r.top < box.top - 1 ||
                            r.bottom > box.bottom + 1) out.push(t.textContent);
                    }
                }
                return out;
            }""")
            assert clipped == [], f"labels cut off at the figure's edge: {clipped}"
            texts = page.evaluate("() => [...document.querySelectorAll('figure svg text')].map(t => t.textContent)")
            joined = " | ".join(texts)
            for label in ("latency (log scale)", "transactions", "reset_received", "synack_retransmit",
                          "1 ms", "1 s", "median per time bin"):
                assert label in texts or label in joined, (label, joined)
            assert not re.search(r"×|\^|\$|mathdefault", joined), joined
            assert any(re.fullmatch(r"time \(UTC, \d{4}-\d{2}-\d{2}\)", t) for t in texts), joined
            assert any(re.fullmatch(r"\d\d:\d\d:\d\d", t) for t in texts), joined  # ticks in UTC

            fig = page.query_selector("#plot-time svg")
            axes = page.evaluate("""() => {
                const g = document.querySelector('#plot-time svg [id$="axes_1"] [id$="patch_2"] path');
                const r = g.getBoundingClientRect();
                return {x: r.left, y: r.top, w: r.width, h: r.height};
            }""")
            box = fig.bounding_box()
            shot = tmp_path / "time.png"
            fig.screenshot(path=str(shot))
            evidence = page.query_selector("#spikes ~ table details")
            evidence.query_selector("summary").click()
            ev_text = evidence.inner_text()
        finally:
            browser.close()
    assert "NO_SOCKET" in ev_text and "0x8000000000001234" in ev_text, ev_text
    assert "-9223372036854771148" not in ev_text

    img = Image.open(shot).convert("RGB")
    scale = img.width / box["width"]
    left, top = (axes["x"] - box["x"]) * scale, (axes["y"] - box["y"]) * scale
    width, height = axes["w"] * scale, axes["h"] * scale
    target = _rgb(MEDIAN_COLOR)
    xs, ys = [], []
    px = img.load()
    for x in range(int(left), int(left + width)):
        for y in range(int(top), int(top + height)):
            if sum(abs(a - b) for a, b in zip(px[x, y], target)) < 60:
                xs.append(x)
                ys.append(y)
    # the median is drawn across the run, once per burst at least ...
    assert len({int((x - left) / width * BURSTS) for x in xs}) >= 0.8 * BURSTS, len(xs)
    assert (max(xs) - min(xs)) > 0.8 * width
    # ... at the bottom of the log axis (0.3 ms), far below the 1 s spikes (a bin that holds only
    # a stalled transaction has a 1 s median, rightly, and lines join it: so most of it, not all)
    low = sum(1 for y in ys if y > top + 0.6 * height)
    assert low > 0.6 * len(ys), (low, len(ys))
