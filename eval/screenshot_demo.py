"""Screenshot of the demo page (GET /demo/{id}) in headless Chromium, for the README.

    python eval/screenshot_demo.py --out eval/results/demo_page.png

Ingests the bundled sample archive with the default model into a temporary data
dir (or --data-dir), starts `recommender serve` on loopback and asks Debian's
chromium for a screenshot of the diplomacy article's demo page.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from eval.bench_api import free_port, wait_ready
from recommender.serving.demo import DEMO_ARTICLE


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("eval/results/demo_page.png"))
    parser.add_argument("--data-dir", type=Path, default=None)
    parser.add_argument("--model", default="e5-small-q4")
    parser.add_argument("--size", default="1200,1100", help="window width,height")
    args = parser.parse_args()
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    if browser is None:
        raise SystemExit("Debian's chromium is needed: apt-get install chromium")
    data = args.data_dir or Path(tempfile.mkdtemp(prefix="demo-shot-"))
    env = dict(os.environ, RECOMMENDER_DATA_DIR=str(data), RECOMMENDER_MODEL=args.model)
    subprocess.run([sys.executable, "-m", "recommender.cli", "demo", "--data-dir", str(data), "--model", args.model],
                   env=env, check=True, stdout=subprocess.DEVNULL)
    port = free_port()
    server = subprocess.Popen([sys.executable, "-m", "recommender.cli", "serve", "--port", str(port),
                               "--log-level", "warning"], env=env)
    try:
        wait_ready(f"http://127.0.0.1:{port}")
        args.out.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory() as profile:
            subprocess.run([browser, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                            "--disable-background-networking", "--disable-component-update", "--disable-sync",
                            "--no-first-run", f"--user-data-dir={profile}", f"--window-size={args.size}",
                            f"--screenshot={args.out.resolve()}", f"http://127.0.0.1:{port}/demo/{DEMO_ARTICLE}"],
                           check=True, capture_output=True, timeout=120)
    finally:
        server.terminate()
        server.wait(timeout=30)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
