"""The overview dashboard's load time in headless Chromium: first paint, first screenful, load event, all charts.

Run: ``PYTHONPATH=. python bench/bench_dashboard.py [--loads 10] [--events 24000] [--ab DIR]``
(``--ab DIR`` also serves another checkout, e.g. ``git worktree add --detach /tmp/dash-main main``,
on the same databases, and alternates page loads between the two).

What it does, all on this machine and in a temporary directory: starts the ClickHouse server and
gunicorn with the production config (as ``bench_metrics.py --no-stack``), fills ClickHouse with
``bench_metrics.generate``'s synthetic views (30 days), logs a staff analyst in through the admin's
login page in Debian's Chromium (driven by Playwright, as ``tests/metrics/test_browser.py`` does),
then loads ``/dashboards/`` ``--loads`` times per range (24 h, 7 d) with the query cache off, so
every load asks ClickHouse. Per load, from the browser's Navigation Timing: the server's part
(request sent to first byte), the first contentful paint (Paint Timing), "usable": the moment every
chart of the first screenful (1400 x 1000, the page at its top) carries ``data-drawn`` (plotly
finished; an init script records when each chart gets it), the load event, and the moment every
chart of the page carries it, without scrolling. The first load per target is a warm-up.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from analytics_platform.devstack import processes  # noqa: E402
from bench.bench_metrics import generate, percentiles, stop, web_start  # noqa: E402

CHROMIUM = "/usr/bin/chromium"
USER, PASSWORD = "bench-staff", "bench-password-123"
#: Run before any script of each page: the time each chart gets ``data-drawn`` (plotly finished),
#: so that the first screenful's charts can be told from the rest whatever order a page draws them in.
DRAWN_RECORD = """window.__drawnAt = {};
new MutationObserver(records => {
  for (const r of records) {
    const id = r.target.id;
    if (r.target.dataset.drawn === "1" && !(id in window.__drawnAt)) { window.__drawnAt[id] = performance.now(); }
  }
}).observe(document, {subtree: true, attributes: true, attributeFilter: ["data-drawn"]});"""
#: Milliseconds since navigation start: the server's part (request to first byte), the first
#: contentful paint, "usable" (every chart of the first screenful drawn, the page at its top), the
#: load event, and every chart of the page drawn (without scrolling).
MEASURE = """() => new Promise(resolve => {
  const done = () => {
    const ids = JSON.parse(document.getElementById("charts-data").textContent).map(c => c.id);
    const drawnAt = window.__drawnAt;
    const fcp = performance.getEntriesByName("first-contentful-paint")[0];
    // The first paint can come after every chart is drawn (scripts that hold the renderer): wait for it.
    if (ids.some(id => !(id in drawnAt)) || document.readyState !== "complete" || (!fcp && performance.now() < 30000)) {
      return requestAnimationFrame(done);
    }
    const nav = performance.getEntriesByType("navigation")[0];
    const inView = ids.filter(id => document.getElementById(id).getBoundingClientRect().top < innerHeight);
    resolve({
      server: nav.responseStart - nav.requestStart,
      fcp: fcp ? fcp.startTime : NaN,
      usable: Math.max(fcp ? fcp.startTime : 0, ...inView.map(id => drawnAt[id])),
      load: nav.loadEventEnd,
      drawn: Math.max(...ids.map(id => drawnAt[id])),
      charts: ids.length,
      first_screen: inView.length,
    });
  };
  done();
})"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--loads", type=int, default=10, help="page loads per range and target")
    parser.add_argument("--events", type=int, default=24_000, help="raw events (30 per view)")
    parser.add_argument("--ab", type=Path, help="another checkout to serve beside this one (B), same data")
    args = parser.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="bench-dashboard-"))
    log = tmp / "stack.log"
    ch = processes.clickhouse_start(data_dir=tmp / "clickhouse")
    webs: list[Any] = []
    try:
        env = {
            **os.environ,
            "ANALYTICS_ENV": "local",
            "ANALYTICS_VAR_DIR": str(tmp / "var"),
            "DATABASE_URL": f"sqlite:///{tmp / 'db.sqlite3'}",
            "CLICKHOUSE_HOST": ch.host,
            "CLICKHOUSE_PORT": str(ch.port),
            "CLICKHOUSE_PASSWORD": ch.password or "",  # the server generates one (processes.clickhouse_start)
            "CLICKHOUSE_DATABASE": "bench",
            "METRICS_QUERY_CACHE_SECONDS": "0",
            "LOG_LEVEL": "WARNING",
            "DJANGO_SETTINGS_MODULE": "analytics_platform.settings",
        }
        os.environ.update(env)
        import django

        django.setup()
        from django.contrib.auth import get_user_model
        from django.contrib.auth.models import Group
        from django.core.management import call_command

        from analytics_platform.clickhouse import client_get, database_ensure
        from metrics import query

        database_ensure()
        call_command("migrate", interactive=False, verbosity=0)
        call_command("migrate", database="clickhouse", interactive=False, verbosity=0)
        call_command("collectstatic", interactive=False, verbosity=0)  # whitenoise serves plotly.js from there
        user = get_user_model().objects.create_user(username=USER, password=PASSWORD, is_staff=True)
        user.groups.add(Group.objects.get(name="analysts"))
        client = client_get()
        end = datetime.now(UTC).replace(minute=0, second=0, microsecond=0)
        generate(client, events=args.events, days=30, end=end)
        for table in query.ROLLUPS:
            client.execute(f"OPTIMIZE TABLE {table} FINAL")
        client.disconnect()

        targets = [("A", ROOT)] + ([("B", args.ab.resolve())] if args.ab else [])
        ports = {}
        for name, checkout in targets:
            web, port = web_start(checkout, env, log)
            webs.append(web)
            ports[name] = port
            print(f"{name}: {checkout} on :{port}")
        print(f"{args.events:,} events; load {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores; query cache off")
        report(browse(ports, loads=args.loads))
    finally:
        for web in webs:
            stop(web)
        ch.stop()
        shutil.rmtree(tmp, ignore_errors=True)


#: The figures per load, in the order printed.
KEYS = ("server", "fcp", "usable", "load", "drawn")


def report(results: dict[tuple[str, str], list[dict[str, float]]]) -> None:
    """p50 / p95 per range and target, and where B was served too, A's p50 over B's."""
    p50s: dict[tuple[str, str], dict[str, float]] = {}
    print(f"\n{'page, target':24}" + "".join(f"{key + ' p50/p95':>16}" for key in KEYS) + "  ms")
    for (range_key, name), rows in results.items():
        cells = []
        for key in KEYS:
            p50, p95, _ = percentiles([r[key] for r in rows])
            p50s.setdefault((range_key, name), {})[key] = p50
            cells.append(f"{p50:7.0f} / {p95:6.0f}")
        counts = f"({rows[-1]['first_screen']:.0f} of {rows[-1]['charts']:.0f} charts in the first screenful)"
        print(f"  {f'range={range_key} {name}':22}" + "".join(f"{c:>16}" for c in cells) + f"  {counts}")
    for (range_key, name), a in p50s.items():
        b = p50s.get((range_key, "B"))
        if name == "A" and b:
            print(f"  range={range_key} p50 A/B: " + ", ".join(f"{key} {a[key] / b[key]:.2f}" for key in KEYS))


def browse(ports: dict[str, int], *, loads: int) -> dict[tuple[str, str], list[dict[str, float]]]:
    from playwright.sync_api import sync_playwright

    results: dict[tuple[str, str], list[dict[str, float]]] = {}
    with sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path=CHROMIUM,
            args=["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update"],
        )
        try:
            pages = {}
            for name, port in ports.items():
                context = browser.new_context(viewport={"width": 1400, "height": 1000})
                context.add_init_script(DRAWN_RECORD)
                page = context.new_page()
                page.goto(f"http://127.0.0.1:{port}/admin/login/?next=/dashboards/")
                page.fill("#id_username", USER)
                page.fill("#id_password", PASSWORD)
                page.click("input[type=submit]")
                page.wait_for_url("**/dashboards/**")
                page.evaluate(MEASURE)  # warm-up: plotly.js cached, connections open
                pages[name] = (page, port)
            for range_key in ("24h", "7d"):
                for _ in range(loads):
                    for name, (page, port) in pages.items():  # interleaved: A and B see the same load
                        page.goto(f"http://127.0.0.1:{port}/dashboards/?range={range_key}")
                        measured = page.evaluate(MEASURE)
                        assert measured["charts"] > 0, measured
                        results.setdefault((range_key, name), []).append(measured)
                        time.sleep(0.05)
        finally:
            browser.close()
    return results


if __name__ == "__main__":
    main()
