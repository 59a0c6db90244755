"""card.html in a real browser: headless Chromium loads it without script errors, decodes its images, and lays it
out so that a reader can use it (no overlapping boxes in a figure or table, no word broken inside itself, a
navigation link to every section).

Skipped (with the reason) where no Chromium is installed (Debian: ``apt-get install chromium``).
"""

import html
import json
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

# Injected likewise: after load, measures the laid-out page and writes a JSON report into data-layout.
#  overlaps: pairs of boxes that intersect (more than 1 px each way: collapsed borders share a line) among the
#            cells of one table row, the rows of one table, the picture and caption of one figure, the figures
#            side by side, and the texts of one inline SVG;
#  broken:   words (runs of non-space text outside <pre>) laid out on more than one line, unless the line ends
#            at a hyphen or a dash (where text may wrap);
#  headings / links: ids of the h2/h3 headings and the targets of the navigation's links;
#  overflow: how far the page is wider than the window (a table scrolls in its own box instead).
LAYOUT = r"""<script>
window.addEventListener('load', function () {
  function boxes(list) { return Array.prototype.map.call(list, function (e) {
    var r = e.getBoundingClientRect(); return {e: e, l: r.left, t: r.top, r: r.right, b: r.bottom}; })
    .filter(function (x) { return x.r - x.l > 0 && x.b - x.t > 0; }); }
  function name(e) { return e.tagName.toLowerCase() + ':' + (e.textContent || e.getAttribute('alt') || '').slice(0, 40); }
  var overlaps = [];
  function check(where, list) {
    var bs = boxes(list);
    for (var i = 0; i < bs.length; i++) for (var j = i + 1; j < bs.length; j++) {
      var a = bs[i], b = bs[j];
      if (Math.min(a.r, b.r) - Math.max(a.l, b.l) > 1 && Math.min(a.b, b.b) - Math.max(a.t, b.t) > 1)
        overlaps.push(where + ': ' + name(a.e) + ' / ' + name(b.e));
    }
  }
  document.querySelectorAll('table').forEach(function (t, k) {
    Array.prototype.forEach.call(t.rows, function (row, i) { check('table ' + k + ' row ' + i, row.cells); });
    check('table ' + k + ' rows', t.rows);
  });
  document.querySelectorAll('figure').forEach(function (f, k) { check('figure ' + k, f.children); });
  var figs = document.querySelectorAll('figure');
  if (figs.length) check('figures', figs);
  document.querySelectorAll('svg').forEach(function (s, k) { check('svg ' + k, s.querySelectorAll('text')); });
  var broken = [], walker = document.createTreeWalker(document.body, NodeFilter.SHOW_TEXT), node, words = 0;
  while ((node = walker.nextNode())) {
    var p = node.parentElement;
    if (!p || p.closest('pre, script, style') || !p.getClientRects().length) continue;
    var re = /\S+/g, m;
    while ((m = re.exec(node.data))) {
      words++;
      var range = document.createRange(); range.setStart(node, m.index); range.setEnd(node, m.index + m[0].length);
      var tops = {};
      Array.prototype.forEach.call(range.getClientRects(), function (r) {
        if (r.width > 0) tops[Math.round(r.bottom)] = 1; });
      if (Object.keys(tops).length < 2) continue;
      // where the word wraps: the character whose line differs from the first character's
      var first = null, cut = -1;
      for (var i = 0; i < m[0].length; i++) {
        var c = document.createRange(); c.setStart(node, m.index + i); c.setEnd(node, m.index + i + 1);
        var rc = c.getClientRects(); if (!rc.length) continue;
        var b = Math.round(rc[0].bottom);
        if (first === null) first = b; else if (b !== first) { cut = i; break; }
      }
      if (cut < 1 || !/[-\u2013\u2014]/.test(m[0][cut - 1])) broken.push(m[0].slice(0, cut) + '|' + m[0].slice(cut));
    }
  }
  var ids = Array.prototype.map.call(document.querySelectorAll('h2, h3'), function (h) {
    return h.id || ('(no id) ' + h.textContent); });
  var links = Array.prototype.map.call(document.querySelectorAll('nav a'), function (a) { return a.getAttribute('href'); });
  document.body.setAttribute('data-layout', JSON.stringify({overlaps: overlaps, broken: broken, words: words,
    headings: ids, links: links, overflow: document.documentElement.scrollWidth - window.innerWidth,
    tables: document.querySelectorAll('table').length, figures: figs.length}));
});
</script>"""


def chromium() -> str | None:
    for path in CANDIDATES:
        if Path(path).exists():
            return path
    return shutil.which("chromium")


NO_CHROMIUM = pytest.mark.skipif(chromium() is None, reason="no Chromium found at /usr/bin/chromium (Debian package "
                                                              "'chromium'); the browser check needs a real browser")


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


@NO_CHROMIUM
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
    assert images == 3 and decoded == images and errors == 0  # two figures and the first screen's picture
    # the markup-laden class name was shown as text, never executed as a script
    assert "alert(&quot;x&quot;)" in res.stdout or 'alert("x")' in res.stdout
    shot = tmp_path / "shot.png"
    res = run_browser(exe, ["--window-size=1000,1400", f"--screenshot={shot}", (folder / "card.html").as_uri()],
                      tmp_path / "profile2")
    assert res.returncode == 0 and shot.exists(), res.stderr[-2000:]
    pixels = np.asarray(Image.open(shot).convert("L"))
    assert pixels.std() > 5  # a rendered page, not a blank one


def layout_report(page: Path, width: int, profile: Path) -> dict:
    """The LAYOUT report of ``page`` laid out in a window ``width`` pixels wide."""
    probe = page.with_name(f"layout_{width}.html")
    probe.write_text(page.read_text().replace("<head>", "<head>" + LAYOUT, 1))
    res = run_browser(chromium(), [f"--window-size={width},1200", "--virtual-time-budget=5000", "--dump-dom",
                                   probe.as_uri()], profile)
    assert res.returncode == 0, res.stderr[-2000:]
    match = re.search(r'data-layout="([^"]*)"', res.stdout)
    assert match, res.stdout[:2000]
    return json.loads(html.unescape(match.group(1)))


@NO_CHROMIUM
@pytest.mark.parametrize("width", [1280, 720])
@pytest.mark.parametrize("which", ["shapes audit", "shipped Lite0 card"])
def test_card_layout_has_no_overlaps_no_broken_words_and_a_link_to_every_section(shapes_audit, tmp_path, width, which):
    if which == "shapes audit":
        folder = shapes_audit
    else:  # the shipped Lite0 card on photo crops (1000 classes, every stage), rendered by this version
        from inspectnet.pipelines.audit.card import publish

        folder = tmp_path / "lite0"
        publish(Path(__file__).resolve().parent.parent / "model_cards" / "lite0_imagenet_photos", folder)
    report = layout_report(folder / "card.html", width, tmp_path / "profile")
    assert report["tables"] >= 8 and report["figures"] >= 3 and report["words"] > 500  # a whole card was measured
    assert report["overlaps"] == []
    assert report["broken"] == []
    assert not [h for h in report["headings"] if h.startswith("(no id)")]
    assert sorted(report["links"]) == sorted(f"#{h}" for h in report["headings"])
    assert report["overflow"] <= 1  # wide tables scroll in their own box; the page never scrolls sideways


@NO_CHROMIUM
def test_layout_check_sees_a_broken_word_and_overlapping_boxes(tmp_path):
    """The check itself: a page with a word forced to break and two overlapping cells fails it."""
    page = tmp_path / "bad.html"
    page.write_text("<!DOCTYPE html><html><head><meta charset='utf-8'></head><body>"
                    "<nav><a href='#a'>A</a></nav><h2 id='a'>A</h2><h2>B</h2>"
                    "<p style='width:60px;overflow-wrap:anywhere'>espressoespresso blocks.0</p>"
                    "<table><tr><td>one</td><td style='position:relative;left:-30px'>two</td></tr></table>"
                    "<figure><img src='' width='40' height='40'><figcaption style='margin-top:-30px'>x</figcaption>"
                    "</figure></body></html>")
    report = layout_report(page, 800, tmp_path / "profile")
    assert any(w.startswith("espresso") and "|" in w for w in report["broken"])
    assert any(o.startswith("table 0 row 0") for o in report["overlaps"])
    assert any(o.startswith("figure 0") for o in report["overlaps"])
    assert report["headings"] == ["a", "(no id) B"] and report["links"] == ["#a"]
