"""Typed experiment configuration: dataclasses with defaults, YAML recipes that override them, dotted overrides.

A recipe (``configs/<model>/<dataset>.yaml``) only overrides defaults::

    model:
      name: backbone
      num_heads: 10
    train:
      lr: 1.0e-3

``--set train.lr=3e-4`` applies a dotted override; unknown keys and values of the wrong type raise
:class:`ConfigError`. The model section is typed by the model's own config dataclass, found in the registry.
Data-derived facts (feature dims, sequence lengths) are never written into the config.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from hrlf.errors import HrlfError


class ConfigError(HrlfError, ValueError):
    """A recipe or override names an unknown key or carries a value of the wrong type or range.

    Attributes:
        key: the dotted key at fault, when one is (range checks set it, so the caller can name the key's source).
    """

    def __init__(self, message: str, *, key: str | None = None) -> None:
        super().__init__(message)
        self.key = key


@dataclass
class DataCfg:
    path: str = ""  # feature file: MMSA pickle (aligned_50.pkl, ...) or MulT pickle (iemocap_data.pkl, ...)
    name: str = ""  # dataset name in results; "" = from the file (mosi, mosei, ... by split sizes, else its stem)
    nonfinite: str = "zero"  # policy for non-finite feature values (MOSEI audio has -inf): zero | error
    num_workers: int = 0  # DataLoader worker processes (each runs one torch thread)


@dataclass
class MissingCfg:
    enabled: bool = True  # train with Modality Stochastic Missing (HRLF §6.1); False = complete data only
    ratio_dist: str = "discrete"  # frame-drop ratio per sample: discrete {0, step, ..., 1} | uniform U(0, 1)
    ratio_step: float = 0.1  # grid step of the discrete ratio distribution
    subset_prob: float = 0.5  # probability that a sample keeps only one of the six proper modality subsets
    per_modality_ratio: bool = False  # one ratio per modality instead of one per sample


@dataclass
class TrainCfg:
    epochs: int = 50  # maximum number of epochs
    batch_size: int = 128  # training mini-batch size
    length_bucket: int = 8  # sort each window of this many shuffled batches by length (less padding); 1 = off
    lr: float = 1e-3  # Adam learning rate
    weight_decay: float = 0.0  # Adam weight decay
    grad_clip: float = 0.0  # clip the gradient norm to this value; 0 = no clipping
    patience: int = 10  # stop after this many epochs without a better validation score; 0 = never stop early
    select_metric: str = "loss"  # validation score for early stopping and checkpoint selection: loss | mae | f1
    eval_batch_size: int = 512  # batch size for validation and test passes
    cache_teacher: bool = True  # distillation students: the frozen teacher's outputs computed once per stage
    seed: int = 1111  # training seed (weights, shuffling, dropout and training masks all derive from it)
    device: str = "cpu"  # torch device: cpu | cuda | auto (cuda when available)
    progress: bool = True  # a progress bar with loss and ETA on a terminal, else one line per epoch; false = quiet


@dataclass
class EvalCfg:
    mask_seed: int = 0  # seed of the evaluation masks (identical for every model and training seed)
    rates: list[float] = field(default_factory=lambda: [round(0.1 * i, 1) for i in range(11)])  # intra sweep


@dataclass
class TextEncoderCfg:
    """The ``text_encoder`` section: where a model's language input comes from (:mod:`hrlf.models.text_encoder`).

    Left out of a resolved config (``config.yaml``, ``checkpoint.json``) while it holds its defaults, so run
    folders written before the section existed still match their recipes.
    """

    name: str = "features"  # features (the file's text array) | minilm | mpnet (run inside the model on token ids)
    finetune: bool = True  # train the encoder with the model (false: frozen, in eval mode)
    lr: float = 2e-5  # the encoder's Adam learning rate when fine-tuned (the rest of the model keeps train.lr)
    freeze_layers: int = 0  # keep the embeddings and this many lowest layers frozen while fine-tuning
    checkpointing: bool = False  # gradient checkpointing inside the encoder (less memory, more time)
    # the language input the model sees: none = the token states as the language sequence (the model's own
    # Transformer and last-step read-out pool them); mean = one vector per clip, the mean of the present tokens'
    # states (the pooling MiniLM and mpnet were trained with as sentence encoders), as a length-1 sequence
    pooling: str = "none"
    warmup: float = 0.0  # fraction of each stage's training steps over which the encoder's lr rises from 0
    decay: str = "constant"  # the encoder's lr after the warm-up: constant | linear (to 0 at the last step)

    @property
    def active(self) -> bool:
        """The model runs an encoder on token ids (anything but ``features``)."""
        return self.name != "features"


@dataclass
class ExperimentCfg:
    model_name: str = "backbone"  # registry name of the model
    model: Any = None  # the model's own config dataclass (filled from the registry when None)
    data: DataCfg = field(default_factory=DataCfg)
    missing: MissingCfg = field(default_factory=MissingCfg)
    train: TrainCfg = field(default_factory=TrainCfg)
    eval: EvalCfg = field(default_factory=EvalCfg)
    text_encoder: TextEncoderCfg = field(default_factory=TextEncoderCfg)

    def __post_init__(self) -> None:
        if self.model is None:
            self.model = model_config_cls(self.model_name)()


#: allowed values of string fields, per section (model configs declare and check theirs in ``__post_init__``)
CHOICES: dict[str, dict[str, tuple[str, ...]]] = {
    "data": {"nonfinite": ("zero", "error")},
    "missing": {"ratio_dist": ("discrete", "uniform")},
    "train": {"select_metric": ("loss", "mae", "f1")},
    "text_encoder": {
        "name": ("features", "minilm", "mpnet"),
        "pooling": ("none", "mean"),
        "decay": ("constant", "linear"),
    },
}

#: the config sections besides ``model``, in recipe order
SECTIONS = ("data", "missing", "train", "eval", "text_encoder")


def validate(cfg: ExperimentCfg) -> None:
    """Refuse values no run could use, before any work starts (one :class:`ConfigError` naming the key)."""

    def bad(key: str, expected: str, found: Any) -> ConfigError:
        return ConfigError(f"key {key!r}: expected {expected}, found {found!r}", key=key)

    sections = {"data": cfg.data, "missing": cfg.missing, "train": cfg.train, "text_encoder": cfg.text_encoder}
    for section, obj in sections.items():
        for key, allowed in CHOICES[section].items():
            if getattr(obj, key) not in allowed:
                raise bad(f"{section}.{key}", " | ".join(allowed), getattr(obj, key))
    t = cfg.train
    for key in ("epochs", "batch_size", "eval_batch_size", "length_bucket"):
        if getattr(t, key) < 1:
            raise bad(f"train.{key}", "an integer >= 1", getattr(t, key))
    for key in ("patience",):
        if getattr(t, key) < 0:
            raise bad(f"train.{key}", "an integer >= 0", getattr(t, key))
    if not (math.isfinite(t.lr) and t.lr > 0):
        raise bad("train.lr", "a finite number > 0", t.lr)
    for key in ("weight_decay", "grad_clip"):
        if not (math.isfinite(getattr(t, key)) and getattr(t, key) >= 0):
            raise bad(f"train.{key}", "a finite number >= 0", getattr(t, key))
    if not (t.device in ("cpu", "cuda", "auto") or t.device.startswith("cuda:")):
        raise bad("train.device", "cpu | cuda | cuda:N | auto", t.device)
    te = cfg.text_encoder
    if not (math.isfinite(te.lr) and te.lr > 0):
        raise bad("text_encoder.lr", "a finite number > 0", te.lr)
    if te.freeze_layers < 0:
        raise bad("text_encoder.freeze_layers", "an integer >= 0", te.freeze_layers)
    if not 0.0 <= te.warmup < 1.0:
        raise bad("text_encoder.warmup", "a fraction in [0, 1)", te.warmup)
    if cfg.data.num_workers < 0:
        raise bad("data.num_workers", "an integer >= 0", cfg.data.num_workers)
    m = cfg.missing
    if not 0.0 <= m.subset_prob <= 1.0:
        raise bad("missing.subset_prob", "a probability in [0, 1]", m.subset_prob)
    if not 0.0 < m.ratio_step <= 1.0:
        raise bad("missing.ratio_step", "a step in (0, 1]", m.ratio_step)
    rates = cfg.eval.rates
    tenths = [round(r * 10) for r in rates]
    if not rates or any(abs(r * 10 - k) > 1e-9 or not 0 <= k <= 10 for r, k in zip(rates, tenths, strict=True)):
        raise bad("eval.rates", "missing rates on the 0.1 grid of [0, 1]", rates)
    if tenths != sorted(set(tenths)):
        raise bad("eval.rates", "increasing rates without repeats", rates)
    if len(rates) < 2:  # the intra protocol's AUC spans the rates
        raise bad("eval.rates", "at least two missing rates (the robustness AUC spans them)", rates)
    try:  # the model config checks its own fields (hrlf.models.layers' checks), re-run after every override
        cfg.model.__post_init__()
    except ValueError as exc:  # "<field>: expected ..., found ..."
        field, _, rest = str(exc).partition(": ")
        raise ConfigError(f"key 'model.{field}': {rest}", key=f"model.{field}") from None


def model_config_cls(name: str) -> type:
    from hrlf.registry import get_model_spec

    try:
        return get_model_spec(name).config_cls
    except KeyError as exc:
        raise ConfigError(str(exc).strip("'\"")) from None


def to_dict(cfg: ExperimentCfg) -> dict[str, Any]:
    """Plain dict of the resolved config, in recipe layout (``model.name`` holds the model name)."""
    out = {
        "model": {"name": cfg.model_name, **dataclasses.asdict(cfg.model)},
        "data": dataclasses.asdict(cfg.data),
        "missing": dataclasses.asdict(cfg.missing),
        "train": dataclasses.asdict(cfg.train),
        "eval": dataclasses.asdict(cfg.eval),
    }
    if cfg.text_encoder != TextEncoderCfg():  # at its defaults it is left out (see TextEncoderCfg)
        out["text_encoder"] = dataclasses.asdict(cfg.text_encoder)
    return out


def from_dict(raw: dict[str, Any], *, source: str = "config", check: bool = True) -> ExperimentCfg:
    """Build a config from a recipe-layout dict; every key is checked against the dataclasses.

    With ``check`` the values are range-checked too (:func:`validate`); errors name ``source``.
    """
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: expected a mapping at the top level, found {type(raw).__name__}")
    raw = dict(raw)
    model_section = raw.pop("model", None) or {}
    if not isinstance(model_section, dict):
        raise ConfigError(f"{source}: section 'model': expected a mapping, found {model_section!r}")
    model_raw = dict(model_section)
    name = model_raw.pop("name", "backbone")
    if not isinstance(name, str):
        raise ConfigError(f"{source}: key 'model.name': expected a model name, found {name!r}")
    cfg = ExperimentCfg(model_name=name, model=model_config_cls(name)())
    for key, value in model_raw.items():
        set_dotted(cfg, f"model.{key}", value, source=source)
    for section, values in raw.items():
        if section not in SECTIONS:
            raise ConfigError(f"{source}: unknown section {section!r} (known: model, {', '.join(SECTIONS)})")
        if values is None:
            continue
        if not isinstance(values, dict):
            raise ConfigError(f"{source}: section {section!r}: expected a mapping, found {values!r}")
        for key, value in values.items():
            set_dotted(cfg, f"{section}.{key}", value, source=source)
    if check:
        try:
            validate(cfg)
        except ConfigError as exc:
            raise ConfigError(f"{source}: {exc}", key=exc.key) from None
    return cfg


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> ExperimentCfg:
    """Load a YAML recipe (or the defaults when ``path`` is None) and apply ``a.b=c`` overrides."""
    if path is None:
        raw: dict[str, Any] = {}
        source = "defaults"
    else:
        p = Path(path)
        if not p.is_file():
            raise ConfigError(f"config file {p} does not exist")
        try:
            raw = yaml.safe_load(p.read_text()) or {}
        except yaml.MarkedYAMLError as exc:
            mark, opened = exc.problem_mark or exc.context_mark, exc.context_mark
            where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
            context = exc.context or ""
            if context and opened is not None and mark is not None and opened.line != mark.line:
                context += f" (started at line {opened.line + 1}, column {opened.column + 1}):"
            what = " ".join(str(x) for x in (context, exc.problem) if x) or type(exc).__name__
            raise ConfigError(f"{p}: not valid YAML{where}: {what}") from None
        except (yaml.YAMLError, UnicodeDecodeError) as exc:
            first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise ConfigError(f"{p}: not valid YAML: {first}") from None
        source = str(p)
    # a model.name override changes the model section's type, so it is applied before building
    overrides = list(overrides or [])
    for item in overrides:
        key, _, value = item.partition("=")
        if key.strip() == "model.name":
            raw = dict(raw)
            raw["model"] = {**(raw.get("model") or {}), "name": value.strip()}
    # range checks wait for the overrides: a value the recipe has out of range may be overridden
    cfg = from_dict(raw, source=source, check=False)
    overridden: set[str] = set()
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r}: expected KEY=VALUE, e.g. train.lr=3e-4")
        key, _, value = item.partition("=")
        if key.strip() == "model.name":
            continue
        set_dotted(cfg, key.strip(), value, source="--set", from_text=True)
        overridden.add(key.strip())
    try:
        validate(cfg)
    except ConfigError as exc:  # named after where the value at fault came from
        where = "--set" if exc.key in overridden or path is None else source
        raise ConfigError(f"{where}: {exc}", key=exc.key) from None
    return cfg


def set_dotted(cfg: ExperimentCfg, dotted: str, value: Any, *, source: str = "--set", from_text: bool = False) -> None:
    """Set ``section.key`` on ``cfg`` after checking that the key exists and the value has the field's type.

    With ``from_text`` the value is command-line text: kept verbatim for string fields (a path such as
    ``runs #1/x.pkl`` stays whole), read as YAML for every other type.
    """
    parts = dotted.split(".")
    if len(parts) != 2:
        raise ConfigError(f"{source}: key {dotted!r}: expected SECTION.KEY (e.g. train.lr)")
    section, key = parts
    if section == "model_name":
        raise ConfigError(f"{source}: use model.name to choose the model")
    target = getattr(cfg, section, None)
    if target is None or not dataclasses.is_dataclass(target):
        raise ConfigError(f"{source}: unknown section {section!r} (known: model, {', '.join(SECTIONS)})")
    hints = typing.get_type_hints(type(target))
    names = [f.name for f in dataclasses.fields(target)]
    if key not in names:
        raise ConfigError(f"{source}: unknown key {dotted!r} (known in {section}: {', '.join(names)})")
    where = f"{source}: key {dotted!r}"
    if from_text and hints[key] is not str:
        try:
            value = yaml.safe_load(value) if value.strip() else value
        except yaml.YAMLError:
            raise ConfigError(f"{where}: cannot read value {value!r}") from None
    setattr(target, key, _coerce(value, hints[key], where=where))


def _coerce(value: Any, hint: Any, *, where: str) -> Any:
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        errors = []
        for arm in typing.get_args(hint):
            if arm is type(None):
                if value is None:
                    return None
                continue
            try:
                return _coerce(value, arm, where=where)
            except ConfigError as exc:
                errors.append(str(exc))
        raise ConfigError(f"{where}: expected {hint}, found {value!r}")
    if hint is Any:
        return value
    if origin in (list, tuple):
        if not isinstance(value, list | tuple):
            raise ConfigError(f"{where}: expected a list, found {value!r}")
        (arm, *_) = typing.get_args(hint) or (Any,)
        items = [_coerce(v, arm, where=where) for v in value]
        return items if origin is list else tuple(items)
    if hint is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{where}: expected true or false, found {value!r}")
    if hint is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise ConfigError(f"{where}: expected an integer, found {value!r}")
    if hint is float:
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)  # YAML 1.1 reads "1e-3" (no dot) as a string
            except ValueError:
                pass
        raise ConfigError(f"{where}: expected a number, found {value!r}")
    if hint is str:
        if isinstance(value, str):
            return value
        raise ConfigError(f"{where}: expected a string, found {value!r}")
    raise ConfigError(f"{where}: unsupported field type {hint}")
