"""The per-run HTML report: self-contained, escaped, and every plot loads in a real browser."""

import os
import re
from pathlib import Path

import pytest

from offramp.planning.capacity import plan_capacity
from pipelines.report import render_report, write_report
from tests.conftest import make_summary

CHROMIUM = "/usr/bin/chromium"
# Headless, and nothing that would reach the network (updates, sync, QUIC probes).
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]  # fmt: skip
PLOTS = {
    "survival-by-layer": "survival by layer",
    "exit-histogram": "exit-layer histogram",
    "stage-throughput": "per-stage throughput and utilization",
    "audit-agreement": "audit agreement by exit layer",
}
AUDIT = {
    "fraction": 0.05, "seed": 0, "rows": 50, "agree": 47, "agreement": 0.94, "lower": 0.84, "upper": 0.98,
    "confidence": 0.95, "target": 0.95, "status": "below_target",
    "by_layer": {
        "1": {"rows": 25, "agree": 25, "agreement": 1.0, "lower": 0.87, "upper": 1.0},
        "3": {"rows": 10, "agree": 8, "agreement": 0.8, "lower": 0.49, "upper": 0.94},
        "6": {"rows": 15, "agree": 14, "agreement": 0.933, "lower": 0.70, "upper": 0.99},
    },
    "extra_row_layers": 120, "extra_cost_fraction": 0.046,
}  # fmt: skip


def report_inputs():
    summary = make_summary(audit=AUDIT, run_id="run<42>")
    summary["run"]["input"] = "data/<script>alert(1)</script>.parquet"
    return summary, plan_capacity(summary, target_docs_per_hour=720_000, headroom=1.0)


def test_report_is_self_contained_and_escapes_user_strings():
    summary, plan = report_inputs()
    page = render_report(summary, plan)
    assert "<script>" not in page and "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert "run&lt;42&gt;" in page
    assert not re.search(r"""(src|href)=["']?(https?:)?//""", page)  # nothing loaded from elsewhere
    for slug, alt in PLOTS.items():
        assert re.search(f'<img id="{slug}" alt="{alt}" src="data:image/png;base64,', page), slug
    assert "47 of 50 audited rows" in page and "0.7000" in page  # audit line and the accuracy headline


def test_report_without_audit_or_plan_says_why():
    summary = make_summary(audit=None)
    page = render_report(summary, None)
    assert 'id="audit-agreement"' not in page and "No audit sample" in page
    assert "No capacity plan" in page and "jobs/plan_capacity.py" in page
    page = render_report(summary, None, no_plan_reason="the run did not record stage timings")
    assert "the run did not record stage timings" in page


@pytest.fixture
def browser():
    if not Path(CHROMIUM).exists():
        if os.environ.get("OFFRAMP_SKIP_BROWSER") == "1":
            pytest.skip(f"{CHROMIUM} missing and OFFRAMP_SKIP_BROWSER=1")
        pytest.fail(f"{CHROMIUM} not found: apt-get install chromium (or set OFFRAMP_SKIP_BROWSER=1 to skip)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield b
        b.close()


def test_report_plots_load_and_the_recommendation_reads_in_a_browser(browser, tmp_path):
    summary, plan = report_inputs()
    path = write_report(summary, plan, str(tmp_path / "report.html"))
    page = browser.new_page(viewport={"width": 1100, "height": 900})
    page.goto(Path(path).as_uri(), wait_until="load")
    for slug, alt in PLOTS.items():
        img = page.locator(f"img#{slug}")
        assert img.get_attribute("alt") == alt
        assert img.evaluate("e => e.complete && e.naturalWidth") > 0, f"{slug} did not load"
    recommendation = page.locator("#recommendation").inner_text()
    rows = [line.split("\t") for line in recommendation.splitlines() if line.startswith(("0\t", "1\t"))]
    assert [r[4] for r in rows] == ["2", "4"]  # the actors column: see test_capacity
    assert "Target 720,000 docs/hour with 6 actors" in recommendation
    assert "linearly" in recommendation
    page.screenshot(path=str(tmp_path / "report.png"), full_page=True)
    assert (tmp_path / "report.png").stat().st_size > 10_000
