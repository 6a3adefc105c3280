"""The schema of a study config: every key at every depth, its type, range, default and meaning.

One set of pydantic models (:class:`StudySchema` and its sections, plus each task's own
``params_schema`` / ``ground_truth_schema``) does three jobs:

* validation: :func:`alkit.study.config.load_config` checks a config against it before any work;
  unknown keys are refused and values are not coerced (see :class:`~alkit.al.task.ConfigSection`);
* the error: :func:`describe` turns pydantic's errors into one line naming the dotted key path and
  the reason, with the closest valid key for a typo (``did you mean 'patch'?``);
* the reference: :func:`render_reference` writes the key table that README.md holds and
  ``alkit compare --schema`` prints, so the documentation cannot drift from what is accepted.

What a schema cannot say (a strategy is registered, slides exist, the prototype strategy needs
``prototypes``, BALD needs MC dropout) stays in :mod:`alkit.study.config` and ``Task.check_config``.
"""

from __future__ import annotations

import difflib
import inspect
import re
import types
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Annotated, Any, Literal, Union, get_args, get_origin

import annotated_types
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError, ValidationInfo, field_validator
from pydantic_core import PydanticKnownError

from alkit.al.task import DEFAULT_TASK, ConfigSection, task_class
from alkit.al.uncertainty import MEASURES
from alkit.captions.images import PREP_MODES
from alkit.captions.retrieval import DEFAULT_TOP_N, RANKS
from alkit.captions.search import MODES as KEYWORD_MODES
from alkit.prototypes.crops import PATCH_PX

SELECTORS = ("standard", "adaptive")


@dataclass(frozen=True)
class Shown:
    """How the key reference writes a type whose annotation alone would mislead (a validator widens it)."""

    text: str


def _int_list(minimum: int) -> Any:
    """A validator: an integer or a non-empty list of integers, each at least ``minimum``."""

    def check(value: Any) -> list[int]:
        values = [value] if isinstance(value, int) and not isinstance(value, bool) else value
        if not (isinstance(values, list) and values
                and all(isinstance(v, int) and not isinstance(v, bool) for v in values)):
            raise ValueError(f"must be a non-empty list of integers, got {value!r}")
        if min(values) < minimum:
            word = "positive" if minimum == 1 else f">= {minimum}"
            raise ValueError(f"must hold {word} integers, got {values!r}")
        return values

    return check


def _one_or_many(value: Any) -> Any:
    """A single path stands for a list of one."""
    return [value] if isinstance(value, str) else value


#: slide paths: one path, glob or ``.txt`` list (one path per line), or a list of them
Paths = Annotated[list[str], BeforeValidator(_one_or_many), Shown("path or list of paths")]
PositiveInts = Annotated[list[int], BeforeValidator(_int_list(1)), Shown("integer > 0 or list of them")]
Seeds = Annotated[list[int], BeforeValidator(_int_list(0)), Shown("integer >= 0 or list of them")]


class CohortSection(ConfigSection):
    """``cohort:`` the slides of the study and their ground truth."""

    slides: Paths = Field(min_length=1, description="training slides: paths, globs (`slides/*.tif`) or .txt lists "
                                                    "(one path per line), relative to the config")
    test_slides: Paths | None = Field(None, description="held-out slides the task is evaluated on (default: the "
                                                        "training slides, tagged as overlapping)")
    validation_slides: Paths | None = Field(None, description="fully annotated slides for early stopping / the "
                                                              "detection threshold, never trained on")
    ground_truth: dict[str, Any] = Field(description="the task's ground truth: keys per task below")
    slide_mpp: float | None = Field(None, gt=0, description="level-0 µm/px for slides whose files lack it")


class EmbeddingSection(ConfigSection):
    """``embedding:`` how the slides' tissue patches are embedded (cached per slide), or the existing
    stores the study uses instead (``stores``: from ``alkit embed`` or ``alkit import-features``)."""

    stores: str | None = Field(None, description="a folder of existing embedding stores (`alkit embed`, `alkit "
                                                 "import-features`) used instead of embedding: one store per slide, "
                                                 "one encoder and grid; `encoder`, `mpp`, `patch`, `stride` default "
                                                 "to the stores' and, where given, must match them")
    encoder: str | None = Field(None, validate_default=True,
                                description="encoder spec: handcrafted, resnet18[@imagenet|@CKPT], "
                                            "open_clip:ARCH[@WEIGHTS], plip[@DIR]; required without `stores`")
    out: str | None = Field(None, validate_default=True,
                            description="folder of the cached embedding stores (shared between studies); required "
                                        "without `stores`, not given with it")
    mpp: float | None = Field(None, gt=0, description="µm/px of the patches (default: the encoder's; with `stores`: "
                                                      "theirs)")
    patch: int = Field(256, gt=0, description="patch side, px at `mpp` (with `stores`: theirs)")
    stride: int | None = Field(None, gt=0, description="grid step, px at `mpp` (default: `patch`; with `stores`: "
                                                       "theirs)")
    min_tissue: float = Field(0.5, ge=0, le=1, description="tissue share a cell needs to be embedded")
    batch_size: int = Field(64, ge=1, description="patches per encoder batch")
    workers: int = Field(2, ge=0, description="patch-reader processes per device")
    accelerator: str = Field("auto", description="Lightning accelerator: auto, cpu, gpu")
    devices: int | str = Field(1, description="Lightning devices: N or auto")

    @field_validator("encoder", "out")
    @classmethod
    def _needed_without_stores(cls, value: str | None, info: ValidationInfo) -> str | None:
        """``encoder`` and ``out`` are required unless ``stores`` is given; ``out`` is refused with it
        (a study on given stores embeds and writes no store)."""
        stores = info.data.get("stores")
        if value is None and stores is None:
            raise PydanticKnownError("missing")
        if info.field_name == "out" and value is not None and stores is not None:
            raise ValueError("is not used with 'embedding.stores' (the study embeds nothing); give one of them")
        return value


class ClassQuerySection(ConfigSection):
    """``prototypes.classes.<name>:`` how one class's caption images are found (one of with, prompt, ids)."""

    with_: list[list[str]] | None = Field(None, alias="with", description="keyword search: groups of synonyms, an "
                                                                          "image's caption matches one term of each")
    without: list[str] = Field([], description="keyword search: terms no matching caption has")
    mode: Literal[KEYWORD_MODES] = Field(KEYWORD_MODES[0], description="keyword search: how a term matches a word")
    prompt: str | None = Field(None, description="retrieval: the text prompt images are ranked against")
    top_n: int = Field(DEFAULT_TOP_N, ge=1, description="retrieval: images kept")
    tags: list[str] = Field([], description="retrieval: only images with one of these tags")
    rank: Literal[RANKS] = Field(RANKS[0], description="retrieval: ranking score")
    ids: list[str | int] | None = Field(None, description="the image ids themselves")


class PrepSection(ConfigSection):
    """``prototypes.prep:`` how caption images are prepared before they are encoded."""

    mode: Literal[PREP_MODES] = Field(PREP_MODES[0], description="crop or resize to `size`")
    size: int | None = Field(None, gt=0, description="side, px (default: the encoder's patch side)")
    scale: float = Field(1.0, gt=0, description="image scale before cropping")


class CropsSection(ConfigSection):
    """``prototypes.crops:`` object-centred crops (tasks whose prototypes are crops, e.g. detection)."""

    figures: str | None = Field(None, description="a synthetic cohort's captions truth.json: crops around its figures")
    boxes: str | None = Field(None, description="a crop-box JSON {id: [x, y, w, h]} (`alkit prototypes build --boxes`)")
    side: float = Field(PATCH_PX, gt=0, description="centre crops of this side, image px (without figures / boxes)")


class PrototypesSection(ConfigSection):
    """``prototypes:`` the prototype strategy's prototype set: a built one, or built from a caption database."""

    path: str | None = Field(None, description="a built prototype set's folder (`alkit prototypes build`)")
    db: str | None = Field(None, description="caption database the set is built from (with `classes`)")
    classes: dict[str, ClassQuerySection] | None = Field(None, description="class name -> its query")
    exclude: list[str | int] | str = Field([], description="image ids left out: a list, or a file of ids")
    prep: PrepSection | None = Field(None, description="image preparation")
    crops: CropsSection | None = Field(None, description="object-centred crops")


class AcquisitionSection(ConfigSection):
    """``loop.acquisition:`` how the cycles after the initial set choose regions (uncertainty)."""

    measure: Literal[MEASURES] = Field("entropy", description="uncertainty measure (bald needs MC dropout)")
    mc_samples: int | None = Field(None, ge=0, description="MC-dropout samples (bald: default 10, at least 2)")


class LoopSection(ConfigSection):
    """``loop:`` the active-learning cycles."""

    cycles: int = Field(3, ge=1, description="cycles per run, the initial set included")
    acquisition: AcquisitionSection = Field(AcquisitionSection(), description="acquisition after cycle 0")


class BudgetsSection(ConfigSection):
    """``budgets:`` the grid of initial-set budgets."""

    n: PositiveInts = Field(description="regions per slide")
    l: PositiveInts = Field(description="region side, level-0 px")  # noqa: E741 - the paper's name


class TaskSection(BaseModel):
    """``task:`` which task the study learns; its other keys are the task's (``params_schema``)."""

    model_config = ConfigDict(extra="allow", strict=True)

    kind: str = Field(DEFAULT_TASK, description="a task registered in the `alkit.tasks` entry-point group")


class StudySchema(ConfigSection):
    """A study config (``alkit compare CONFIG``)."""

    study: str = Field(min_length=1, description="the study's name: its MLflow experiment")
    cohort: CohortSection = Field(description="slides and ground truth")
    embedding: EmbeddingSection = Field(description="patch embedding, or the existing stores used instead")
    prototypes: PrototypesSection | None = Field(None, description="required by the prototype strategy")
    strategies: list[str] = Field(min_length=1, description="initial-set strategies compared (registered in "
                                                            "`alkit.strategies`), e.g. full, random, diversity, "
                                                            "prototype")
    strategy_params: dict[str, dict[str, Any]] = Field({}, description="strategy name -> its parameters")
    selector: Literal[SELECTORS] = Field("standard", description="region selector of the map-based strategies")
    selector_options: dict[str, Any] = Field({}, description="the selector's options (e.g. the adaptive rules)")
    budgets: BudgetsSection = Field(description="n regions of side l per slide")
    seeds: Seeds = Field(description="one run per seed")
    loop: LoopSection = Field(LoopSection(), description="active-learning cycles")
    task: TaskSection = Field(TaskSection(), description="what is learned; its parameters per task below")
    out: str = Field(description="folder of the study's results (pools, prototypes, summary)")


# ------------------------------------------------------------------------------------------ errors


def _unwrap(annotation: Any) -> Any:
    """``annotation`` without ``Annotated`` and without ``None`` in a union."""
    while get_origin(annotation) is Annotated:
        annotation = get_args(annotation)[0]
    if _is_union(annotation):
        members = [a for a in get_args(annotation) if a is not type(None)]
        if len(members) == 1:
            return _unwrap(members[0])
    return annotation


def _is_union(annotation: Any) -> bool:
    return get_origin(annotation) in (Union, types.UnionType)


def _is_section(annotation: Any) -> bool:
    return inspect.isclass(annotation) and issubclass(annotation, BaseModel)


def keys_of(section: type[BaseModel]) -> list[str]:
    """The keys a section accepts (aliases where a key is no Python name, e.g. ``with``)."""
    return [f.alias or name for name, f in section.model_fields.items()]


def _walk(model: type[BaseModel], loc: Sequence[Any]) -> tuple[list[str], type[BaseModel] | None]:
    """The key path of pydantic's error location ``loc`` (union-member tags dropped, list indices as
    ``[i]``) and the section that holds its last key."""
    parts: list[str] = []
    annotation: Any = model
    owner: type[BaseModel] | None = None
    for item in loc:
        annotation = _unwrap(annotation)
        if _is_section(annotation) and isinstance(item, str):
            fields = {f.alias or name: f for name, f in annotation.model_fields.items()}
            owner = annotation
            parts.append(item)
            annotation = fields[item].annotation if item in fields else None
        elif get_origin(annotation) is dict:
            parts.append(str(item))
            annotation = get_args(annotation)[1]
        elif get_origin(annotation) is list and isinstance(item, int):
            parts.append(f"[{item}]")
            annotation = get_args(annotation)[0]
        elif _is_union(annotation):
            annotation = None  # a tag naming the union member that failed: no key of its own
        else:
            parts.append(f"[{item}]" if isinstance(item, int) else str(item))
            annotation, owner = None, None
    return parts, owner


def _dotted(parts: Iterable[str]) -> str:
    return "".join(p if p.startswith("[") or not i else f".{p}" for i, p in enumerate(parts))


def _short(value: Any, width: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= width else text[:width - 3] + "..."


_TYPES = {"int_type": "an integer", "int_parsing": "an integer", "int_from_float": "an integer",
          "float_type": "a number", "float_parsing": "a number", "string_type": "text", "bool_type": "true or false",
          "bool_parsing": "true or false", "list_type": "a list", "dict_type": "a mapping", "model_type": "a mapping",
          "model_attributes_type": "a mapping", "none_required": "null", "string_too_short": "non-empty text"}
_BOUNDS = {"greater_than": "> {gt}", "greater_than_equal": ">= {ge}", "less_than": "< {lt}",
           "less_than_equal": "<= {le}", "too_short": "at least {min_length} item(s) long",
           "too_long": "at most {max_length} item(s) long", "literal_error": "one of {expected}"}


def _reason(error: Mapping[str, Any]) -> str:
    """What a value must be, from one pydantic error (``an integer``, ``> 0``)."""
    kind, ctx = error["type"], error.get("ctx", {})
    if kind in _TYPES:
        return _TYPES[kind]
    if kind in _BOUNDS:  # a float field's bounds come as floats: 1.0 reads as 1, as written in the schema
        return _BOUNDS[kind].format(**{k: int(v) if isinstance(v, float) and v.is_integer() else v
                                       for k, v in ctx.items()})
    return str(error["msg"]).lower()


def _number_hint(errors: Sequence[Mapping[str, Any]]) -> str:
    value = errors[0].get("input")
    if isinstance(value, str) and any(e["type"] in ("float_type", "int_type") for e in errors):
        try:
            float(value)
        except ValueError:
            return ""
        return " (YAML reads it as text: write a number such as 1.0e-4, with a decimal point)"
    return ""


def closest(name: str, known: list[str] | tuple[str, ...]) -> str | None:
    """The valid name nearest to a misspelt ``name`` (difflib, cutoff 0.7), or None."""
    found = difflib.get_close_matches(name, list(known), n=1, cutoff=0.7)
    return found[0] if found else None


def _unknown_hints(unknown: list[tuple[str, str, list[str], str]]) -> str:
    """``did you mean 'patch'?`` for each unknown key, else the keys its section knows."""
    hints = []
    for dotted, key, known, parent in unknown:
        close = closest(key, known)
        hint = (f"did you mean {close!r}?" if close else
                f"{f'key {parent!r}' if parent else 'the study config'} knows {', '.join(sorted(known))}")
        hints.append(hint if len(unknown) == 1 else f"{dotted!r}: {hint}")
    return "; ".join(hints)


def describe(exc: ValidationError, model: type[BaseModel], prefix: Sequence[str] = (),
             unknown: str = "unknown key(s) {dotted}") -> str:
    """One line for ``model``'s validation errors: unknown keys first (with the closest valid name),
    else the first bad value with its dotted key path and reason, and how many problems follow.

    ``prefix`` is the key path of the validated mapping in the config (``("task",)``); ``unknown`` words
    the unknown keys (``{dotted}``: their full paths, ``{relative}``: their paths below ``prefix``).
    """
    errors = exc.errors(include_url=False)
    by_key: dict[str, list] = {}
    extra = []
    for error in errors:
        parts, owner = _walk(model, error["loc"])
        full = [*prefix, *parts]
        if error["type"] == "extra_forbidden":
            known = keys_of(owner) if owner is not None else []
            extra.append((_dotted(full), str(error["loc"][-1]), known, _dotted(full[:-1]), _dotted(parts)))
        else:
            by_key.setdefault(_dotted(full), []).append(error)
    more = len(by_key) + len(extra) - 1
    tail = f" (and {more} more problem{'s' if more > 1 else ''})" if more > 0 and not extra else ""
    if extra:
        label = unknown.format(dotted=[e[0] for e in extra], relative=[e[4] for e in extra])
        tail = f" (and {len(by_key)} more problem{'s' if len(by_key) > 1 else ''})" if by_key else ""
        return f"{label}: {_unknown_hints([e[:4] for e in extra])}{tail}"
    key, group = next(iter(by_key.items()))
    first = group[0]
    if first["type"] == "missing":
        return f"missing key {key!r}{tail}"
    if first["type"] in ("value_error", "assertion_error"):
        reason = str(first.get("ctx", {}).get("error", first["msg"]))
        return f"key {key!r}{'' if reason.startswith(':') else ' '}{reason}{tail}"
    reasons = list(dict.fromkeys(_reason(e) for e in group))
    return f"key {key!r} must be {' or '.join(reasons)}, got {_short(first.get('input'))}{_number_hint(group)}{tail}"


# ------------------------------------------------------------------------------------------ reference

_NAMES = {int: "integer", float: "number", str: "text", bool: "true/false", type(None): "null"}


def _constraints(metadata: Iterable[Any]) -> str:
    words = []
    for m in metadata:
        for attr, sign in (("gt", ">"), ("ge", ">="), ("lt", "<"), ("le", "<=")):
            if isinstance(m, getattr(annotated_types, attr.capitalize())):
                words.append(f"{sign} {getattr(m, attr)}")
    return f" {', '.join(words)}" if words else ""


def type_text(annotation: Any, metadata: Sequence[Any] = ()) -> str:
    """A type as the key reference writes it (``integer > 0``, ``list of text``, ``a or b``)."""
    shown = [m for m in metadata if isinstance(m, Shown)]
    if shown:
        return shown[0].text
    if get_origin(annotation) is Annotated:
        base, *inner = get_args(annotation)
        return type_text(base, [*inner, *metadata])
    bounds = _constraints(metadata)
    if _is_union(annotation):  # the field's bounds apply to its values, not to null
        members = sorted(get_args(annotation), key=lambda a: a is type(None))  # null last
        return " or ".join(type_text(a, () if a is type(None) else metadata) for a in members)
    if get_origin(annotation) is Literal:
        return " or ".join(f"`{v}`" for v in get_args(annotation))
    if get_origin(annotation) is list:
        return f"list of {type_text(get_args(annotation)[0])}"
    if get_origin(annotation) is dict:
        value = _unwrap(get_args(annotation)[1])
        return "mapping" if _is_section(value) or value is Any else f"mapping of {type_text(value)}"
    if _is_section(annotation):
        return "mapping"
    return _NAMES.get(annotation, getattr(annotation, "__name__", str(annotation))) + bounds


def _default_text(field: Any) -> str:
    if field.is_required():
        return "required"
    default = field.get_default(call_default_factory=True)
    if isinstance(default, BaseModel) or default in ({}, []) or default is None:
        return ""
    return f"`{default}`" if not isinstance(default, bool) else f"`{str(default).lower()}`"


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def reference_rows(model: type[BaseModel], prefix: str = "") -> list[tuple[str, str, str, str]]:
    """``(key, type, default, meaning)`` of every key of ``model`` and its nested sections."""
    rows = []
    for name, field in model.model_fields.items():
        key = f"{prefix}{field.alias or name}"
        rows.append((key, type_text(field.annotation, field.metadata), _default_text(field), field.description or ""))
        inner = _unwrap(field.annotation)
        if _is_section(inner):
            rows += reference_rows(inner, f"{key}.")
        elif get_origin(inner) is dict and _is_section(_unwrap(get_args(inner)[1])):
            rows += reference_rows(_unwrap(get_args(inner)[1]), f"{key}.<name>.")
    return rows


def _table(rows: list[tuple[str, str, str, str]]) -> list[str]:
    lines = ["| key | type | default | meaning |", "|---|---|---|---|"]
    lines += [f"| `{k}` | {_cell(t)} | {_cell(d)} | {_cell(m)} |" for k, t, d, m in rows]
    return lines


def render_reference(tasks: Sequence[str]) -> str:
    """The markdown key reference of a study config and of the ``tasks``' own keys (README.md's
    "Study config reference" section is this text; ``alkit compare --schema`` prints it)."""
    lines = ["### Study config reference", "",
             "Generated from the schema (`alkit/study/schema.py` and each task's `params_schema` / "
             "`ground_truth_schema`; `alkit compare --schema` prints it). Every key is checked before any work: "
             "an unknown key is refused with the closest valid name, a value must have the type and range shown "
             "(YAML's own types: `\"3\"` is text, `1e-4` without a decimal point too), paths are relative to the "
             "config file, and an error names the file, the key path and the reason.", ""]
    lines += _table(reference_rows(StudySchema))
    for name in tasks:
        cls = task_class(name)
        for what, key, attr in (("parameters", "task", "params_schema"),
                                ("ground truth", "cohort.ground_truth", "ground_truth_schema")):
            schema = getattr(cls, attr, None)
            if schema is None:
                continue
            doc = (inspect.getdoc(schema) or "").split("\n\n")[0].replace("\n", " ")
            doc = re.sub(r":\w+:`~?([^`]+)`", r"`\1`", doc).replace("``", "`")  # reST roles to markdown code
            lines += ["", f"#### `{key}:` of `task.kind: {name}` ({what})", ""] + ([doc, ""] if doc else [])
            lines += _table(reference_rows(schema, f"{key}."))
    return "\n".join(lines) + "\n"


def task_schemas(cls: type) -> tuple[type[ConfigSection] | None, type[ConfigSection] | None]:
    """A task class's ``(params_schema, ground_truth_schema)``; None where a (plug-in) task declares none."""
    return getattr(cls, "params_schema", None), getattr(cls, "ground_truth_schema", None)
