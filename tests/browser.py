"""A real headless Chromium for page tests: Debian's `chromium` driven by Playwright.

Playwright's own browser download is never used (no network): the system browser is launched by
path. Without it (a developer machine without the package) the tests skip, except under CI, where
.ci/run installs it and a missing browser is a failure.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

CHROMIUM = os.environ.get("GPTOSS_TEST_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
ARGS = ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--no-first-run", "--disable-sync", "--disable-extensions",
        "--disable-default-apps", "--disable-dev-shm-usage"]
SHOTS = Path(os.environ.get("GPTOSS_SHOTS_DIR", "/tmp/webui-shots"))


def launch(playwright):
    if not Path(CHROMIUM).exists():
        if os.environ.get("CI"):
            pytest.fail(f"no chromium at {CHROMIUM}: .ci/run installs Debian's chromium")
        pytest.skip(f"no chromium at {CHROMIUM} (apt-get install chromium)")
    return playwright.chromium.launch(executable_path=CHROMIUM, args=ARGS)


def shoot(page, out_dir: Path, name: str, full_page: bool = False) -> Path:
    """Screenshot into the test's folder and a copy into SHOTS for people to look at."""
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"{name}.png"
    page.screenshot(path=str(path), full_page=full_page)
    try:
        SHOTS.mkdir(parents=True, exist_ok=True)
        shutil.copy(path, SHOTS / path.name)
    except OSError:
        pass
    return path
