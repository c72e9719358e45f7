"""Screenshots of the MLflow UI on a demo's runs, taken in headless Chromium: what the README's
MLflow tour shows, checked in a real browser.

    .venv/bin/gpt1 demo --size ci --workdir /tmp/d        # in /tmp/d's parent: ./mlflow.db
    python bench/mlflow_screenshots.py --store mlflow.db --out /tmp/shots [--task sentiment]

Writes experiments.png (the experiments list), pretrain.png (the pretrain run's charts),
sweep.png (a sweep's parent run with its trials expanded) and compare.png (Compare of those trials:
the parallel-coordinates plot of lr, λ and the dev metric). bench/mlflow-compare.png is the last.

It needs Playwright's Python package and a Chromium (`pip install playwright`, then `playwright
install chromium`, or a system one: --chromium /usr/bin/chromium); neither is a dependency of the
project. It starts `mlflow ui` on a free port of 127.0.0.1 and stops it at the end. The UI opens in
its GenAI view on a new browser profile; the script switches to "Model training" once, as a user
does (the experiments themselves are tagged to open in it).
"""

from __future__ import annotations

import argparse
import json
import socket
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from pathlib import Path


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--store", required=True, help="the SQLite file of the runs (a demo's mlflow.db)")
    p.add_argument("--out", required=True, help="directory for the PNG files")
    p.add_argument("--task", default="sentiment", help="the task whose sweep is shown")
    p.add_argument("--chromium", help="a Chromium executable (default: Playwright's own)")
    args = p.parse_args()
    store = Path(args.store).absolute()
    if not store.is_file():
        sys.exit(f"--store {store}: no such file; run the demo first")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mlflow = Path(sys.executable).parent / "mlflow"
    ui = subprocess.Popen(
        [str(mlflow), "ui", "--backend-store-uri", f"sqlite:///{store}", "--port", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        for _ in range(120):
            try:
                urllib.request.urlopen(base, timeout=2)
                break
            except OSError:
                time.sleep(0.5)
        pages = pages_of(base, args.task)
        shoot(base, pages, out, args.chromium)
    finally:
        ui.terminate()
        ui.wait(timeout=30)
    for name in pages:
        print(out / f"{name}.png")


def api(base: str, path: str, body: dict) -> dict:
    request = urllib.request.Request(
        f"{base}/api/2.0/mlflow/{path}",
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json"},
    )
    return json.loads(urllib.request.urlopen(request, timeout=30).read())


def pages_of(base: str, task: str) -> dict[str, str]:
    """The UI's addresses of the four pages, found through the REST API."""
    exps = {
        e["name"]: e["experiment_id"]
        for e in api(base, "experiments/search", {"max_results": 100})["experiments"]
    }
    pretrain_exp, sweep_exp = exps["gpt1-pretrain"], exps[f"gpt1-finetune-{task}"]
    (pretrain,) = api(base, "runs/search", {"experiment_ids": [pretrain_exp]})["runs"][:1]
    runs = api(base, "runs/search", {"experiment_ids": [sweep_exp], "max_results": 100})["runs"]
    children = [
        r["info"]["run_id"] for r in runs if "mlflow.parentRunId" in {t["key"] for t in r["data"]["tags"]}
    ]
    return {
        "experiments": "#/experiments",
        "pretrain": f"#/experiments/{pretrain_exp}/runs/{pretrain['info']['run_id']}/model-metrics",
        "sweep": f"#/experiments/{sweep_exp}",
        "compare": "#/compare-runs?runs="
        + urllib.parse.quote(json.dumps(children, separators=(",", ":")))
        + "&experiments="
        + urllib.parse.quote(json.dumps([sweep_exp])),
    }


def shoot(base: str, pages: dict[str, str], out: Path, chromium: str | None) -> None:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 1500, "height": 1000})
        page.goto(f"{base}/#/experiments")
        page.wait_for_timeout(4000)
        page.get_by_text("Model training", exact=True).first.click(timeout=10_000)
        for name, address in pages.items():
            page.goto(f"{base}/{address}")
            page.reload()  # the app routes by the address's hash: read it, and the stored choices, anew
            page.wait_for_timeout(6000)  # the charts draw after the data arrives
            close = page.get_by_role("button", name="Close", exact=True)  # the Assistant's panel
            if close.count():
                close.first.click()
                page.wait_for_timeout(500)
            if name == "sweep":  # the parent's trials, nested under it: its row's expander, left of its name
                box = page.get_by_text("sweep-", exact=False).first.bounding_box()
                page.mouse.click(box["x"] - 33, box["y"] + box["height"] / 2)
                page.wait_for_timeout(2000)
            page.screenshot(path=str(out / f"{name}.png"))
        browser.close()


if __name__ == "__main__":
    main()
