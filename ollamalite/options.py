"""Ollama `options`: validation and the split into sampling, runtime and load-time settings.

Follows Ollama's `Options.FromMap`: `null` values are skipped, integers accept floats
(truncated), unknown keys are ignored with a warning. Precedence is request over models.yaml
over defaults.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, fields, replace
from typing import Any, ClassVar, Mapping

from marshmallow import EXCLUDE, Schema, ValidationError
from marshmallow import fields as mf
from marshmallow import validate

log = logging.getLogger(__name__)

# Options that size or place the model: they only matter when a model is loaded, and most have
# no meaning on a CPU build of llama.cpp.
LOAD_TIME_KEYS = frozenset(
    {"num_gpu", "main_gpu", "use_mmap", "use_mlock", "low_vram", "numa", "vocab_only", "f16_kv",
     "logits_all", "num_thread"}
)
# Options Ollama has removed and ignores silently; kept so they log as ignored, not unknown.
IGNORED_KEYS = frozenset({"tfs_z", "penalize_newline", "draft_num_predict"})
# The JSON Schema of a field that takes a string or a list of strings (for the OpenAPI document,
# which cannot infer it from a custom field).
STRING_OR_LIST = {"anyOf": [{"type": "string"}, {"type": "array", "items": {"type": "string"}}]}


class TruncatingInt(mf.Integer):
    """Ollama truncates float values given for integer options."""

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> int:
        if isinstance(value, float) and value == value and abs(value) != float("inf"):
            value = int(value)
        return super()._deserialize(value, attr, data, **kwargs)


class StopField(mf.Field):
    """`stop` as a list of strings; a lone string is accepted as a list of one."""

    json_schema: ClassVar[dict[str, Any]] = STRING_OR_LIST

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> tuple:
        items = [value] if isinstance(value, str) else value
        if not isinstance(items, list) or not all(isinstance(s, str) for s in items):
            raise ValidationError("must be a string or a list of strings")
        return tuple(s for s in items if s)


def _unit(**kw: Any) -> mf.Float:
    return mf.Float(validate=validate.Range(min=0.0, max=1.0), **kw)


class OptionsSchema(Schema):
    class Meta:
        unknown = EXCLUDE

    temperature = mf.Float(validate=validate.Range(min=0.0))
    top_k = TruncatingInt(validate=validate.Range(min=0))
    top_p = _unit()
    min_p = _unit()
    typical_p = _unit()
    repeat_penalty = mf.Float(validate=validate.Range(min=0.0))
    repeat_last_n = TruncatingInt(validate=validate.Range(min=-1))
    presence_penalty = mf.Float()
    frequency_penalty = mf.Float()
    seed = TruncatingInt()
    mirostat = TruncatingInt(validate=validate.OneOf([0, 1, 2]))
    mirostat_tau = mf.Float(validate=validate.Range(min=0.0))
    mirostat_eta = mf.Float(validate=validate.Range(min=0.0))
    stop = StopField()
    num_predict = TruncatingInt(validate=validate.Range(min=-2))
    max_tokens = TruncatingInt(validate=validate.Range(min=-2))
    num_ctx = TruncatingInt(validate=validate.Range(min=1))
    num_batch = TruncatingInt(validate=validate.Range(min=1))
    num_keep = TruncatingInt(validate=validate.Range(min=-1))
    num_thread = TruncatingInt(validate=validate.Range(min=0))
    num_gpu = TruncatingInt()
    main_gpu = TruncatingInt()
    use_mmap = mf.Boolean()
    use_mlock = mf.Boolean()
    low_vram = mf.Boolean()
    numa = mf.Boolean()
    vocab_only = mf.Boolean()
    f16_kv = mf.Boolean()
    logits_all = mf.Boolean()


_SCHEMA = OptionsSchema()
_KNOWN = frozenset(_SCHEMA.fields) | IGNORED_KEYS


def validate_options(raw: Mapping[str, Any]) -> dict[str, Any]:
    """Checked, typed options; raises marshmallow's ValidationError naming the bad keys."""
    unknown = sorted(k for k in raw if k not in _KNOWN)
    if unknown:
        log.warning("invalid option provided (ignored): %s", ", ".join(unknown))
    present = {k: v for k, v in raw.items() if v is not None and k not in IGNORED_KEYS}
    loaded = _SCHEMA.load(present)
    if "max_tokens" in loaded:
        loaded.setdefault("num_predict", loaded.pop("max_tokens"))
        loaded.pop("max_tokens", None)
    return loaded


@dataclass(frozen=True)
class SamplingParams:
    """Per-request sampler chain settings (Ollama's defaults)."""

    temperature: float = 0.8
    top_k: int = 40
    top_p: float = 0.9
    min_p: float = 0.0
    typical_p: float = 1.0
    repeat_penalty: float = 1.0
    repeat_last_n: int = 64
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    seed: int = -1
    mirostat: int = 0
    mirostat_tau: float = 5.0
    mirostat_eta: float = 0.1


_SAMPLING_KEYS = frozenset(f.name for f in fields(SamplingParams))


@dataclass(frozen=True)
class RunOptions:
    """Everything one generation needs from `options`, defaults already applied."""

    sampling: SamplingParams = SamplingParams()
    num_predict: int = -1
    stop: tuple[str, ...] = ()
    num_ctx: int | None = None
    num_batch: int | None = None
    num_keep: int = 4  # prompt tokens a context shift keeps (-1: all), Ollama's default


def merge(*layers: Mapping[str, Any]) -> dict[str, Any]:
    """Later layers win: defaults, then models.yaml, then the request."""
    merged: dict[str, Any] = {}
    for layer in layers:
        merged.update(layer)
    return merged


def run_options(opts: Mapping[str, Any]) -> RunOptions:
    """Split validated options into the engine's settings; load-time keys are only logged."""
    ignored = sorted(k for k in opts if k in LOAD_TIME_KEYS)
    if ignored:
        log.info("load-time options not applied to a running model: %s", ", ".join(ignored))
    sampling = replace(SamplingParams(), **{k: v for k, v in opts.items() if k in _SAMPLING_KEYS})
    return RunOptions(
        sampling=sampling,
        num_predict=opts.get("num_predict", -1),
        stop=tuple(opts.get("stop", ())),
        num_ctx=opts.get("num_ctx"),
        num_batch=opts.get("num_batch"),
        num_keep=opts.get("num_keep", 4),
    )
