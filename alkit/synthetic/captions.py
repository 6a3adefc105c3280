"""The caption database: ARCH-style captions (books-set layout) with rendered images and their true kind.

Each caption is drawn from phrase templates of one kind (:data:`CAPTION_KINDS`; some figures have
several panels) and its image is a small layout of that kind rendered like a slide
(:mod:`alkit.synthetic.plan`, :mod:`alkit.synthetic.render`); ``truth.json`` records what each image shows.
"""

from __future__ import annotations

import json
import math
import uuid as uuidlib
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from alkit.atomic import atomic_write_text
from alkit.synthetic.layout import MITOSIS_CLASS, Figure
from alkit.synthetic.plan import make_layout
from alkit.synthetic.render import Renderer
from alkit.synthetic.sprites import BANK_SIZES, MITOSIS

CAPTION_KINDS = ("tumour", "normal", "mitosis", "artefact", "ihc")


def _pick(rng: np.random.Generator, options: list):
    return options[int(rng.integers(len(options)))]


def _wpick(rng: np.random.Generator, options: list[tuple]):
    w = np.array([o[0] for o in options], float)
    return options[int(rng.choice(len(options), p=w / w.sum()))][1:]


_STAINS = ["", " (H&E)", " (hematoxylin and eosin)", " (H&E, high power)"]
_T_FEATS = ["sheets of pleomorphic cells with hyperchromatic nuclei",
            "crowded, enlarged nuclei with prominent nucleoli",
            "solid nests of atypical epithelial cells",
            "cohesive clusters of large tumor cells with vesicular chromatin",
            "marked nuclear pleomorphism and scant stroma"]
_CARC = ["carcinoma", "cancer", "ductal carcinoma", "lobular carcinoma"]
_DESC = ["Invasive", "Poorly differentiated", "High-grade", "Infiltrating"]
_MAGS = ["Low-power view", "Medium-power view", "High-power view", "Overview", "Detail"]


def _tumour_phrase(rng) -> tuple[str, dict]:
    st, ft, ca, de, mg = (_pick(rng, _STAINS), _pick(rng, _T_FEATS), _pick(rng, _CARC),
                          _pick(rng, _DESC), _pick(rng, _MAGS))
    (text,) = _wpick(rng, [
        (0.26, f"{mg} of metastatic breast {ca} in a lymph node, with {ft}{st}."),
        (0.24, f"{de} breast {ca} composed of {ft}{st}."),
        (0.20, f"Lymph node replaced by metastatic breast {ca}; {ft}."),
        (0.10, f"{de} carcinoma with {ft}{st}."),
        (0.12, f"Photomicrograph of {de.lower()} breast {ca} ({_pick(rng, ['H&E', 'hematoxylin-eosin'])})."),
        (0.08, "Nests of malignant cells infiltrating the breast stroma (tumour cells, H&E)."),
    ])
    return text, {}


def _normal_phrase(rng) -> tuple[str, dict]:
    st = _pick(rng, _STAINS)
    nf = _pick(rng, ["fibrous stroma and scattered stromal cells", "dense collagenous stroma",
                     "bland spindle cells in a fibrous background"])
    lf = _pick(rng, ["reactive lymphoid follicles", "sheets of small mature lymphocytes",
                     "preserved nodal architecture"])
    text, lymph = _wpick(rng, [
        (0.28, f"Normal breast tissue with {nf}{st}.", 0.2),
        (0.25, f"Benign lymph node showing {lf}{st}.", 0.95),
        (0.17, "Reactive lymphoid tissue; no abnormal cells are seen.", 0.95),
        (0.15, f"Unremarkable fibrous stroma{st}.", 0.0),
        (0.03, f"Sentinel lymph node from a patient with breast cancer, negative for metastatic tumor{st}.", 0.95),
        (0.02, "Normal breast stroma next to the carcinoma shown in the previous figure.", 0.1),
    ])
    return text, {"lymph": lymph}


def _mitosis_phrase(rng) -> tuple[str, dict]:
    st = _pick(rng, _STAINS)
    mk = _pick(rng, ["arrowheads", "arrows"])
    text, marker = _wpick(rng, [
        (0.28, f"High-power view of a high-grade carcinoma; {mk} mark mitotic figures.", mk),
        (0.20, f"Numerous mitoses ({mk}) in a poorly differentiated carcinoma.", mk),
        (0.16, f"An atypical mitotic figure is circled{st}.", "circle"),
        (0.12, f"Mitotic figure in metaphase at the centre of the field{st}.", None),
        (0.16, "Photomicrograph of breast carcinoma with mitoses (arrowheads).", "arrowheads"),
        (0.04, "Breast carcinoma with brisk mitotic activity; mitotic figures are indicated by arrows.",
         "arrows"),
    ])
    return text, {"marker": marker}


def _artefact_phrase(rng, sub: str | None = None) -> tuple[str, dict]:
    sub = sub or _wpick(rng, [(0.3, "pen"), (0.25, "fold"), (0.25, "bubble"), (0.2, "blur")])[0]
    st = _pick(rng, _STAINS)
    meta: dict = {"subkind": sub}
    if sub == "pen":
        colour = _pick(rng, ["green", "blue", "black"])
        meta["pen_colour"] = colour
        (text,) = _wpick(rng, [
            (0.45, f"{colour.capitalize()} ink from a marker pen overlying the tissue (artefact)."),
            (0.43, f"Surgical ink marking on the slide surface{st}."),
            (0.08, "Pen marking on a breast cancer slide, not to be confused with tumor."),
        ])
    elif sub == "fold":
        (text,) = _wpick(rng, [(0.5, "Tissue fold producing a dark, overstained band (artefact)."),
                               (0.5, f"Folded section, an artefact of processing{st}.")])
    elif sub == "bubble":
        (text,) = _wpick(rng, [(0.5, "Air bubble trapped under the coverslip."),
                               (0.5, "Circular air bubbles obscure detail (artefact).")])
    else:
        (text,) = _wpick(rng, [(0.5, "Out-of-focus area of a scanned slide."),
                               (0.5, "Blurred region caused by a focus error during scanning.")])
    return text, meta


def _ihc_phrase(rng) -> tuple[str, dict]:
    text, mode, frac = _wpick(rng, [
        (0.24, "Immunohistochemistry for HER2 shows membranous staining of the carcinoma cells.",
         "membrane", None),
        (0.18, "ER immunostain with nuclear positivity in most tumor cells.", "nuclear", None),
        (0.18, "Cytokeratin IHC highlights isolated tumor cells in a sentinel lymph node from a "
               "breast cancer.", "membrane", 0.06),
        (0.22, "Immunohistochemical staining for Ki-67 in breast carcinoma; many nuclei are positive.",
         "nuclear", None),
        (0.10, "Photomicrography of an immunoperoxidase stain for progesterone receptor.", "nuclear", None),
        (0.04, "HER2-positive breast carcinoma with strong, complete membranous brown (DAB) staining.",
         "membrane", None),
    ])
    return text, {"ihc": mode, "tumour_fraction": frac}


_PHRASES = {"tumour": _tumour_phrase, "normal": _normal_phrase, "mitosis": _mitosis_phrase,
            "artefact": _artefact_phrase, "ihc": _ihc_phrase}
_SINGLE_WEIGHTS = [(0.36, "tumour"), (0.18, "normal"), (0.20, "mitosis"), (0.13, "artefact"),
                   (0.13, "ihc")]


def _multi_panel(rng) -> tuple[str, list[tuple[str, dict]]]:
    """A multi-panel figure: (caption, [(kind, meta) per panel])."""
    ca, ft = _pick(rng, _CARC), _pick(rng, _T_FEATS)
    (combo,) = _wpick(rng, [(3, "tumour+ihc"), (2, "tumour+tumour"), (2, "mitosis+mitosis"),
                            (1, "artefact+artefact"), (0.2, "normal+tumour"), (0.3, "tumour+mitosis"),
                            (1, "ihc+ihc")])
    if combo == "tumour+ihc":
        mode = _pick(rng, ["membrane", "nuclear"])
        marker = "cytokeratin" if mode == "membrane" else "estrogen receptor"
        return (f"A, Metastatic breast {ca} in a lymph node. B, Immunohistochemistry for {marker} "
                f"highlights the tumor cells.", [("tumour", {}), ("ihc", {"ihc": mode})])
    if combo == "tumour+tumour":
        return (f"A, Low-power view of metastatic breast {ca}. B, Higher magnification showing {ft}.",
                [("tumour", {"mpp": 1.0}), ("tumour", {"mpp": 0.25})])
    if combo == "mitosis+mitosis":
        mk = _pick(rng, ["arrows", "arrowheads"])
        return (f"A and B, Atypical mitotic figures ({mk}) in a high-grade carcinoma.",
                [("mitosis", {"marker": mk}), ("mitosis", {"marker": mk})])
    if combo == "artefact+artefact":
        return ("A, Tissue fold. B, Air bubble under the coverslip.",
                [("artefact", {"subkind": "fold"}), ("artefact", {"subkind": "bubble"})])
    if combo == "normal+tumour":
        return (f"A, Benign lymph node for comparison. B, Lymph node with metastatic breast {ca}.",
                [("normal", {"lymph": 0.95}), ("tumour", {})])
    if combo == "tumour+mitosis":
        return (f"A, Invasive breast {ca}. B, Higher magnification; arrowheads mark mitotic figures.",
                [("tumour", {}), ("mitosis", {"marker": "arrowheads"})])
    return ("A, Estrogen receptor immunostain. B, HER2 immunohistochemistry in the same breast "
            "carcinoma.", [("ihc", {"ihc": "nuclear"}), ("ihc", {"ihc": "membrane"})])


_SIZES = [224, 256, 288, 320, 384, 448, 512]


def _draw_markers(rgb: np.ndarray, pts: list[tuple[float, float]], marker: str | None,
                  mpp: float, rng: np.random.Generator) -> np.ndarray:
    if not marker or not pts:
        return rgb
    img = Image.fromarray(rgb)
    d = ImageDraw.Draw(img)
    p = 1.0 / mpp
    for x, y in pts:
        if marker == "circle":
            r = 12 * p
            d.ellipse([x - r, y - r, x + r, y + r], outline=(10, 10, 10), width=max(2, int(0.8 * p)))
            continue
        th = rng.uniform(0, 2 * np.pi)
        u = np.array([math.cos(th), math.sin(th)])
        v = np.array([-u[1], u[0]])
        tip = np.array([x, y]) + u * 8 * p
        size = max(10.0, 5 * p)
        base = tip + u * size
        tri = [tuple(tip), tuple(base + v * size * 0.45), tuple(base - v * size * 0.45)]
        d.polygon(tri, fill=(10, 10, 10))
        if marker == "arrows":
            d.line([tuple(base), tuple(base + u * size * 1.8)], fill=(10, 10, 10), width=max(2, int(0.6 * p)))
    return np.asarray(img)


def _caption_image(rng: np.random.Generator, kind: str, meta: dict, seed: int) -> tuple[np.ndarray, dict]:
    w, h = int(_pick(rng, _SIZES)), int(_pick(rng, _SIZES))
    truth: dict = {"kind": kind}
    pts: list[tuple[float, float]] = []
    if kind == "tumour":
        mpp = meta.get("mpp") or float(_pick(rng, [0.25, 0.25, 0.5, 1.0]))
        lay = make_layout(rng, w, h, mpp, tissue="full" if mpp < 1 else "partial",
                          tumour_fraction=rng.uniform(0.55, 0.9), figures=False,
                          lymph_level=rng.uniform(0, 0.5))
    elif kind == "normal":
        mpp = float(_pick(rng, [0.25, 0.5, 1.0]))
        lay = make_layout(rng, w, h, mpp, tissue="full" if mpp < 1 else "partial",
                          figures=False, lymph_level=meta.get("lymph", 0.3))
    elif kind == "mitosis":
        mpp = float(_pick(rng, [0.2, 0.25, 0.3]))
        lay = make_layout(rng, w, h, mpp, tissue="full", tumour_full=True, figures=False,
                          lymph_level=0.0)
        n = int(rng.integers(1, 4))
        taken: list[tuple[float, float]] = []
        for _ in range(60):
            if len(taken) >= n:
                break
            x, y = rng.uniform(0.25, 0.75) * w, rng.uniform(0.25, 0.75) * h
            if all((x - a) ** 2 + (y - b) ** 2 > (20 / mpp) ** 2 for a, b in taken):
                taken.append((x, y))
        lay.figures = [Figure(x, y, MITOSIS_CLASS, False, True, int(rng.integers(BANK_SIZES[MITOSIS])))
                       for x, y in taken]
        pts = taken
        truth["marker"] = meta.get("marker")
        truth["n_mitoses"] = len(taken)
        truth["figures"] = [[round(float(x), 1), round(float(y), 1)] for x, y in taken]  # image px (x, y)
    elif kind == "artefact":
        sub = meta["subkind"]
        mpp = float(_pick(rng, [0.5, 1.0, 2.0]))
        spec: dict = {sub: 1}
        size_um = min(w, h) * mpp
        if sub == "pen":
            spec["pen_colour"] = meta.get("pen_colour")
        elif sub == "bubble":
            spec["bubble"] = int(rng.integers(1, 4))
            spec["bubble_um"] = (0.15 * size_um, 0.4 * size_um)
        elif sub == "blur":
            spec["blur_um"] = (0.6 * size_um, 1.0 * size_um)
        elif sub == "fold":
            spec["fold_um"] = (0.06 * size_um, 0.15 * size_um)
            spec["fold_len"] = (0.7, 1.2)
        lay = make_layout(rng, w, h, mpp, tissue=_pick(rng, ["full", "partial"]),
                          distractors=spec, figures=False)
        truth["subkind"] = sub
    elif kind == "ihc":
        mpp = float(_pick(rng, [0.25, 0.5, 1.0]))
        frac = meta.get("tumour_fraction") or rng.uniform(0.4, 0.85)
        lay = make_layout(rng, w, h, mpp, tissue="full" if mpp < 1 else "partial",
                          tumour_fraction=frac, figures=False, ihc=meta.get("ihc", "membrane"),
                          lymph_level=rng.uniform(0, 0.5))
        truth["ihc"] = lay.ihc
    else:  # pragma: no cover - internal
        raise ValueError(kind)
    rgb, _ = Renderer(lay, seed).render(0, 0, w, h)
    if kind == "mitosis":
        rgb = _draw_markers(rgb, pts, meta.get("marker"), mpp, rng)
    truth.update({"mpp": mpp, "width": w, "height": h,
                  "stain": "IHC (DAB)" if lay.ihc else "H&E"})
    return rgb, truth


def write_captions(out: Path, n: int, seed: int, progress: bool) -> tuple[Path, Path]:
    """Write ``captions.json``, ``images/<uuid>.png`` and ``truth.json`` under ``out``."""
    img_dir = out / "images"
    img_dir.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng([int(seed) & 0xFFFFFFFF, 2])
    panels: list[tuple[int, str, str, str, dict]] = []  # (figure, letter, caption, kind, meta)
    fig = 0
    while len(panels) < n:
        if n - len(panels) >= 2 and rng.random() < 0.2:
            caption, parts = _multi_panel(rng)
            for letter, (kind, meta) in zip("ABC", parts):
                panels.append((fig, letter, caption, kind, meta))
        else:
            (kind,) = _wpick(rng, _SINGLE_WEIGHTS)
            caption, meta = _PHRASES[kind](rng)
            panels.append((fig, "Single", caption, kind, meta))
        fig += 1
    panels = panels[:n]
    captions: dict[str, dict] = {}
    truth: dict[str, dict] = {}
    it = enumerate(panels)
    if progress:
        from tqdm.auto import tqdm  # local: only progress bars need it (~0.1 s to import)
        it = tqdm(it, total=n, desc="caption images", unit="img", leave=False)
    for i, (fig_i, letter, caption, kind, meta) in it:
        uid = str(uuidlib.UUID(bytes=rng.bytes(16), version=4))
        img_rng = np.random.default_rng([int(seed) & 0xFFFFFFFF, 3, i])
        rgb, t = _caption_image(img_rng, kind, meta, seed)
        Image.fromarray(rgb).save(img_dir / f"{uid}.png", compress_level=1)
        fid = f"{fig_i:02d}"
        captions[str(i)] = {"figure_id": fid, "letter": letter, "caption": " " + caption, "uuid": uid}
        truth[str(i)] = {"uuid": uid, "figure_id": fid, "letter": letter, **t}
    cap_path, truth_path = out / "captions.json", out / "truth.json"
    atomic_write_text(cap_path, json.dumps(captions, indent=1, ensure_ascii=False) + "\n")
    atomic_write_text(truth_path, json.dumps(truth, indent=1, ensure_ascii=False) + "\n")
    return cap_path, truth_path
