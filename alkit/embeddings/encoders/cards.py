"""Encoder cards: what each encoder name means, as plain data, importable without torch or timm.

A card says how an encoder sees a patch (input size, mean / std, resampling, the magnification it was
trained at as the default ``mpp``), what it returns (embedding dimension, text tower or not) and where its
weights live (Hugging Face hub repository, gated or not, licence). ``alkit encoders`` prints the table and
fast paths (a fully cached ``alkit embed``) read a spec's card without building the model.

Architecture settings of the pathology foundation models follow their authors' model cards and TRIDENT's
encoder configs (timm architecture and keyword arguments, dims, normalisation, 20x = 0.5 µm/px). Licences
are as stated on the hub model cards at the time of writing; check the card before use.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from alkit.embeddings.encoders.error import EncoderError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
OPENAI_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
HOPTIMUS_MEAN = (0.707223, 0.578729, 0.703617)
HOPTIMUS_STD = (0.211883, 0.230117, 0.177517)
TWENTY_X = 0.5  # µm/px of a 20x scan: the magnification these models were trained at
TIMM_WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")


@dataclass(frozen=True)
class EncoderCard:
    """One encoder name's plain-data description (``dim`` / ``input_size`` ``None`` where the architecture decides).

    ``family`` says which loader builds it: ``timm`` (``arch`` + ``arch_kwargs``), ``transformers``
    (a ``AutoModel`` folder), ``open_clip`` (a hub repository in OpenCLIP layout), ``conch`` (the CONCH
    package) or ``builtin`` (alkit's own encoders). ``pooling`` is how the token sequence becomes one
    vector: ``head`` (the model's own pooling, e.g. the class token), ``cls+mean`` (class token
    concatenated with the mean of the patch tokens, register tokens excluded), ``cls`` (first token of
    the last hidden state) or ``contrastive`` (the image-text projection).
    """

    name: str
    dim: int | None
    mpp: float
    input_size: int | None
    mean: tuple[float, float, float] | None
    std: tuple[float, float, float] | None
    text_tower: bool
    gated: bool
    hub_repo: str | None
    licence: str
    family: str = "builtin"
    arch: str | None = None
    arch_kwargs: tuple[tuple[str, object], ...] = ()
    pooling: str = "head"
    interpolation: str = "bilinear"
    resize_size: int | None = None  # shorter side before the centre crop (default: input_size)
    weight_files: tuple[str, ...] = ()  # hub files, alternatives in order of preference
    note: str = ""
    aliases: tuple[str, ...] = field(default=(), compare=False)

    @property
    def kwargs(self) -> dict[str, object]:
        """``arch_kwargs`` as a dict (names such as ``"swiglu_packed"`` are resolved by the loader)."""
        return dict(self.arch_kwargs)


def _vit(name: str, hub: str, arch: str, dim: int, licence: str, *, gated: bool = True, mean=IMAGENET_MEAN,
         std=IMAGENET_STD, pooling: str = "head", interpolation: str = "bilinear", resize_size: int | None = None,
         note: str = "", aliases: tuple[str, ...] = (), **kwargs) -> EncoderCard:
    return EncoderCard(name, dim, TWENTY_X, 224, mean, std, False, gated, hub, licence, "timm", arch,
                       tuple(kwargs.items()), pooling, interpolation, resize_size, ("|".join(TIMM_WEIGHT_FILES),), note,
                       aliases)


_SWIGLU = {"mlp_layer": "swiglu_packed", "act_layer": "silu"}
_CARDS: tuple[EncoderCard, ...] = (
    EncoderCard("handcrafted", 97, 0.5, 256, None, None, False, False, None, "alkit (Apache-2.0)",
                note="colour-deconvolution, nuclear and texture statistics; offline baseline"),
    EncoderCard("resnet18", 512, 0.25, 224, IMAGENET_MEAN, IMAGENET_STD, False, False, None,
                "BSD-3 (torchvision) / the checkpoint's", note="@imagenet, @PATH (e.g. Ciga et al.) or random"),
    EncoderCard("plip", 512, 0.25, 224, OPENAI_CLIP_MEAN, OPENAI_CLIP_STD, True, False, "vinid/plip",
                "research use (model card)", family="transformers", pooling="contrastive", interpolation="bicubic",
                note="transformers CLIPModel; pip install 'alkit[plip]'"),
    _vit("uni", "MahmoodLab/UNI", "vit_large_patch16_224", 1024, "CC-BY-NC-ND-4.0", aliases=("uni-v1",),
         img_size=224, patch_size=16, init_values=1e-5, num_classes=0, dynamic_img_size=True,
         note="class token"),
    _vit("uni2-h", "MahmoodLab/UNI2-h", "vit_giant_patch14_224", 1536, "CC-BY-NC-ND-4.0", aliases=("uni2",),
         img_size=224, patch_size=14, depth=24, num_heads=24, init_values=1e-5, embed_dim=1536,
         mlp_ratio=2.66667 * 2, num_classes=0, no_embed_class=True, reg_tokens=8, dynamic_img_size=True,
         note="class token; 8 register tokens", **_SWIGLU),
    _vit("virchow", "paige-ai/Virchow", "vit_huge_patch14_224", 2560, "Apache-2.0, non-commercial terms (model card)",
         pooling="cls+mean", interpolation="bicubic", img_size=224, init_values=1e-5, num_classes=0,
         mlp_ratio=5.3375, global_pool="", dynamic_img_size=True, note="class token + mean patch token", **_SWIGLU),
    _vit("virchow2", "paige-ai/Virchow2", "vit_huge_patch14_224", 2560, "CC-BY-NC-ND-4.0", pooling="cls+mean",
         interpolation="bicubic", img_size=224, init_values=1e-5, num_classes=0, reg_tokens=4, mlp_ratio=5.3375,
         global_pool="", dynamic_img_size=True,
         note="class token + mean patch token (4 register tokens excluded)", **_SWIGLU),
    _vit("h-optimus-0", "bioptimus/H-optimus-0", "vit_giant_patch14_reg4_dinov2", 1536, "Apache-2.0",
         mean=HOPTIMUS_MEAN, std=HOPTIMUS_STD, aliases=("hoptimus0",), num_classes=0, img_size=224,
         global_pool="token", init_values=1e-5, dynamic_img_size=True, note="class token"),
    _vit("h-optimus-1", "bioptimus/H-optimus-1", "vit_giant_patch14_reg4_dinov2", 1536,
         "non-commercial (model card)", mean=HOPTIMUS_MEAN, std=HOPTIMUS_STD, aliases=("hoptimus1",),
         num_classes=0, img_size=224, global_pool="token", init_values=1e-5, dynamic_img_size=True,
         note="class token"),
    _vit("prov-gigapath", "prov-gigapath/prov-gigapath", "vit_giant_patch14_dinov2", 1536, "Apache-2.0 (model card)",
         interpolation="bicubic", resize_size=256, aliases=("gigapath",), img_size=224, in_chans=3, patch_size=16,
         embed_dim=1536, depth=40, num_heads=24, init_values=1e-5, mlp_ratio=5.33334, num_classes=0,
         note="class token; resized to 256, centre crop 224"),
    EncoderCard("phikon", 768, TWENTY_X, 224, IMAGENET_MEAN, IMAGENET_STD, False, False, "owkin/phikon",
                "Owkin non-commercial (model card)", family="transformers", pooling="cls",
                weight_files=("config.json", "model.safetensors"), note="transformers ViT; class token"),
    EncoderCard("phikon-v2", 1024, TWENTY_X, 224, IMAGENET_MEAN, IMAGENET_STD, False, False, "owkin/phikon-v2",
                "Owkin non-commercial (model card)", family="transformers", pooling="cls",
                weight_files=("config.json", "model.safetensors"), note="transformers DINOv2 ViT-L; class token"),
    EncoderCard("conch", 512, TWENTY_X, 448, OPENAI_CLIP_MEAN, OPENAI_CLIP_STD, True, True, "MahmoodLab/CONCH",
                "CC-BY-NC-ND-4.0", family="conch", pooling="contrastive", interpolation="bicubic",
                weight_files=("pytorch_model.bin",), aliases=("conch-v1",),
                note="CoCa ViT-B/16; needs the CONCH package (pip install git+https://github.com/Mahmoodlab/CONCH)"),
    EncoderCard("quiltnet", 512, TWENTY_X, 224, OPENAI_CLIP_MEAN, OPENAI_CLIP_STD, True, False,
                "wisdomik/QuiltNet-B-32", "MIT", family="open_clip", pooling="contrastive", interpolation="bicubic",
                weight_files=("open_clip_config.json", "open_clip_model.safetensors|open_clip_pytorch_model.bin"),
                note="OpenCLIP ViT-B/32 trained on Quilt-1M (mixed magnifications)"),
)
_FAMILY_CARDS = {
    "timm": EncoderCard("timm:", None, 0.25, None, None, None, False, False, None, "the model's",
                        family="timm", note="timm:ARCH[@TAG|@PATH], timm:hf-hub:ORG/NAME; preprocessing from timm"),
    "open_clip": EncoderCard("open_clip:", None, 0.25, None, None, None, True, False, None, "the model's",
                             family="open_clip", pooling="contrastive", interpolation="bicubic",
                             note="open_clip:ARCH[@TAG|@PATH], open_clip:hf-hub:ORG/NAME"),
}
#: names users try that alkit does not build, and why
NOT_BUILT_IN = {
    "musk": "MUSK (xiangjx/musk) is a BEiT-3 model defined only in its authors' git package (with fairscale and a "
            "custom timm registration), not loadable with timm or OpenCLIP alone; it is not built in",
    "conch-v1.5": "CONCH v1.5 (MahmoodLab/conchv1_5) is a custom attentional-pooling ViT published image-only with "
                  "its own model code (TITAN / TRIDENT), not loadable with timm or OpenCLIP alone; use 'conch' (v1)",
}
NOT_BUILT_IN["conchv1_5"] = NOT_BUILT_IN["conch-v1.5"]
_BY_NAME = {alias: card for card in _CARDS for alias in (card.name, *card.aliases)}


def all_cards() -> list[EncoderCard]:
    """Every built-in encoder name's card (families as ``timm:`` / ``open_clip:``), in listing order."""
    return [*_CARDS, *_FAMILY_CARDS.values()]


def short_names() -> list[str]:
    """Names (aliases included) that :func:`encoder_card` resolves without a family prefix."""
    return list(_BY_NAME)


def split_spec(spec: str) -> tuple[str, str | None, str | None]:
    """``"virchow2@/w.safetensors"`` -> ``("virchow2", None, "/w.safetensors")``;
    ``"timm:hf-hub:org/name"`` -> ``("timm", "hf-hub:org/name", None)`` (family argument whole)."""
    if not isinstance(spec, str) or not spec.strip():
        raise EncoderError(f"encoder spec must be a non-empty string, got {spec!r}")
    spec = spec.strip()
    head, colon, rest = spec.partition(":")
    if colon and "@" not in head:
        if not rest:
            raise EncoderError(f"encoder spec {spec!r}: nothing after ':'")
        return head, rest, None
    name, at, weights = spec.partition("@")
    if at and not weights:
        raise EncoderError(f"encoder spec {spec!r}: nothing after '@'")
    return name, None, weights or None


def encoder_card(spec: str) -> EncoderCard:
    """The card of an encoder spec (``uni``, ``virchow2@/w.safetensors``, ``timm:…``, ``resnet18@imagenet`` …).

    Cards of families describe the family (``dim`` ``None``); a short name's card has its name even when
    the spec names an alias. Unknown names raise :class:`EncoderError`.
    """
    name, family_arg, _weights = split_spec(spec)
    if family_arg is not None:
        card = _FAMILY_CARDS.get(name)
        if card is None:
            raise EncoderError(f"unknown encoder family {name + ':'!r} in {spec!r}; families: "
                               f"{', '.join(c.name for c in _FAMILY_CARDS.values())}")
        return replace(card, hub_repo=family_arg[len("hf-hub:"):] if family_arg.startswith("hf-hub:") else None)
    key = name.lower()
    if key in _BY_NAME:
        return _BY_NAME[key]
    if key in NOT_BUILT_IN:
        raise EncoderError(f"encoder {spec!r}: {NOT_BUILT_IN[key]}")
    import difflib
    close = difflib.get_close_matches(key, short_names(), n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    raise EncoderError(f"unknown encoder {spec!r}{hint}; known: {', '.join(c.name for c in all_cards())}")


def table_rows() -> list[dict[str, str]]:
    """Rows of ``alkit encoders``: name, dim, mpp, input, text, gated, hub, licence."""
    rows = []
    for card in all_cards():
        rows.append({"name": card.name, "dim": str(card.dim) if card.dim else "arch",
                     "mpp": f"{card.mpp:g}", "input": str(card.input_size) if card.input_size else "arch",
                     "text": "yes" if card.text_tower else "no", "gated": "yes" if card.gated else "no",
                     "hub": card.hub_repo or "-", "licence": card.licence})
    return rows


def format_table(markdown: bool = False) -> str:
    """The encoder table as aligned text (or a Markdown table)."""
    rows = table_rows()
    cols = list(rows[0])
    if markdown:
        lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
        lines += ["| " + " | ".join(f"`{r[c]}`" if c == "name" else r[c] for c in cols) + " |" for r in rows]
        return "\n".join(lines)
    widths = {c: max(len(c), *(len(r[c]) for r in rows)) for c in cols}
    lines = ["  ".join(c.ljust(widths[c]) for c in cols).rstrip()]
    lines += ["  ".join(r[c].ljust(widths[c]) for c in cols).rstrip() for r in rows]
    return "\n".join(lines)
