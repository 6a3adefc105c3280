"""Image-caption databases as one table: ARCH, OpenPath-style embeddings + table, generic tables.

A :class:`CaptionDB` holds one row per image with the columns

=============  ====================================================================================
``id``         the database's image id (ARCH: the uuid); unique
``caption``    the full caption
``text``       the part of the caption that describes this image (:func:`~alkit.captions.panels.panel_text`
               for multi-panel figures, else the caption)
``image``      absolute path of the image file inside the database root, or ``None`` (missing / none)
``tags``       tuple of tags (OpenPath hashtags without ``#``), possibly empty
``source``     where the row came from (ARCH: ``books_set`` / ``pubmed_set``; else the file name)
``figure_id``  ARCH figure id (``""`` elsewhere)
``letter``     ARCH panel letter (``Single`` for one-panel figures; ``""`` elsewhere)
=============  ====================================================================================

and optionally a matrix of precomputed L2-normalised image embeddings (OpenPath ships PLIP's), one
row per table row, with the name of the encoder that made them.

Loading never reads outside the database root: image paths that resolve (symlinks included) outside
it are counted as escaping and dropped; images that do not exist are counted as missing; rows whose
id was seen before are counted and dropped (the first one stays). :class:`LoadReport` carries the
counts with a few example ids each, and they are logged.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from alkit.jsonfile import read_json
from alkit.captions.panels import panel_text
from alkit.errors import AlkitError

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".webp", ".bmp")
TABLE_SUFFIXES = (".csv", ".tsv", ".jsonl", ".ndjson", ".json", ".parquet", ".pq")
COLUMNS = ("id", "caption", "text", "image", "tags", "source", "figure_id", "letter")
#: column names tried, in order, when a table's mapping does not name one of ours
DEFAULT_COLUMN_NAMES: dict[str, tuple[str, ...]] = {
    "id": ("id", "uuid", "image_id", "img_id", "tweet_id"),
    "caption": ("caption", "text", "description"),
    "image": ("image", "image_path", "path", "file", "filename", "file_name"),
    "tags": ("tags", "tag", "hashtag", "hashtags"),
    "source": ("source", "set"),
    "figure_id": ("figure_id",),
    "letter": ("letter", "panel"),
}
_EXAMPLES = 5


class CaptionDBError(AlkitError, ValueError):
    """A caption database that cannot be read as asked; names the file or folder and the reason."""


@dataclass
class LoadReport:
    """What loading found: counts of rows kept and of problems, with a few example ids per problem."""

    source: str
    rows: int = 0                 # rows kept
    with_image: int = 0           # kept rows whose image file exists inside the root
    missing_images: int = 0       # rows naming an image that does not exist (or with no image at all)
    duplicate_ids: int = 0        # rows dropped because their id came earlier
    escaping_paths: int = 0       # rows whose image path leads outside the root (never read)
    empty_captions: int = 0       # rows kept whose caption is empty
    examples: dict[str, list[str]] = field(default_factory=dict)

    def note(self, problem: str, ids: Iterable[str]) -> None:
        ids = list(ids)
        setattr(self, problem, getattr(self, problem) + len(ids))
        self.examples.setdefault(problem, []).extend(ids[:_EXAMPLES - len(self.examples.get(problem, []))])

    def merge(self, other: LoadReport) -> LoadReport:
        merged = LoadReport(f"{self.source} + {other.source}")
        for name in ("rows", "with_image", "missing_images", "duplicate_ids", "escaping_paths", "empty_captions"):
            setattr(merged, name, getattr(self, name) + getattr(other, name))
        for report in (self, other):
            for problem, ids in report.examples.items():
                merged.examples.setdefault(problem, []).extend(ids)
                merged.examples[problem] = merged.examples[problem][:_EXAMPLES]
        return merged

    def summary(self) -> str:
        parts = [f"{self.source}: {self.rows} entries, {self.with_image} with images"]
        for problem in ("missing_images", "duplicate_ids", "escaping_paths", "empty_captions"):
            n = getattr(self, problem)
            if problem == "missing_images" and n and n == self.rows:
                parts.append(f"{n} missing images (no images at all: captions only)")
            elif n:
                ex = ", ".join(self.examples.get(problem, [])[:3])
                parts.append(f"{n} {problem.replace('_', ' ')} (e.g. {ex})")
        return "; ".join(parts)


def _real(path: Path) -> Path:
    return Path(os.path.realpath(path))


def inside(root: Path, path: Path) -> bool:
    """Whether ``path`` (symlinks resolved) lies inside ``root`` (symlinks resolved)."""
    return _real(path).is_relative_to(_real(root))


class CaptionDB:
    """An image-caption database as one table (see the module docstring for its columns)."""

    def __init__(self, table: pd.DataFrame, roots: Sequence[Path] = (), embeddings: np.ndarray | None = None,
                 embedding_encoder: str | None = None, report: LoadReport | None = None, name: str = "") -> None:
        missing = [c for c in COLUMNS if c not in table.columns]
        if missing:
            raise ValueError(f"caption table lacks columns {missing}")
        if table["id"].duplicated().any():
            raise ValueError("caption table ids must be unique")
        if embeddings is not None:
            embeddings = np.asarray(embeddings, np.float32)
            if embeddings.ndim != 2 or len(embeddings) != len(table):
                raise ValueError(f"embeddings {embeddings.shape} do not match {len(table)} rows")
        self.table = table.reset_index(drop=True)
        self.roots = tuple(_real(Path(r)) for r in roots)
        self.embeddings = embeddings
        self.embedding_encoder = embedding_encoder
        self.report = report or LoadReport(name or "table", rows=len(table),
                                           with_image=int(table["image"].notna().sum()))
        self.name = name or self.report.source
        self._index = pd.Index(self.table["id"])

    def __len__(self) -> int:
        return len(self.table)

    def __repr__(self) -> str:
        emb = f", embeddings {self.embeddings.shape} ({self.embedding_encoder})" if self.embeddings is not None else ""
        return f"CaptionDB({self.name!r}, {len(self)} entries, {int(self.has_image.sum())} images{emb})"

    @property
    def ids(self) -> list[str]:
        return self.table["id"].tolist()

    def digest(self) -> str:
        """A short SHA-256 of everything a search or a prototype build reads: every row's columns, each
        image's name inside its root and file size (so a replaced image changes it, a moved database
        does not), and the caption embeddings. Equal databases give equal digests across machines."""
        h = hashlib.sha256()
        rows = self.table[list(COLUMNS)].astype(object).where(self.table[list(COLUMNS)].notna(), None)
        images = [self._image_identity(v) for v in rows["image"]]
        records = rows.drop(columns="image").to_dict("records")
        h.update(json.dumps([records, images], default=str, sort_keys=True, ensure_ascii=False).encode("utf-8"))
        if self.embeddings is not None:
            h.update(f"{self.embedding_encoder}:{self.embeddings.shape}".encode())
            h.update(np.ascontiguousarray(self.embeddings, np.float32).tobytes())
        return h.hexdigest()[:16]

    def _image_identity(self, value: object) -> list | None:
        """``[name inside its root, size in bytes]`` of one image path (size -1 when missing)."""
        if value is None:
            return None
        path = Path(str(value))
        root = next((r for r in self.roots if path.is_relative_to(r)), None)
        name = path.relative_to(root).as_posix() if root is not None else path.name
        try:
            return [name, path.stat().st_size]
        except OSError:
            return [name, -1]

    @property
    def has_image(self) -> np.ndarray:
        """Boolean per row: the image file exists inside the root."""
        return self.table["image"].notna().to_numpy()

    def positions(self, ids: Iterable[str], *, what: str = "ids") -> np.ndarray:
        """Row positions of ``ids``; :class:`CaptionDBError` naming unknown ones."""
        ids = [str(i) for i in ids]
        pos = self._index.get_indexer(ids)
        if (pos < 0).any():
            unknown = [i for i, p in zip(ids, pos) if p < 0]
            raise CaptionDBError(f"{len(unknown)} {what} are not in the caption database {self.name} "
                                 f"(e.g. {', '.join(unknown[:3])})")
        return pos

    def entry(self, id: str) -> dict:
        """One row as a dict."""
        return self.table.iloc[int(self.positions([id])[0])].to_dict()

    def subset(self, ids: Iterable[str]) -> CaptionDB:
        """The rows of ``ids``, in that order."""
        pos = self.positions(ids)
        emb = None if self.embeddings is None else self.embeddings[pos]
        return CaptionDB(self.table.iloc[pos], self.roots, emb, self.embedding_encoder, name=self.name)

    def image_path(self, id: str) -> Path | None:
        """The image file of ``id`` (checked again to lie inside a root), or ``None`` when there is none."""
        value = self.table["image"].iloc[int(self.positions([id])[0])]
        if value is None or (isinstance(value, float) and np.isnan(value)):
            return None
        path = Path(value)
        if not any(inside(root, path) for root in self.roots):
            raise CaptionDBError(f"{path}: outside the caption database root; refusing to read it")
        return path

    def read_image(self, id: str) -> np.ndarray:
        """The image of ``id`` as uint8 ``(H, W, 3)`` RGB (transparency composited on white)."""
        from PIL import Image, UnidentifiedImageError

        path = self.image_path(id)
        if path is None:
            raise CaptionDBError(f"caption database {self.name}: no image for id {id}")
        try:
            with Image.open(path) as im:
                im.load()
                if im.mode in ("RGBA", "LA", "P", "PA"):
                    im = im.convert("RGBA")
                    white = Image.new("RGBA", im.size, (255, 255, 255, 255))
                    im = Image.alpha_composite(white, im)
                return np.asarray(im.convert("RGB"))
        except (OSError, UnidentifiedImageError, ValueError) as exc:
            raise CaptionDBError(f"{path}: not a readable image ({exc})") from exc

    def to_records(self, ids: Iterable[str] | None = None) -> list[dict]:
        """Rows as JSON-ready dicts (image paths relative to their root)."""
        table = self.table if ids is None else self.table.iloc[self.positions(ids)]
        out = []
        for row in table.itertuples(index=False):
            image = None
            if isinstance(row.image, str):
                root = next((r for r in self.roots if Path(row.image).is_relative_to(r)), None)
                image = str(Path(row.image).relative_to(root)) if root else row.image
            out.append({"id": row.id, "caption": row.caption, "text": row.text, "letter": row.letter,
                        "figure_id": row.figure_id, "source": row.source, "tags": list(row.tags), "image": image})
        return out

    @staticmethod
    def concat(dbs: Sequence[CaptionDB], name: str = "") -> CaptionDB:
        """One database from several (ids must stay unique: later duplicates are dropped and counted)."""
        if not dbs:
            raise CaptionDBError("no caption databases to combine")
        with_emb = [db.embeddings is not None for db in dbs]
        if any(with_emb) and not all(with_emb):
            raise CaptionDBError("cannot combine databases with and without precomputed embeddings")
        encoders = {db.embedding_encoder for db in dbs if db.embeddings is not None}
        if len(encoders) > 1:
            raise CaptionDBError(f"cannot combine embeddings of different encoders: {sorted(map(str, encoders))}")
        table = pd.concat([db.table for db in dbs], ignore_index=True)
        report = dbs[0].report
        for db in dbs[1:]:
            report = report.merge(db.report)
        emb = np.concatenate([db.embeddings for db in dbs]) if all(with_emb) else None
        dup = table["id"].duplicated().to_numpy()
        if dup.any():
            report.note("duplicate_ids", table["id"][dup].tolist())
            report.rows -= int(dup.sum())
            report.with_image -= int(table["image"][dup].notna().sum())
            table = table[~dup]
            emb = None if emb is None else emb[~dup]
        roots = [r for db in dbs for r in db.roots]
        return CaptionDB(table, roots, emb, encoders.pop() if encoders else None, report, name or report.source)


# ------------------------------------------------------------------------------------------------
# building a table: ids, image paths inside the root, duplicates


def _finish(rows: pd.DataFrame, root: Path | None, source: str, image_names: Sequence | None,
            embeddings: np.ndarray | None = None, embedding_encoder: str | None = None,
            listing: Mapping[str, str] | None = None) -> CaptionDB:
    """Validate ids and image paths, compute panel texts, count problems; ``image_names`` are paths
    relative to ``root`` (or absolute), ``listing`` maps a stem to its file name for ARCH lookups."""
    report = LoadReport(source)
    rows = rows.reset_index(drop=True)
    ids = rows["id"].astype(str).str.strip()
    rows["id"] = ids
    keep = (ids != "").to_numpy()
    if not keep.all():
        raise CaptionDBError(f"{source}: {int((~keep).sum())} rows have an empty id")
    dup = ids.duplicated().to_numpy()
    if dup.any():
        report.note("duplicate_ids", ids[dup].tolist())
        rows = rows[~dup].reset_index(drop=True)
        if embeddings is not None:
            embeddings = embeddings[~dup]
        if image_names is not None:
            image_names = [n for n, d in zip(image_names, dup) if not d]
    images: list[str | None] = [None] * len(rows)
    if image_names is not None and root is not None:
        real_root = _real(root)
        missing, escaping = [], []
        for i, (id_, name) in enumerate(zip(rows["id"], image_names)):
            if name is None or (isinstance(name, float) and np.isnan(name)) or str(name).strip() == "":
                missing.append(id_)
                continue
            if listing is not None:  # ARCH: images/<uuid>.<ext>, found through one directory listing
                hit = listing.get(str(name))
                path = root / "images" / (hit or f"{name}.png")
            else:
                path = root / str(name).strip()
            real = _real(path)
            if not real.is_relative_to(real_root):
                escaping.append(id_)
            elif (listing is not None and hit is None) or (listing is None and not real.is_file()):
                missing.append(id_)
            else:
                images[i] = str(real)
        report.note("missing_images", missing)
        report.note("escaping_paths", escaping)
    elif embeddings is None:  # no image column and no embeddings: every entry lacks its image
        report.note("missing_images", rows["id"].tolist())
    rows["image"] = pd.Series(images, dtype=object)
    for col, default in (("source", source), ("figure_id", ""), ("letter", "")):
        if col not in rows:
            rows[col] = default
        rows[col] = rows[col].fillna(default).astype(str)
    rows["caption"] = rows["caption"].fillna("").astype(str)
    if "tags" not in rows:
        rows["tags"] = [()] * len(rows)
    rows["tags"] = [_tags(t) for t in rows["tags"]]
    rows["text"] = [panel_text(c, letter) for c, letter in zip(rows["caption"], rows["letter"])]
    empty = rows["caption"].str.strip() == ""
    report.note("empty_captions", rows["id"][empty].tolist())
    report.rows = len(rows)
    report.with_image = int(sum(i is not None for i in images))
    if embeddings is not None:
        embeddings = _normalised(embeddings, source)
    log.info("%s", report.summary())
    for problem in ("duplicate_ids", "escaping_paths"):
        if getattr(report, problem):
            log.warning("%s: %d %s (e.g. %s)", source, getattr(report, problem), problem.replace("_", " "),
                        ", ".join(report.examples[problem][:3]))
    return CaptionDB(rows[list(COLUMNS)], [root] if root is not None else [], embeddings, embedding_encoder,
                     report, source)


def _tags(value) -> tuple[str, ...]:
    """Tags from a list or a string (``"#BreastPath #Pathology"``, ``"a,b"``), without ``#``."""
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return ()
    if isinstance(value, str):
        items = value.replace(",", " ").replace(";", " ").split()
    else:
        items = [str(v) for v in value]
    return tuple(dict.fromkeys(t.strip().lstrip("#") for t in items if t.strip().lstrip("#")))


def _normalised(embeddings: np.ndarray, source: str) -> np.ndarray:
    emb = np.asarray(embeddings, np.float32)
    if emb.ndim != 2:
        raise CaptionDBError(f"{source}: embeddings must be a 2-d matrix, got shape {emb.shape}")
    if not np.isfinite(emb).all():
        raise CaptionDBError(f"{source}: embeddings contain NaN or infinite values")
    norms = np.linalg.norm(emb, axis=1)
    if (norms == 0).any():
        raise CaptionDBError(f"{source}: {int((norms == 0).sum())} embedding rows are all zero")
    if np.abs(norms - 1).max() > 1e-3:
        log.warning("%s: embeddings are not L2-normalised (norms %.3g..%.3g); normalising them", source,
                    norms.min(), norms.max())
    return emb / norms[:, None]


# ------------------------------------------------------------------------------------------------
# ARCH


def _is_arch_set(folder: Path) -> bool:
    return (folder / "captions.json").is_file()


def _image_listing(folder: Path) -> dict[str, str] | None:
    """stem -> file name of the images in ``folder`` (one listing, not one stat per image)."""
    if not folder.is_dir():
        return None
    out: dict[str, str] = {}
    with os.scandir(folder) as it:
        for e in it:
            stem, ext = os.path.splitext(e.name)
            if ext.lower() in IMAGE_SUFFIXES and stem not in out and not e.name.startswith("."):  # ._x.png: side files
                out[stem] = e.name
    return out


def load_arch_set(folder: str | os.PathLike) -> CaptionDB:
    """One ARCH set: ``folder/captions.json`` (``{idx: {caption, uuid[, figure_id, letter]}}``) and
    ``folder/images/<uuid>.png|jpg``. Without an ``images`` folder every image counts as missing
    (keyword search still works; building prototypes needs the images)."""
    folder = Path(folder)
    path = folder / "captions.json"
    data = read_json(path, CaptionDBError, "captions.json",
                     missing_message=f"{folder}: no captions.json (not an ARCH set)")
    if not isinstance(data, dict) or not all(isinstance(v, dict) for v in data.values()):
        raise CaptionDBError(f"{path}: expected ARCH's layout {{idx: {{caption, uuid, ...}}}}")
    if not data:
        raise CaptionDBError(f"{path}: no entries (an empty ARCH captions file)")
    bad = [k for k, v in data.items() if "uuid" not in v or "caption" not in v]
    if bad:
        raise CaptionDBError(f"{path}: {len(bad)} entries lack 'uuid' or 'caption' (e.g. entry {bad[0]})")
    rows = pd.DataFrame({
        "id": [str(v["uuid"]) for v in data.values()],
        "caption": [str(v["caption"]) for v in data.values()],
        "figure_id": [str(v.get("figure_id", "")) for v in data.values()],
        "letter": [str(v.get("letter", "")) for v in data.values()],
        "source": folder.name,
    })
    listing = _image_listing(folder / "images")
    if listing is None:
        log.info("%s: no images folder; %d entries without images", folder, len(rows))
        db = _finish(rows, folder, folder.name, None)
        return db
    return _finish(rows, folder, folder.name, rows["id"].tolist(), listing=listing)


def load_arch(root: str | os.PathLike) -> CaptionDB:
    """An ARCH set folder, or an ARCH root holding several (``books_set/``, ``pubmed_set/``), as one table."""
    root = Path(root)
    if _is_arch_set(root):
        return load_arch_set(root)
    if not root.is_dir():
        raise CaptionDBError(f"{root}: no such folder")
    sets = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".") and _is_arch_set(p))
    if not sets:
        raise CaptionDBError(f"{root}: neither an ARCH set (captions.json) nor a folder of ARCH sets "
                             "(books_set/captions.json, pubmed_set/captions.json)")
    return CaptionDB.concat([load_arch_set(s) for s in sets], name=root.name)


# ------------------------------------------------------------------------------------------------
# tables (CSV / TSV / JSONL / JSON / Parquet) and OpenPath-style embeddings + table


def read_table(path: str | os.PathLike) -> pd.DataFrame:
    """A table file as a DataFrame of strings (Parquet keeps list columns)."""
    path = Path(path)
    suffix = path.suffix.lower()
    if not path.is_file():
        raise CaptionDBError(f"{path}: no such file")
    try:
        if suffix in (".csv", ".tsv", ".txt"):
            sep = "\t" if suffix == ".tsv" else ","
            return pd.read_csv(path, sep=sep, dtype=str, keep_default_na=False)
        if suffix in (".jsonl", ".ndjson"):
            lines = [ln for ln in path.read_text(encoding="utf-8").splitlines() if ln.strip()]
            records = [json.loads(ln) for ln in lines]
            bad = next((i for i, r in enumerate(records) if not isinstance(r, dict)), None)
            if bad is not None:
                raise CaptionDBError(f"{path}: line {bad + 1} is a JSON {type(records[bad]).__name__}, "
                                     "expected one object per line")
            return pd.DataFrame(records)
        if suffix == ".json":
            data = json.loads(path.read_text(encoding="utf-8"))
            if isinstance(data, dict):  # {key: {...}} (ARCH-like) -> rows
                data = list(data.values())
            if not isinstance(data, list) or not all(isinstance(r, dict) for r in data):
                raise CaptionDBError(f"{path}: expected a JSON list of objects")
            return pd.DataFrame(data)
        if suffix in (".parquet", ".pq"):
            return pd.read_parquet(path)
    except CaptionDBError:
        raise
    except ImportError as exc:
        raise CaptionDBError(f"{path}: reading {suffix} needs an extra package ({exc})") from exc
    except (OSError, ValueError, UnicodeDecodeError) as exc:
        raise CaptionDBError(f"{path}: not a readable {suffix[1:]} table ({exc})") from exc
    raise CaptionDBError(f"{path}: unknown table format {suffix!r}; use one of {', '.join(TABLE_SUFFIXES)}")


def _map_columns(df: pd.DataFrame, columns: Mapping[str, str] | None, path: Path,
                 required: Sequence[str]) -> dict[str, str]:
    """Our column name -> the table's, from ``columns`` or the defaults; errors name what is missing."""
    columns = dict(columns or {})
    unknown_ours = set(columns) - set(DEFAULT_COLUMN_NAMES) - {"embedding"}
    if unknown_ours:
        raise CaptionDBError(f"{path}: unknown column role(s) {sorted(unknown_ours)}; roles are "
                             f"{', '.join([*DEFAULT_COLUMN_NAMES, 'embedding'])}")
    absent = {ours: theirs for ours, theirs in columns.items() if theirs not in df.columns}
    if absent:
        raise CaptionDBError(f"{path}: no column {', '.join(map(repr, absent.values()))} "
                             f"(columns: {', '.join(map(str, df.columns))})")
    out = dict(columns)
    taken = set(out.values())
    for ours, candidates in DEFAULT_COLUMN_NAMES.items():
        if ours not in out:
            found = next((c for c in candidates if c in df.columns and c not in taken), None)
            if found is not None:
                out[ours] = found
                taken.add(found)
    lacking = [r for r in required if r not in out]
    if lacking:
        raise CaptionDBError(f"{path}: cannot tell which column is the {' / '.join(lacking)}; map it, e.g. "
                             f"--columns {lacking[0]}=COLUMN (columns: {', '.join(map(str, df.columns))})")
    return out


def load_table(path: str | os.PathLike, *, columns: Mapping[str, str] | None = None,
               root: str | os.PathLike | None = None, embeddings: str | os.PathLike | np.ndarray | None = None,
               embedding_encoder: str | None = None) -> CaptionDB:
    """A CSV / TSV / JSONL / JSON / Parquet table of captions.

    ``columns`` maps our column roles (``id``, ``caption``, ``image``, ``tags``, ``source``, ``letter``,
    ``figure_id``, ``embedding``) to the table's column names; unmapped roles fall back to common names
    (see :data:`DEFAULT_COLUMN_NAMES`). Image paths are relative to ``root`` (default: the table's
    folder). Precomputed embeddings come from an ``embedding`` column of vectors or from ``embeddings``
    (a ``.npy`` / ``.npz`` matrix or an array), one row per table row, made by ``embedding_encoder``.
    """
    path = Path(path)
    df = read_table(path)
    if len(df) == 0:
        raise CaptionDBError(f"{path}: no entries (an empty table, or a header without rows)")
    mapping = _map_columns(df, columns, path, required=("id", "caption"))
    rows = pd.DataFrame({ours: df[theirs].to_numpy() for ours, theirs in mapping.items()
                         if ours not in ("image", "embedding")})
    emb = None
    if "embedding" in mapping:
        try:
            emb = np.stack([np.asarray(v, np.float32) for v in df[mapping["embedding"]]])
        except (ValueError, TypeError) as exc:
            raise CaptionDBError(f"{path}: column {mapping['embedding']!r} does not hold equal-length vectors "
                                 f"({exc})") from exc
    if embeddings is not None:
        if emb is not None:
            raise CaptionDBError(f"{path}: embeddings given twice (a column and a matrix)")
        emb = load_embeddings(embeddings) if not isinstance(embeddings, np.ndarray) else embeddings
    if emb is not None and len(emb) != len(df):
        raise CaptionDBError(f"{path}: {len(df)} table rows but {len(emb)} embedding rows")
    if emb is not None and not embedding_encoder:
        raise CaptionDBError(f"{path}: precomputed embeddings need the name of the encoder that made them "
                             "(embedding_encoder / --embeddings-encoder, e.g. 'plip' for OpenPath)")
    image_names = df[mapping["image"]].tolist() if "image" in mapping else None
    base = Path(root) if root is not None else path.parent
    return _finish(rows, base, path.name, image_names, emb, embedding_encoder)


def load_embeddings(path: str | os.PathLike) -> np.ndarray:
    """A matrix from ``.npy`` or ``.npz`` (key ``embeddings`` / ``image_embeddings`` / the only array)."""
    path = Path(path)
    try:
        with open(path, "rb"):
            pass
        data = np.load(path, allow_pickle=False)
    except FileNotFoundError:
        raise CaptionDBError(f"{path}: no such embeddings file") from None
    except (OSError, ValueError) as exc:
        raise CaptionDBError(f"{path}: not a readable .npy / .npz matrix ({exc})") from exc
    if isinstance(data, np.lib.npyio.NpzFile):
        with data:
            keys = list(data.keys())
            key = next((k for k in ("embeddings", "image_embeddings", "features") if k in keys),
                       keys[0] if len(keys) == 1 else None)
            if key is None:
                raise CaptionDBError(f"{path}: which array holds the embeddings? keys: {', '.join(keys)}")
            data = data[key]
    return np.asarray(data, np.float32)


def load_openpath(embeddings: str | os.PathLike | np.ndarray, table: str | os.PathLike, *,
                  columns: Mapping[str, str] | None = None, encoder: str = "plip") -> CaptionDB:
    """OpenPath-style: a matrix of precomputed L2-normalised image embeddings and a table of id,
    hashtag, text (one row per embedding row); there are no images. ``encoder`` names the encoder
    that made the embeddings (OpenPath's are PLIP's), which prototypes are checked against."""
    cols = {"tags": "hashtag", "caption": "text"}
    df_cols = read_table(table).columns
    cols = {k: v for k, v in cols.items() if v in df_cols}
    cols.update(columns or {})
    return load_table(table, columns=cols, embeddings=embeddings, embedding_encoder=encoder)


def open_database(path: str | os.PathLike, *, columns: Mapping[str, str] | None = None,
                  root: str | os.PathLike | None = None, embeddings: str | os.PathLike | None = None,
                  embedding_encoder: str | None = None) -> CaptionDB:
    """Whatever ``path`` is: an ARCH set folder, an ARCH root of sets, an ARCH ``captions.json``, or a
    table file (with ``embeddings`` for OpenPath-style databases)."""
    path = Path(path).expanduser()
    if path.is_dir():
        if embeddings is not None:
            raise CaptionDBError(f"{path}: --embeddings goes with a table file, not an ARCH folder")
        return load_arch(path)
    if not path.exists():
        raise CaptionDBError(f"{path}: no such caption database (a folder or a table file)")
    if path.name == "captions.json" and columns is None and embeddings is None:
        data = read_json(path, CaptionDBError, "captions.json")
        if isinstance(data, dict) and all(isinstance(v, dict) and "uuid" in v for v in data.values()):
            return load_arch_set(path.parent)
    return load_table(path, columns=columns, root=root, embeddings=embeddings, embedding_encoder=embedding_encoder)


def parse_columns(spec: str | Sequence[str] | None) -> dict[str, str] | None:
    """``"id=image_id,caption=text"`` (or a list of such) -> ``{"id": "image_id", "caption": "text"}``."""
    if not spec:
        return None
    items = [spec] if isinstance(spec, str) else list(spec)
    out: dict[str, str] = {}
    for item in items:
        for pair in item.split(","):
            if not pair.strip():
                continue
            ours, sep, theirs = pair.partition("=")
            if not sep or not ours.strip() or not theirs.strip():
                raise CaptionDBError(f"column mapping {pair!r}: write ROLE=COLUMN, e.g. id=image_id")
            out[ours.strip()] = theirs.strip()
    return out
