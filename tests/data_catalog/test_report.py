"""``calico catalog report``: the HTML page of a store version, parsed (numbers against the store's own tables)
and rendered in headless Chromium (marker ``browser``)."""
from __future__ import annotations

import base64
import io
import json
import math
import re
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest

from data_catalog.reader import open_version
from data_catalog.report import ReportConfig, pick_sweeps, region_colours, write_report
from shared.errors import ConfigError, InputError

CHROMIUM = Path("/usr/bin/chromium")


class _Page(HTMLParser):
    """Collects the elements the report promises: ids, imgs, table cells with data-*, figures, the title."""

    def __init__(self):
        super().__init__()
        self.ids: set[str] = set()
        self.imgs: list[dict] = []
        self.figures: list[dict] = []
        self.cells: dict[tuple[str, str], str] = {}  # (scene, col) -> data-value
        self.counts: dict[str, str] = {}
        self.title = ""
        self._in_title = False
        self._scene = None
        self._key = None
        self._table = None
        self.texts: list[str] = []

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if "id" in a:
            self.ids.add(a["id"])
        if tag == "title":
            self._in_title = True
        elif tag == "img":
            self.imgs.append(a)
        elif tag == "figure":
            self.figures.append(a)
        elif tag == "table":
            self._table = a.get("id")
        elif tag == "tr" and "data-scene" in a:
            self._scene = a["data-scene"]
        elif tag == "td" and "data-col" in a:
            self.cells[(self._scene, a["data-col"])] = a["data-value"]
        elif tag == "td" and "data-key" in a and self._table == "counts":
            self._key = a["data-key"]

    def handle_endtag(self, tag):
        if tag == "title":
            self._in_title = False
        elif tag == "td":
            self._key = None

    def handle_data(self, data):
        self.texts.append(data)
        if self._in_title:
            self.title += data
        if self._key:
            self.counts[self._key] = self.counts.get(self._key, "") + data


def _parse(path: Path) -> tuple[str, _Page]:
    text = path.read_text(encoding="utf-8")
    p = _Page()
    p.feed(text)
    return text, p


def _decode_png(src: str):
    from PIL import Image

    assert src.startswith("data:image/png;base64,"), src[:40]
    img = Image.open(io.BytesIO(base64.b64decode(src.split(",", 1)[1], validate=True)))
    img.load()
    return img


@pytest.fixture(scope="module")
def report(catalog_store, tmp_path_factory):
    store, vid = catalog_store
    out = tmp_path_factory.mktemp("report")
    res = write_report(store, None, out, ReportConfig(n_sweeps=3))
    return store, vid, res


def test_report_matches_the_store_tables(report):
    store, vid, res = report
    v = open_version(store, vid)
    assert res.path.name == f"{vid}.html" and res.version == vid
    text, page = _parse(res.path)
    assert vid in page.title
    for needed in ("title", "spec", "counts", "scenes", "config", "lineage", "plots-title", "bev-title"):
        assert needed in page.ids, needed
    # counts: the store's own numbers
    sw = v.sweeps_table()
    assert page.counts["sweeps"].replace(",", "") == str(sw.num_rows)
    assert page.counts["points"].replace(",", "") == str(int(np.sum(sw.column("points").to_numpy())))
    assert page.counts["errors"].replace(",", "") == str(v.errors_table().num_rows)
    assert page.counts["scenes_committed"] == str(len(v.scenes()))
    # per-scene table: every scene, every column, exact values
    rows = v.scenes_table().to_pylist()
    assert {s for s, _ in page.cells} == {r["scene"] for r in rows}
    for r in rows:
        for col in ("sweeps", "errors", "points", "regions_total", "store_bytes"):
            if (r["scene"], col) in page.cells:
                assert int(page.cells[(r["scene"], col)]) == r[col]
        for col in ("ground_fraction", "clusters_mean", "bytes_per_point"):
            assert math.isclose(float(page.cells[(r["scene"], col)]), r[col], rel_tol=1e-12)
    # every image is an embedded PNG that decodes, nothing external
    assert page.imgs and all(i["src"].startswith("data:image/png;base64,") for i in page.imgs)
    for i in page.imgs:
        im = _decode_png(i["src"])
        assert im.width > 100 and im.height > 100
        assert np.asarray(im.convert("L")).std() > 5  # not a blank picture
    assert "<script" not in text and "http://" not in text and "https://" not in text
    plots = {f["data-plot"] for f in page.figures if f.get("class") == "plot"}
    assert {"region_sizes", "ground_fraction", "clusters"} <= plots
    # bird's-eye pictures: the chosen sweeps, with the reader's counts
    bev = [f for f in page.figures if f.get("class") == "bev"]
    assert len(bev) == len(res.sweeps_drawn) == min(3, sw.num_rows)
    for f, (scene, idx, token) in zip(bev, res.sweeps_drawn):
        s = v.scene(scene).sweep(idx, arrays=("region",))
        assert (f["data-scene"], int(f["data-index"]), f["data-token"]) == (scene, idx, token)
        assert s.token == token
        assert int(f["data-points"]) == len(s)
        assert int(f["data-regions"]) == np.unique(s.region[s.region >= 0]).size


def test_chosen_sweeps_and_bad_tokens(catalog_store, tmp_path):
    store, vid = catalog_store
    tokens = open_version(store, vid).sweeps_table().column("token").to_pylist()
    res = write_report(store, vid[:6], tmp_path, ReportConfig(sweeps=(tokens[-1],)))
    assert [t for _, _, t in res.sweeps_drawn] == [tokens[-1]]
    _, page = _parse(res.path)
    assert [f["data-token"] for f in page.figures if f.get("class") == "bev"] == [tokens[-1]]
    with pytest.raises(InputError, match="not-a-token"):
        write_report(store, vid, tmp_path, ReportConfig(sweeps=("not-a-token",)))
    with pytest.raises(ConfigError, match="n_sweeps"):
        ReportConfig(n_sweeps=-1)


def test_strings_from_the_store_are_escaped(catalog_store, tmp_path):
    store, vid = catalog_store
    copy = tmp_path / "store"
    shutil.copytree(store, copy)
    vj = copy / "versions" / vid / "version.json"
    doc = json.loads(vj.read_text())
    evil = '<script>alert("x")</script><img src="http://example.com/a.png">&'
    doc["lineage"]["host"] = evil
    vj.write_text(json.dumps(doc))
    res = write_report(copy, vid, tmp_path / "out", ReportConfig(n_sweeps=0))
    text, page = _parse(res.path)
    assert "<script" not in text and 'src="http' not in text
    assert "&lt;script&gt;" in text
    assert evil in "".join(page.texts)  # shown as text, intact
    assert all(i["src"].startswith("data:") for i in page.imgs)


def test_index_lists_every_version_and_links_the_written_pages(catalog_store, tmp_path):
    """Two versions, one page written: both listed oldest first with their scenes and non-default parameters,
    only the one with a page is a link; strings from the store are escaped."""
    from data_catalog.report import write_index

    store, vid = catalog_store
    copy = tmp_path / "store"
    shutil.copytree(store, copy)
    doc = json.loads((copy / "versions" / vid / "version.json").read_text())
    other = "f" * 16
    doc2 = dict(doc, id=other, created_unix=doc["created_unix"] + 1,
                spec=dict(doc["spec"], config=dict(doc["spec"]["config"],
                                                   cluster=dict(doc["spec"]["config"]["cluster"], eps=0.77))),
                scenes=doc["scenes"] + ['<b>"x"</b>'])
    (copy / "versions" / other).mkdir()
    (copy / "versions" / other / "version.json").write_text(json.dumps(doc2))
    from preprocess.sweep import SweepConfig  # the caller (the CLI) passes the defaults

    write_report(copy, vid, tmp_path / "out", ReportConfig(n_sweeps=0))
    path = write_index(copy, tmp_path / "out", defaults=SweepConfig().to_dict())
    text = path.read_text()
    rows = re.findall(r'<tr data-version="(\w+)" data-page="(\d)">(.*?)</tr>', text)
    assert [(v, p) for v, p, _ in rows] == [(vid, "1"), (other, "0")]
    assert f'href="{vid}.html"' in text and f'href="{other}.html"' not in text
    n = len(doc["scenes"])
    assert f"{n} / {n}" in rows[0][2] and f"0 / {n + 1}" in rows[1][2]
    assert "cluster.eps=0.77" in rows[1][2] and "(defaults)" in rows[0][2]
    assert "<script" not in text and "<b>" not in text
    assert "not compared" in write_index(copy, tmp_path / "out").read_text()


def test_pick_sweeps_spreads_over_scenes():
    rows = [{"scene": f"s{k}", "index": i, "token": f"s{k}-{i}"} for k in range(5) for i in range(4)]
    got = pick_sweeps(rows, 5)
    assert len(got) == 5 and len({s for s, _, _ in got}) == 5
    got = pick_sweeps(rows, 12)
    assert len(got) == 12 and len({t for _, _, t in got}) == 12
    assert pick_sweeps(rows, 0) == [] and pick_sweeps([], 3) == []
    assert len(pick_sweeps(rows, 100)) == 20  # never more than there are


def test_region_colours_differ_between_neighbouring_ids():
    c = region_colours(np.arange(40))
    assert c.shape == (40, 4) and np.all((c >= 0) & (c <= 1))
    assert np.all(np.abs(np.diff(c[:, :3], axis=0)).sum(axis=1) > 0.1)


def test_cli_report(catalog_store, tmp_path):
    from typer.testing import CliRunner

    from calico.cli import app

    store, vid = catalog_store
    r = CliRunner().invoke(app, ["catalog", "report", "--store", str(store), "--out", str(tmp_path),
                                 "--n-sweeps", "1", "--no-progress"])
    assert r.exit_code == 0, r.output
    assert (tmp_path / f"{vid}.html").is_file() and vid in r.output
    assert "index of the store's versions" in r.output and (tmp_path / "index.html").is_file()
    r = CliRunner().invoke(app, ["catalog", "report", "--store", str(store), "nope", "--no-progress"])
    assert r.exit_code != 0 and isinstance(r.exception, InputError) and "nope" in str(r.exception)


def _chromium(*args: str, tmp: Path, timeout: float = 60) -> subprocess.CompletedProcess:
    cmd = [str(CHROMIUM), "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
           "--disable-background-networking", "--disable-component-update", "--disable-sync",
           f"--user-data-dir={tmp / 'chromium-profile'}", *args]
    return subprocess.run(cmd, check=False, capture_output=True, text=True, timeout=timeout)


def _colour_pixels(png: Path, rgb: tuple[int, int, int]) -> int:
    """Pixels of colour ``rgb`` (within 30 of it, summed over the channels) in a screenshot."""
    from PIL import Image

    a = np.asarray(Image.open(png).convert("RGB")).astype(int)
    return int((np.abs(a - np.array(rgb)).sum(axis=2) < 30).sum())


def _blue_pixels(png: Path) -> int:
    """Pixels of the histogram's bar colour (#3b75af) in a screenshot."""
    return _colour_pixels(png, (0x3B, 0x75, 0xAF))


@pytest.mark.browser
@pytest.mark.skipif(not CHROMIUM.exists(), reason=f"{CHROMIUM} not installed (apt-get install chromium)")
def test_report_renders_in_headless_chromium(report, tmp_path):
    from PIL import Image

    _, vid, res = report
    url = res.path.resolve().as_uri()
    dom = _chromium("--dump-dom", url, tmp=tmp_path)
    assert dom.returncode == 0, dom.stderr[-2000:]
    page = _Page()
    page.feed(dom.stdout)  # the DOM as Chromium built it: the page loaded and parsed
    assert vid in page.title and {"scenes", "counts", "bev-title"} <= page.ids
    assert len(page.imgs) == len(_parse(res.path)[1].imgs)

    shot = tmp_path / "shot.png"
    r = _chromium(f"--screenshot={shot}", "--window-size=1280,2000", url, tmp=tmp_path)
    assert r.returncode == 0 and shot.is_file(), r.stderr[-2000:]
    img = np.asarray(Image.open(shot).convert("L"))
    assert img.shape == (2000, 1280) and img.std() > 20  # not blank
    blue = _blue_pixels(shot)
    # control: the same page with its images broken has none of the plots' colour, so the pixels above come
    # from images the browser decoded
    broken = tmp_path / "broken.html"
    broken.write_text(res.path.read_text().replace("data:image/png;base64,", "data:image/png;base64,AAAA"))
    shot2 = tmp_path / "broken.png"
    r = _chromium(f"--screenshot={shot2}", "--window-size=1280,2000", broken.as_uri(), tmp=tmp_path)
    assert r.returncode == 0 and shot2.is_file(), r.stderr[-2000:]
    assert blue > 2000 and _blue_pixels(shot2) < blue / 20


def _audit_section(text: str) -> str:
    """The audit section of a report page as a page of its own (same head)."""
    head = text[:text.index("<body>") + len("<body>")]
    return head + text[text.index('<h2 id="audit-title">'):text.index('<h2 id="bev-title">')] + "</body></html>"


def test_report_audit_section_matches_the_sweeps_table(report):
    """The audit's numbers are the store's sweeps table's, the worst sweeps are the lowest-recall ones with at least
    WORST_MIN_OBJECTS objects, drawn with every annotated box of the keyframe (devkit) and their misses marked."""
    import pyarrow.parquet as pq

    from data_catalog.report import WORST_MIN_OBJECTS
    from shared.nuscenes_io import open_nuscenes

    store, vid, res = report
    text, page = _parse(res.path)
    assert {"audit-title", "audit", "audit-classes", "audit-bands", "audit-misses", "audit-worst-title"} <= page.ids
    rows = pq.read_table(Path(store) / "versions" / vid / "sweeps.parquet").to_pylist()
    objects, recovered = sum(r["audit_objects"] for r in rows), sum(r["audit_recovered"] for r in rows)
    assert f'data-key="recall" data-value="{recovered / objects}"' in text
    assert f'data-key="objects" data-value="{objects}"' in text
    car = sum(r["audit_objects_car"] for r in rows)
    assert re.search(rf'<tr data-class="car"><td>car</td><td class="num">{car:,}</td>', text)
    figs = [f for f in page.figures if f.get("class") == "bev-audit"]
    eligible = sorted((r for r in rows if r["audit_objects"] >= WORST_MIN_OBJECTS),
                      key=lambda r: (r["audit_recall"], -r["audit_objects"], r["scene"], r["index"]))
    assert [f["data-token"] for f in figs] == [r["token"] for r in eligible[:ReportConfig().n_worst]]
    info = open_version(store, vid).info["dataset"]
    nusc = open_nuscenes(info["dataroot"], info["version"])
    by_token = {r["token"]: r for r in rows}
    for f in figs:
        assert int(f["data-boxes"]) == len(nusc.get_sample_data(f["data-token"])[1])
        r = by_token[f["data-token"]]
        assert int(f["data-missed"]) == r["audit_objects"] - r["audit_recovered"]
        assert float(f["data-recall"]) == r["audit_recall"]
    assert sum(int(f["data-missed"]) for f in figs) > 0  # the browser test below looks for the misses' colour


@pytest.mark.browser
@pytest.mark.skipif(not CHROMIUM.exists(), reason=f"{CHROMIUM} not installed (apt-get install chromium)")
def test_report_audit_section_renders_in_headless_chromium(report, tmp_path):
    """Chromium builds the audit tables and draws the worst sweeps' pictures: the missed boxes' red is on screen,
    and not when the same section's images are broken (so it comes from the decoded pictures)."""
    _, _, res = report
    dom = _chromium("--dump-dom", res.path.resolve().as_uri(), tmp=tmp_path)
    assert dom.returncode == 0, dom.stderr[-2000:]
    page = _Page()
    page.feed(dom.stdout)
    assert {"audit", "audit-classes", "audit-bands", "audit-worst-title"} <= page.ids
    assert [f for f in page.figures if f.get("class") == "bev-audit"]
    section = _audit_section(res.path.read_text())
    shots = []
    for name, html_text in (("audit", section), ("broken", section.replace("data:image/png;base64,",
                                                                             "data:image/png;base64,AAAA"))):
        page_path, shot = tmp_path / f"{name}.html", tmp_path / f"{name}.png"
        page_path.write_text(html_text)
        r = _chromium(f"--screenshot={shot}", "--window-size=1280,4000", page_path.as_uri(), tmp=tmp_path)
        assert r.returncode == 0 and shot.is_file(), r.stderr[-2000:]
        shots.append(_colour_pixels(shot, (0xD6, 0x27, 0x28)))  # the missed boxes' red
    assert shots[0] > 100 and shots[1] < shots[0] / 20
