"""Open a page in headless Chromium (Debian's chromium + chromium-driver) and read back its media."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pytest


def _browser():
    webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed")
    chromium = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
    driver_bin = shutil.which("chromedriver")
    if not chromium or not driver_bin:
        pytest.skip("no headless browser here (install Debian's chromium and chromium-driver)")
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    opts = Options()
    opts.binary_location = chromium
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--mute-audio"):
        opts.add_argument(arg)
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    return webdriver.Chrome(service=Service(driver_bin), options=opts)


CHECK_MEDIA = """
const done = arguments[arguments.length - 1];
const audios = Array.from(document.querySelectorAll('audio'));
Promise.all(audios.map(a => new Promise(resolve => {
  if (a.readyState >= 1 || a.error) return resolve();
  a.addEventListener('loadedmetadata', resolve, {once: true});
  a.addEventListener('error', resolve, {once: true});
  a.load();
}))).then(() => done({
  audio: audios.map(a => ({src: a.currentSrc.slice(0, 30), duration: a.duration, error: a.error && a.error.code,
                           playable: a.canPlayType('audio/flac')})),
  images: Array.from(document.images).map(i => ({complete: i.complete, width: i.naturalWidth})),
  svgs: document.querySelectorAll('svg polyline').length,
}));
"""


def open_in_browser(page: Path) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """``(media, errors)``: every audio element's duration, error and FLAC support, every image's state and
    the chart lines, once the audio metadata has loaded; and the browser's SEVERE log entries."""
    driver = _browser()
    try:
        driver.set_script_timeout(60)
        driver.get(page.as_uri())
        media = driver.execute_async_script(CHECK_MEDIA)
        errors = [e for e in driver.get_log("browser") if e["level"] == "SEVERE"]
    finally:
        driver.quit()
    return media, errors
