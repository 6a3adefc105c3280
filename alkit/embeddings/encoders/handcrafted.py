"""A hand-crafted H&E feature baseline: no download, no training, fast on CPU and GPU.

This is a baseline, not a deep model. Each 256-px patch (at 0.5 µm/px by default) becomes a vector of
interpretable statistics, computed batched in torch (no Python loop over images or pixels). Colour,
stain and nuclear maps are computed at half the input resolution (1 µm/px), texture at full, half
and quarter resolution; sizes below are for the default 0.5 µm/px input.

- **stains**: colour deconvolution (Ruifrok & Johnston's H&E-DAB matrix, as in ``skimage.color.rgb2hed``)
  of optical density into haematoxylin, eosin and DAB concentrations; with total optical density,
  brightness and saturation: mean, std and 10/50/90 % quantiles of each; mean RGB;
- **tissue**: share of stained pixels, mean H and E over them, H's share of the stain;
- **nuclei**: share of pixels (of the patch and of the tissue) above three haematoxylin thresholds;
  granulometry of the nuclear mask (area kept by morphological openings with 3-9 µm squares, done
  with separable max filters), a nucleus-count proxy (local maxima of smoothed haematoxylin) and
  greyscale openings of the haematoxylin map: dense, dark, large nuclei (tumour) score high;
- **texture**: gradient-magnitude statistics and a local-binary-pattern-like histogram (how many of
  the 8 neighbours are brighter than the centre) at three scales;
- **artefacts**: shares of white (glass), very dark (ink, folds) and very saturated (ink, blood) pixels.

Features are standardised with fixed constants (mean / std of each feature over patches of real H&E
slides, see ``experiments/calibrate_handcrafted.py``), so they are roughly zero-mean, unit-variance
and comparable by cosine similarity. Thresholds are in optical-density units (natural log).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from alkit.embeddings.encoders.base import Encoder, EncoderError
from alkit.embeddings.encoders.registry import register_encoder

# Ruifrok & Johnston (2001) stain vectors (rows: haematoxylin, eosin, DAB; columns: R, G, B)
RGB_FROM_HED = ((0.65, 0.70, 0.29), (0.07, 0.99, 0.11), (0.27, 0.57, 0.78))
TISSUE_OD = 0.45  # total optical density of stained tissue (white glass ~0.2)
NUCLEUS_H = (0.45, 0.7, 1.0)  # haematoxylin concentration thresholds: light, typical, dark nuclei
# nuclear morphology runs at half the input resolution (1 µm/px for 0.5 µm/px input); sizes in those px
OPENINGS = (3, 5, 7, 9)  # square structuring elements
BLOB_WINDOWS = (5, 9)  # local-maximum windows for the nucleus-count proxy
GREY_OPENINGS = (3, 5, 9)
SCALES = (1, 2, 4)  # texture scales: average-pooling factors
LBP_EPS = 0.02  # a neighbour counts as brighter when it exceeds the centre by this much (of 1.0)
EDGE = 0.1  # gradient magnitude counted as an edge (Sobel of brightness in [0, 1], /8)
QUANTILES = (0.1, 0.5, 0.9)  # taken at a quarter of the input resolution (a cheaper sort)
CHANNELS = ("h", "e", "d", "od", "brightness", "saturation")


def feature_names() -> list[str]:
    """Names of the handcrafted features, in output order."""
    names = [f"{c}_{s}" for c in CHANNELS for s in ("mean", "std", *(f"q{int(q * 100)}" for q in QUANTILES))]
    names += ["r_mean", "g_mean", "b_mean"]
    names += ["tissue_fraction", "h_mean_tissue", "e_mean_tissue", "h_share_tissue"]
    names += [f"nuclear_fraction_h{t}" for t in NUCLEUS_H] + [f"nuclear_fraction_tissue_h{t}" for t in NUCLEUS_H]
    for t in NUCLEUS_H[1:]:
        names += [f"nuclear_open{k}_h{t}" for k in OPENINGS] + [f"nuclear_size_h{t}"]
    names += [f"nuclei_per_1k_px_w{w}" for w in BLOB_WINDOWS]
    names += [f"h_grey_open{k}" for k in GREY_OPENINGS]
    for s in SCALES:
        names += [f"gradient_mean_s{s}", f"gradient_std_s{s}", f"edge_fraction_s{s}"]
    for s in SCALES:
        names += [f"lbp_s{s}_{n}" for n in range(9)]
    names += ["white_fraction", "dark_fraction", "saturated_fraction"]
    return names


def rgb_to_hed(rgb: torch.Tensor) -> torch.Tensor:
    """``(B, 3, H, W)`` RGB in [0, 1] -> haematoxylin / eosin / DAB concentrations ``(B, 3, H, W)``, >= 0.

    Optical density ``-ln((255 rgb + 1) / 256)`` (bounded, no log of zero) unmixed with the inverse of
    :data:`RGB_FROM_HED`; equals ``skimage.color.rgb2hed((255 rgb + 1) / 256) * ln(1e6)``.
    """
    od = optical_density(rgb)
    m = torch.linalg.inv(torch.tensor(RGB_FROM_HED, dtype=torch.float64)).to(torch.float32).tolist()
    # written channel by channel (elementwise) so results do not depend on the batch size
    out = [(od[:, 0] * m[0][j] + od[:, 1] * m[1][j] + od[:, 2] * m[2][j]).clamp_min(0) for j in range(3)]
    return torch.stack(out, dim=1)


def optical_density(rgb: torch.Tensor) -> torch.Tensor:
    return -torch.log((rgb * 255.0 + 1.0) / 256.0)


def _shift_max(x: torch.Tensor, k: int, dim: int) -> torch.Tensor:
    """Max over a centred window of ``k`` (odd) along ``dim``, the window cut at the borders.

    Done by doubling, with O(log k) elementwise maxima of shifted views: much faster on CPU than
    ``max_pool2d``, exact whatever the batch size, and works on bool masks (max = or).
    """
    r, n = k // 2, x.shape[dim]
    edge_lo, edge_hi = x.narrow(dim, 0, 1), x.narrow(dim, n - 1, 1)
    shape_lo = list(x.shape)
    shape_lo[dim] = r
    out = torch.cat([edge_lo.expand(shape_lo), x, edge_hi.expand(shape_lo)], dim=dim)
    big = torch.logical_or if x.dtype == torch.bool else torch.maximum
    width = 1  # invariant: out[i] = max(padded[i : i + width])
    while width * 2 <= k:
        m = out.shape[dim]
        out = big(out.narrow(dim, 0, m - width), out.narrow(dim, width, m - width))
        width *= 2
    if width < k:  # cover the rest with a second, overlapping window
        rest, m = k - width, out.shape[dim]
        out = big(out.narrow(dim, 0, m - rest), out.narrow(dim, rest, m - rest))
    return out


def _dilate(x: torch.Tensor, k: int) -> torch.Tensor:
    """Max filter with a k x k square over the last two dims of ``x`` (float or bool)."""
    return _shift_max(_shift_max(x, k, -1), k, -2)


def _erode(x: torch.Tensor, k: int) -> torch.Tensor:
    return ~_dilate(~x, k) if x.dtype == torch.bool else -_dilate(-x, k)


def _opening(x: torch.Tensor, k: int) -> torch.Tensor:
    return _dilate(_erode(x, k), k)


def _quantiles(x: torch.Tensor, qs: tuple[float, ...]) -> torch.Tensor:
    """Per-row quantiles of ``(B, N)`` by sorting (no size limit, unlike torch.quantile), (B, len(qs))."""
    s = x.sort(dim=1).values
    n = s.shape[1]
    idx = torch.tensor([min(n - 1, int(round(q * (n - 1)))) for q in qs], device=x.device)
    return s[:, idx]


def _gradient(img: torch.Tensor) -> torch.Tensor:
    """Sobel gradient magnitude of ``(B, H, W)`` (divided by 8 so a step of 1.0 gives 1.0), replicate borders."""
    p = F.pad(img.unsqueeze(1), (1, 1, 1, 1), mode="replicate")[:, 0]
    a, b, c = p[:, :-2, :-2], p[:, :-2, 1:-1], p[:, :-2, 2:]
    d, f = p[:, 1:-1, :-2], p[:, 1:-1, 2:]
    g, h, i = p[:, 2:, :-2], p[:, 2:, 1:-1], p[:, 2:, 2:]
    gx = (c + 2 * f + i) - (a + 2 * d + g)
    gy = (g + 2 * h + i) - (a + 2 * b + c)
    return torch.sqrt(gx * gx + gy * gy) / 8.0


def _lbp_histogram(img: torch.Tensor) -> torch.Tensor:
    """Share of pixels with 0..8 of their 8 neighbours brighter than themselves (+``LBP_EPS``): (B, 9)."""
    p = F.pad(img.unsqueeze(1), (1, 1, 1, 1), mode="replicate")[:, 0]
    b, h, w = img.shape
    centre = img + LBP_EPS
    count = torch.zeros(img.shape, dtype=torch.uint8, device=img.device)
    for dy, dx in ((0, 0), (0, 1), (0, 2), (1, 0), (1, 2), (2, 0), (2, 1), (2, 2)):  # the 8 neighbours
        count += p[:, dy:dy + h, dx:dx + w] > centre
    offset = torch.arange(b, device=img.device).unsqueeze(1) * 9
    hist = torch.bincount((count.flatten(1).long() + offset).flatten(), minlength=9 * b).view(b, 9)
    return hist.float() / (h * w)


def _mean(x: torch.Tensor) -> torch.Tensor:
    """Per-image mean of ``(B, ...)`` (bool or float) -> (B,)."""
    return x.flatten(1).float().mean(dim=1)


def handcrafted_features(rgb: torch.Tensor) -> torch.Tensor:
    """Raw (unstandardised) features ``(B, F)`` of RGB patches ``(B, 3, H, W)`` in [0, 1]."""
    rgb = rgb.float().clamp(0.0, 1.0)
    b = rgb.shape[0]
    full_brightness = 0.299 * rgb[:, 0] + 0.587 * rgb[:, 1] + 0.114 * rgb[:, 2]
    rgb = F.avg_pool2d(rgb, 2)  # colour, stain and nuclear maps at half resolution (1 µm/px by default)
    brightness = F.avg_pool2d(full_brightness.unsqueeze(1), 2)[:, 0]
    hed = rgb_to_hed(rgb)
    od = optical_density(rgb).sum(dim=1)
    cmax, cmin = rgb.amax(dim=1), rgb.amin(dim=1)
    saturation = (cmax - cmin) / cmax.clamp_min(1e-6)
    maps = (hed[:, 0], hed[:, 1], hed[:, 2], od, brightness, saturation)

    feats: list[torch.Tensor] = []
    small = torch.stack([F.avg_pool2d(m.unsqueeze(1), 2)[:, 0] for m in maps], dim=1).flatten(2)  # (B, 6, N/4)
    quant = _quantiles(small.reshape(b * len(CHANNELS), -1), QUANTILES).reshape(b, len(CHANNELS), len(QUANTILES))
    means = torch.stack([m.flatten(1).mean(dim=1) for m in maps], dim=1)
    stds = torch.stack([m.flatten(1).std(dim=1) for m in maps], dim=1)
    stats = torch.cat([means.unsqueeze(2), stds.unsqueeze(2), quant], dim=2)
    feats += [stats.flatten(1), rgb.flatten(2).mean(dim=2)]

    tissue = od > TISSUE_OD
    tissue_fraction = _mean(tissue)
    denom = tissue.flatten(1).sum(dim=1).clamp_min(1).float()
    h_t = (hed[:, 0] * tissue).flatten(1).sum(dim=1) / denom
    e_t = (hed[:, 1] * tissue).flatten(1).sum(dim=1) / denom
    feats.append(torch.stack([tissue_fraction, h_t, e_t, h_t / (h_t + e_t).clamp_min(1e-3)], dim=1))

    h_half = hed[:, 0]
    masks = [h_half > t for t in NUCLEUS_H]
    frac = torch.stack([_mean(m) for m in masks], dim=1)
    feats += [frac, frac / tissue_fraction.clamp_min(0.05).unsqueeze(1)]
    for m in masks[1:]:
        kept = torch.stack([_mean(_opening(m, k)) for k in OPENINGS], dim=1)
        size = kept[:, 1] / kept[:, 0].clamp_min(1e-3)  # share of nuclear area in blobs >= 5 µm wide
        feats += [kept, size.unsqueeze(1)]
    blob_map = F.avg_pool2d(h_half.unsqueeze(1), 3, stride=1, padding=1, count_include_pad=False)[:, 0]
    peaks = [(blob_map >= _dilate(blob_map, w)) & (blob_map > NUCLEUS_H[1]) for w in BLOB_WINDOWS]
    feats.append(torch.stack([_mean(p) * 1e3 for p in peaks], dim=1))
    feats.append(torch.stack([_mean(_opening(h_half, k)) for k in GREY_OPENINGS], dim=1))

    grads, lbps = [], []
    for s in SCALES:
        img = {1: full_brightness, 2: brightness}.get(s)
        if img is None:
            img = F.avg_pool2d(brightness.unsqueeze(1), s // 2)[:, 0]
        gm = _gradient(img).flatten(1)
        grads.append(torch.stack([gm.mean(dim=1), gm.std(dim=1), _mean(gm > EDGE)], dim=1))
        lbps.append(_lbp_histogram(img))
    feats += grads + lbps

    white = _mean((brightness > 0.85) & (saturation < 0.1))
    feats.append(torch.stack([white, _mean(brightness < 0.2), _mean(saturation > 0.6)], dim=1))
    return torch.cat(feats, dim=1)


# Fixed standardisation (raw - FEATURE_MEAN) / FEATURE_STD, then clipped to +-Z_CLIP: written by
# experiments/calibrate_handcrafted.py from 147 patches of real H&E slides and tiles (tissue, glass, pen).
Z_CLIP = 8.0
FEATURE_MEAN: tuple[float, ...] = (
    0.2639, 0.2905, 0.06386, 0.1829, 0.5709, 0.1502, 0.1258, 0.0313, 0.1281, 0.3023, 0.3024, 0.1962,
    0.09722, 0.2774, 0.5425, 1.069, 0.7653, 0.3296, 0.9439, 1.971, 0.7489, 0.1338, 0.5892, 0.7564, 0.8974,
    0.1832, 0.1166, 0.05326, 0.175, 0.3235, 0.8139, 0.711, 0.7732, 0.4363, 0.444, 0.2212, 0.5877, 0.1797,
    0.1173, 0.06906, 0.2695, 0.1763, 0.1082, 0.08627, 0.05362, 0.03536, 0.02736, 0.2651, 0.04333, 0.0216,
    0.01386, 0.01046, 0.178, 3.111, 1.879, 0.1966, 0.1497, 0.1079, 0.03173, 0.03297, 0.09676, 0.03735,
    0.03816, 0.1261, 0.04063, 0.03905, 0.141, 0.5885, 0.06187, 0.06986, 0.09536, 0.08962, 0.04429, 0.02576,
    0.0173, 0.007423, 0.5804, 0.07393, 0.06602, 0.07587, 0.08335, 0.05158, 0.03343, 0.02393, 0.01148,
    0.5876, 0.05892, 0.06303, 0.08189, 0.07481, 0.05356, 0.03734, 0.02908, 0.01372, 0.5582, 0.03534, 0.05496,
)
FEATURE_STD: tuple[float, ...] = (
    0.2499, 0.2605, 0.06375, 0.2206, 0.5626, 0.1597, 0.1137, 0.06629, 0.1617, 0.3072, 0.3177, 0.2081,
    0.1049, 0.3274, 0.5947, 0.9664, 0.6569, 0.362, 1.006, 1.753, 0.1967, 0.1023, 0.3029, 0.2227, 0.1036,
    0.1703, 0.0902, 0.08872, 0.1908, 0.2673, 0.1436, 0.2306, 0.1771, 0.3977, 0.3366, 0.1699, 0.2995, 0.2218,
    0.1633, 0.103, 0.2753, 0.2139, 0.1474, 0.1337, 0.0998, 0.08189, 0.07424, 0.3269, 0.07518, 0.05083,
    0.0426, 0.03923, 0.2747, 4.322, 2.366, 0.193, 0.1541, 0.1216, 0.02977, 0.02647, 0.1113, 0.03475,
    0.03081, 0.1342, 0.0364, 0.03071, 0.1478, 0.3559, 0.05437, 0.06234, 0.09006, 0.08309, 0.04118, 0.02545,
    0.01775, 0.00949, 0.3479, 0.06001, 0.05375, 0.06845, 0.07985, 0.04795, 0.03179, 0.02378, 0.01257,
    0.3583, 0.05134, 0.05739, 0.08146, 0.07216, 0.05175, 0.03644, 0.02888, 0.01436, 0.4013, 0.0717, 0.1093,
)


class HandcraftedEncoder(Encoder):
    """Interpretable colour / nuclei / texture statistics of H&E patches (see the module docstring)."""

    input_size = 256
    mpp = 0.5
    supports_text = False
    weights_id = "handcrafted-v1"
    interpolation = "bilinear"

    def __init__(self) -> None:
        super().__init__()  # preprocess output: RGB in [0, 1]
        self.feature_names = feature_names()
        self.dim = len(self.feature_names)
        n = self.dim
        if len(FEATURE_MEAN) != n or len(FEATURE_STD) != n:  # features changed: rerun the calibration
            raise RuntimeError(f"handcrafted: {n} features but {len(FEATURE_MEAN)} standardisation constants")
        mean = torch.tensor(FEATURE_MEAN, dtype=torch.float32)
        std = torch.tensor(FEATURE_STD, dtype=torch.float32)
        self.register_buffer("feature_mean", mean, persistent=False)
        self.register_buffer("feature_std", std, persistent=False)

    def raw_features(self, images: torch.Tensor) -> torch.Tensor:
        """Unstandardised features of preprocessed ``(B, 3, S, S)`` patches."""
        with torch.autocast(device_type=images.device.type, enabled=False):
            return handcrafted_features(images.float())

    def encode_images(self, images: torch.Tensor) -> torch.Tensor:
        z = (self.raw_features(images) - self.feature_mean) / self.feature_std
        return z.clamp(-Z_CLIP, Z_CLIP)


@register_encoder("handcrafted")
def build_handcrafted(weights: str | None) -> Encoder:
    if weights not in (None, "v1"):
        raise EncoderError(f"handcrafted@{weights}: the handcrafted encoder has no weights (only 'handcrafted')")
    return HandcraftedEncoder()
