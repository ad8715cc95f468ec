"""The report as a researcher sees it: figures first, one colour per method in every figure,
labelled axes, loss curves one panel per method, held-out score-vs-step curves, KL with its
interval, no notes about figures that were never meant to be drawn, no duplicate table of
contents entries, and the page as a real browser (chromium's headless shell) renders it.

Before (issue 16, item 10): the figures came after a ~170-row comparison table; colours were by
data set in some figures and by method in others, with three near-identical oranges; IPO's
~25-scale loss flattened every other loss curve; the curves had no y-axis label; "Diversity"
appeared twice in the contents and a red "Figure skipped: label-noise" on the quickstart.
"""
from __future__ import annotations

import json
import math
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from harness.report import build_report
from harness.report.plots import BASELINE_GREYS, PALETTE
from harness.report.tables import kl_text
from harness.results import JsonlWriter, atomic_write_json, atomic_write_yaml, write_status

ROOT = Path(__file__).resolve().parents[1]
LABELS = {"SFT": "sft", "DPO": "dpo", "IPO": "ipo", "SimPO": "simpo"}
BROWSERS = ("chromium-headless-shell", "chromium", "chromium-browser")


def _suite(root: Path) -> Path:
    """Two data sets x four rows x two seeds, with training logs (IPO's loss ~25, the others
    < 1) and held-out curves (eval_log.jsonl) for the trained rows."""
    s = root / "view"
    atomic_write_yaml(s / "suite.yaml", {"name": "view", "report": {"baseline": "DPO"},
                                         "methods": [{"name": m, "label": lab} for lab, m in LABELS.items()]})
    for ds in ("addition", "reverse"):
        for lab, meth in LABELS.items():
            for seed in (0, 1):
                d = s / f"{meth}-tiny-{ds}-s{seed}-0000"
                atomic_write_yaml(d / "config.yaml", {
                    "suite": "view", "model": {"name": "tiny"}, "dataset": {"name": ds, "label_noise": 0.0},
                    "method": {"name": meth, "label": lab, "hparams": {}}, "seed": seed})
                acc = 0.3 + 0.1 * list(LABELS).index(lab) + 0.02 * seed
                m = {"task/accuracy": acc, "task/n": 100, "kl/policy_ref": 0.0 if meth == "sft" else 0.5 + seed,
                     "cost/train_wall_s": 1.0 + seed, "diversity/self_bleu": 40.0 + seed}
                if meth != "sft":
                    m.update({"pref/accuracy": acc + 0.2, "pref/n": 50})
                    scale = 25.0 if meth == "ipo" else 0.7
                    with JsonlWriter(d / "train_log.jsonl") as w:
                        for step in range(1, 11):
                            w.write({"step": step, "loss": scale * (1 - 0.05 * step) + 0.01 * seed,
                                     "rewards/margins": 0.1 * step * (3 if meth == "simpo" else 1)})
                    with JsonlWriter(d / "eval_log.jsonl") as w:
                        for step in (0, 5, 10):
                            k = list(LABELS).index(lab)  # 1, 2, 3: each method its own line
                            w.write({"step": step, "pref/accuracy": 0.5 + 0.01 * step * k + 0.01 * seed,
                                     "pref/logratio_margin": 0.1 * step * k, "pref/n": 50})
                atomic_write_json(d / "metrics.json", m)
                write_status(d, "done")
    return s


@pytest.fixture(scope="module")
def view(tmp_path_factory):
    s = _suite(tmp_path_factory.mktemp("results"))
    return s, build_report(s)


def _rgb(hexcolor: str) -> np.ndarray:
    return np.array([int(hexcolor[i:i + 2], 16) for i in (1, 3, 5)], dtype=float)


def _lab(hexcolor: str) -> np.ndarray:
    """CIE L*a*b* (D65) of an sRGB colour, from the standard formulas."""
    c = _rgb(hexcolor) / 255
    c = np.where(c > 0.04045, ((c + 0.055) / 1.055) ** 2.4, c / 12.92)
    xyz = np.array([[0.4124, 0.3576, 0.1805], [0.2126, 0.7152, 0.0722], [0.0193, 0.1192, 0.9505]]) @ c
    xyz /= np.array([0.95047, 1.0, 1.08883])
    f = np.where(xyz > 0.008856, np.cbrt(xyz), 7.787 * xyz + 16 / 116)
    return np.array([116 * f[1] - 16, 500 * (f[0] - f[1]), 200 * (f[1] - f[2])])


def _hue(hexcolor: str) -> float:
    lab = _lab(hexcolor)
    return math.degrees(math.atan2(lab[2], lab[1])) % 360


def _closest(colors: list[str]) -> tuple[float, float]:
    """(smallest CIE76 distance, smallest hue-angle gap in degrees) between any two colours."""
    pairs = [(a, b) for i, a in enumerate(colors) for b in colors[i + 1:]]
    de = min(float(np.linalg.norm(_lab(a) - _lab(b))) for a, b in pairs)
    gap = min(min(abs(_hue(a) - _hue(b)), 360 - abs(_hue(a) - _hue(b))) for a, b in pairs)
    return de, gap


def test_the_palette_has_distinct_hues_and_greys_for_the_baselines():
    de, gap = _closest(PALETTE[:7])
    assert de > 30 and gap > 25  # seven methods, seven hues
    old_de, old_gap = _closest(["#de8f05", "#d55e00", "#ca9161"])  # seaborn colorblind's three oranges
    assert old_gap < 20 and old_de < de
    for grey in BASELINE_GREYS.values():
        r, g, b = _rgb(grey)
        assert r == g == b


def _pixels(png: Path) -> np.ndarray:
    from PIL import Image

    with Image.open(png) as im:
        return np.unique(np.asarray(im.convert("RGB")).reshape(-1, 3), axis=0).astype(float)


def _drawn(px: np.ndarray, rgb: tuple) -> bool:
    """Whether ``rgb`` is drawn (thin antialiased lines: within 16 of it in some pixel)."""
    return bool((np.linalg.norm(px - np.array(rgb, dtype=float), axis=1) <= 16).any())


def test_every_figure_draws_a_method_in_the_same_colour(view):
    suite, out = view
    html = (out / "report.html").read_text()
    key = dict(re.findall(r'background:(#[0-9A-Fa-f]{6})"></span>([^<]+)</span>', html))
    assert set(key.values()) == set(LABELS)
    colors = {lab: tuple(int(c[i:i + 2], 16) for i in (1, 3, 5)) for c, lab in key.items()}
    assert colors["SFT"] == tuple(_rgb(BASELINE_GREYS["sft"]).astype(int))
    for fig, labels in (("bars_accuracy", LABELS), ("reward_kl_frontier", LABELS),
                        ("training_loss", ["DPO", "IPO", "SimPO"]), ("heldout_curves", ["DPO", "IPO", "SimPO"])):
        px = _pixels(out / "figures" / f"{fig}.png")
        for lab in labels:
            assert _drawn(px, colors[lab]), (fig, lab)


def test_loss_curves_are_one_panel_per_method_with_labelled_axes(view):
    from harness.report.collect import collect
    from harness.report.curves import training_panels
    from harness.report.plots import method_colors

    col = collect(view[0])
    import matplotlib.figure

    made = []
    orig = matplotlib.figure.Figure.savefig

    def spy(self, *a, **k):
        made.append(self)
        return orig(self, *a, **k)

    matplotlib.figure.Figure.savefig = spy
    try:
        training_panels(col, method_colors(col), "loss")
    finally:
        matplotlib.figure.Figure.savefig = orig
    axes = [ax for ax in made[0].axes if ax.get_visible()]
    assert len(axes) == 6  # 3 trained methods x 2 data sets, each its own panel
    titles = [ax.get_title() for ax in axes]
    assert all(any(t.startswith(lab) for lab in ("DPO", "IPO", "SimPO")) for t in titles)
    assert all(ax.get_xlabel() == "optimizer step" for ax in axes)
    assert {ax.get_ylabel() for ax in axes} == {"training loss", ""}
    ipo = next(ax for ax in axes if ax.get_title().startswith("IPO"))
    dpo = next(ax for ax in axes if ax.get_title().startswith("DPO"))
    assert ipo.get_ylim()[1] > 15 and dpo.get_ylim()[1] < 1  # each loss on its own scale


def test_figures_come_first_and_the_contents_have_no_duplicates(view):
    _, out = view
    html = (out / "report.html").read_text()
    h2 = re.findall(r"<h2>([^<]+)</h2>", html)
    assert h2[0] == "Figures" and h2[-1] in ("Configuration", "Status and provenance")
    nav = html[html.index("<nav>"):html.index("</nav>")]
    entries = re.findall(r'<a href="#([^"]+)">([^<]+)</a>', nav)
    assert len({t for _, t in entries}) == len(entries)
    assert len({a for a, _ in entries}) == len(entries)
    for anchor, _ in entries:
        assert f'id="{anchor}"' in html
    assert "Diversity per method" in nav and "Diversity of samples" in nav  # figure vs table
    assert "skipped" not in html.lower()


def test_heldout_curves_show_the_score_against_the_step(view):
    _, out = view
    html = (out / "report.html").read_text()
    assert 'src="figures/heldout_curves.png"' in html
    assert html.index("fig-heldout_curves") < html.index("t-main_tiny_addition")


@pytest.mark.parametrize("stat, seeds, text", [
    ({"n": 3, "mean": 1.2, "ci_low": -0.3, "ci_high": 2.7}, 3, "1.200 [0.000, 2.700]"),
    ({"n": 3, "mean": -0.05, "ci_low": -0.35, "ci_high": 0.25}, 3, "≈0 [0.000, 0.250] (estimate -0.050)"),
    ({"n": 1, "mean": 0.8, "item_se": 0.1}, 1, "0.800 [0.604, 0.996]"),  # one seed: 1.96 x the item SE
    ({"n": 1, "mean": -0.2}, 1, "≈0 (estimate -0.200)"),
    ({"n": 2, "mean": 0.5, "ci_low": 0.1, "ci_high": 0.9}, 3, "0.500 [0.100, 0.900] (n=2)"),
])
def test_kl_cells_show_the_interval_and_never_a_bare_negative(stat, seeds, text):
    assert kl_text(stat, seeds) == text


# --------------------------------------------------------------------------- the browser
def _browser() -> str | None:
    return next((shutil.which(b) for b in BROWSERS if shutil.which(b)), None)


PROBE = """<script>
window.addEventListener('load', () => {
  const nav = [...document.querySelectorAll('nav a')];
  document.title = JSON.stringify({
    imgs: [...document.images].map(i => [i.getAttribute('src'), i.naturalWidth, i.getBoundingClientRect().top]),
    h2: [...document.querySelectorAll('h2')].map(h => h.textContent),
    toc: nav.map(a => a.textContent),
    dangling: nav.filter(a => !document.getElementById(a.getAttribute('href').slice(1))).length,
    overflow: document.documentElement.scrollWidth - window.innerWidth,
    firstTable: (document.querySelector('table') || {getBoundingClientRect: () => ({top: -1})})
      .getBoundingClientRect().top});
});
</script>"""


def _render(browser: str, out: Path, shot: Path) -> dict:
    """The page as chromium lays it out (a probe script in a copy of the page reports what it
    sees) and a screenshot of its first 1280 x 1600 pixels."""
    probe = out / "_probe.html"
    probe.write_text((out / "report.html").read_text().replace("</body>", PROBE + "</body>"))
    flags = ["--no-sandbox", "--hide-scrollbars", "--disable-gpu", "--window-size=1280,1600",
             "--virtual-time-budget=10000"]
    dom = subprocess.run([browser, *flags, "--dump-dom", probe.as_uri()], capture_output=True, text=True,
                         timeout=120).stdout
    subprocess.run([browser, *flags, f"--screenshot={shot}", (out / "report.html").as_uri()],
                   capture_output=True, timeout=120, check=True)
    probe.unlink()
    import html as h

    return json.loads(h.unescape(re.search(r"<title>(.*?)</title>", dom, re.S).group(1)))


def _check_page(seen: dict, shot: Path) -> None:
    from PIL import Image

    assert seen["imgs"] and all(w > 0 for _, w, _ in seen["imgs"]), seen["imgs"]  # every figure loads
    assert seen["h2"][0] == "Figures"
    assert len(set(seen["toc"])) == len(seen["toc"]) and seen["dangling"] == 0
    assert seen["overflow"] <= 0  # nothing wider than the window
    first_img = min(top for _, _, top in seen["imgs"])
    assert first_img < seen["firstTable"]  # a figure before any table
    with Image.open(shot) as im:
        px = np.asarray(im.convert("RGB")).astype(int)
    colourful = (px.max(-1) - px.min(-1) > 60).mean()  # share of saturated pixels on the first screen
    assert colourful > 0.01, colourful


@pytest.mark.slow
def test_the_page_in_a_real_browser(view, tmp_path):
    browser = _browser()
    if browser is None:
        pytest.skip("no chromium here: `apt-get install chromium-headless-shell` (scripts/setup.sh does it as root)")
    _, out = view
    shot = tmp_path / "view.png"
    _check_page(_render(browser, out, shot), shot)


@pytest.mark.slow
def test_the_committed_quickstart_report_in_a_real_browser(tmp_path):
    browser = _browser()
    if browser is None:
        pytest.skip("no chromium here: `apt-get install chromium-headless-shell` (scripts/setup.sh does it as root)")
    out = build_report(ROOT / "results" / "quickstart", out_dir=tmp_path / "report")
    shot = tmp_path / "quickstart.png"
    seen = _render(browser, out, shot)
    _check_page(seen, shot)
    assert not any("label" in t.lower() and "noise" in t.lower() for t in seen["toc"])
    assert len(seen["imgs"]) >= 8
