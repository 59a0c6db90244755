"""card.html in a real browser: headless Chromium loads it without script errors and decodes its images.

Skipped (with the reason) where no Chromium is installed (Debian: ``apt-get install chromium``).
"""

import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from inspectnet.pipelines.audit.card import write_card

CANDIDATES = ("/usr/bin/chromium", "/usr/bin/chromium-browser", "/usr/bin/google-chrome")
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-dev-shm-usage"]

# Injected into a copy of the page only: records script errors, then after load reports whether every
# <img> decoded (complete with a natural width) into an attribute that --dump-dom prints.
CHECK = """<script>window.__errs=[];window.addEventListener('error',function(e){window.__errs.push(String(e.message));});
window.addEventListener('load',function(){var im=Array.prototype.slice.call(document.images);
var ok=im.filter(function(i){return i.complete&&i.naturalWidth>0;}).length;
document.body.setAttribute('data-check','images='+im.length+' decoded='+ok+' errors='+window.__errs.length);});
</script>"""


def chromium() -> str | None:
    for path in CANDIDATES:
        if Path(path).exists():
            return path
    return shutil.which("chromium")


def run_browser(exe: str, args: list[str], profile: Path, timeout: float = 90) -> subprocess.CompletedProcess:
    return subprocess.run([exe, *FLAGS, f"--user-data-dir={profile}", *args], capture_output=True, text=True,
                          timeout=timeout)


def _card_folder(tmp_path: Path) -> Path:
    from tests.test_card import _card

    for rel in ("rules/tree.png", "attributions/inputs/attr_000.png"):
        path = tmp_path / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray((np.random.default_rng(0).random((32, 48, 3)) * 255).astype(np.uint8)).save(path)
    write_card(_card(), tmp_path)
    return tmp_path


@pytest.mark.skipif(chromium() is None, reason="no Chromium found at /usr/bin/chromium (Debian package "
                                               "'chromium'); the browser check needs a real browser")
def test_card_html_loads_in_chromium_with_images(tmp_path):
    folder = _card_folder(tmp_path)
    page = (folder / "card.html").read_text()
    checked = folder / "checked.html"
    checked.write_text(page.replace("<head>", "<head>" + CHECK, 1))
    exe = chromium()
    res = run_browser(exe, ["--virtual-time-budget=5000", "--dump-dom", checked.as_uri()], tmp_path / "profile")
    assert res.returncode == 0, res.stderr[-2000:]
    match = re.search(r'data-check="images=(\d+) decoded=(\d+) errors=(\d+)"', res.stdout)
    assert match, res.stdout[:2000]
    images, decoded, errors = map(int, match.groups())
    assert images == 2 and decoded == images and errors == 0
    # the markup-laden class name was shown as text, never executed as a script
    assert "alert(&quot;x&quot;)" in res.stdout or 'alert("x")' in res.stdout
    shot = tmp_path / "shot.png"
    res = run_browser(exe, ["--window-size=1000,1400", f"--screenshot={shot}", (folder / "card.html").as_uri()],
                      tmp_path / "profile2")
    assert res.returncode == 0 and shot.exists(), res.stderr[-2000:]
    pixels = np.asarray(Image.open(shot).convert("L"))
    assert pixels.std() > 5  # a rendered page, not a blank one
