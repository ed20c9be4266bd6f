"""The attention shapes of a model, read from its Hugging Face `config.json` or a built-in preset.

A model's layers fall into a few layer kinds (full attention, a sliding window, DeepSeek's
multi-head latent attention); each kind, for the contexts, prefill ubatch, decode widths and KV
types asked for, gives the `suites.Case`s that `kgen tune` and `kgen bench` run. A field that a
published config.json leaves out takes the default of the transformers config class that reads
it (listed per model_type in ARCHITECTURES and reported with the result); a field or value kgen
does not know how to read is a ModelError naming it, never a guess. docs/models.md tells what
is derived from which field.
"""
from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from pathlib import Path

from .errors import KgenError
from .shapes import PRECISIONS
from .tools.suites import Case
from .types import KvType
from .variant import HEAD_MAX, HEAD_MIN, HEAD_STEP

PRESET_DIR = Path(__file__).resolve().parent / "data" / "models"
SOURCE_KEY = "_source"   # a preset's URL of the config.json it copies; not a config field

DEFAULT_CONTEXTS = (4096,)
DEFAULT_UBATCH = 512
DEFAULT_DECODE_BATCH = (1,)
DEFAULT_KV_TYPES = (("f16", "f16"),)
DEFAULT_PRECISIONS = ("f32",)

FULL, SLIDING = "full_attention", "sliding_attention"
LAYER_TYPES = (FULL, SLIDING)
MLA_FIELDS = ("kv_lora_rank", "qk_rope_head_dim", "qk_nope_head_dim", "v_head_dim")
HEAD_LIMIT = (f"kgen runs head sizes that are multiples of {HEAD_STEP} from {HEAD_MIN} to {HEAD_MAX} "
              "(kgen.variant HEAD_MIN, HEAD_MAX, HEAD_STEP)")


class ModelError(KgenError, ValueError):
    """A config, preset, shape or option that kgen derives no attention cases from; says why."""


# --- architectures ------------------------------------------------------------------------------
@dataclass(frozen=True)
class Architecture:
    """How transformers reads one model_type's attention fields.

    sliding: which layers use `sliding_window`, when the config has no `layer_types`:
      "none" (no layer does), "every_layer", "max_window_layers" (Qwen: layers from index
      max_window_layers on, when use_sliding_window), "pattern" (layer i iff (i + 1) %
      sliding_window_pattern != 0, or `pattern` where the config class has no such field:
      Gemma's interleave, gpt-oss's alternation).
    defaults: the config class's defaults for the fields this module reads, used where the
      config omits them (Gemma 3's published configs name only what differs from these)."""

    config_class: str
    sliding: str = "none"
    defaults: dict = field(default_factory=dict)
    pattern: int = 0                      # "pattern" without a sliding_window_pattern field: the
                                          # interleave the config class builds layer_types with
    query_pre_attn_scalar: bool = False   # scale = query_pre_attn_scalar ** -0.5 (Gemma 2, 3)
    softcap: bool = False                 # reads attn_logit_softcapping
    sinks: bool = False                   # one learned sink logit per query head (gpt-oss)
    mla: bool = False                     # multi-head latent attention (DeepSeek V2, V3)
    text_config: str | None = None        # the attention fields live in text_config, of this type


_QWEN = {"use_sliding_window": False, "sliding_window": 4096, "max_window_layers": 28}
ARCHITECTURES: dict[str, Architecture] = {
    "llama": Architecture("LlamaConfig"),
    "mistral": Architecture("MistralConfig", "every_layer", {"sliding_window": 4096}),
    "mixtral": Architecture("MixtralConfig", "every_layer", {"sliding_window": None}),
    "mistral3": Architecture("Mistral3Config", text_config="mistral"),
    "qwen2": Architecture("Qwen2Config", "max_window_layers", _QWEN),
    "qwen2_moe": Architecture("Qwen2MoeConfig", "max_window_layers", _QWEN),
    "qwen3": Architecture("Qwen3Config", "max_window_layers", {**_QWEN, "head_dim": 128}),
    "qwen3_moe": Architecture("Qwen3MoeConfig", "max_window_layers", {**_QWEN, "head_dim": 128}),
    "gemma": Architecture("GemmaConfig", defaults={"head_dim": 256}),
    "gemma2": Architecture("Gemma2Config", "pattern", {
        "num_hidden_layers": 26, "num_attention_heads": 8, "num_key_value_heads": 4, "head_dim": 256,
        "query_pre_attn_scalar": 256, "sliding_window": 4096, "attn_logit_softcapping": 50.0},
        pattern=2, query_pre_attn_scalar=True, softcap=True),
    "gemma3_text": Architecture("Gemma3TextConfig", "pattern", {
        "num_hidden_layers": 26, "num_attention_heads": 8, "num_key_value_heads": 4, "head_dim": 256,
        "query_pre_attn_scalar": 256, "sliding_window": 4096, "sliding_window_pattern": 6,
        "attn_logit_softcapping": None}, query_pre_attn_scalar=True, softcap=True),
    "gemma3": Architecture("Gemma3Config", text_config="gemma3_text"),
    "gpt_oss": Architecture("GptOssConfig", "pattern", {"head_dim": 64, "sliding_window": 128},
                            pattern=2, sinks=True),
    "deepseek_v2": Architecture("DeepseekV2Config", mla=True),
    "deepseek_v3": Architecture("DeepseekV3Config", mla=True),
    "glm4_moe": Architecture("Glm4MoeConfig", defaults={"head_dim": 128}),
    "phi3": Architecture("Phi3Config", "every_layer", {"sliding_window": None}),
}

# Fields whose meaning kgen cannot compute: set (not null, not false), they are refused by name.
UNSUPPORTED_FIELDS = {
    "attention_chunk_size": "chunked attention (Llama 4)",
    "use_bidirectional_attention": "bidirectional (encoder) attention: no causal prefill or decode",
    "alibi": "ALiBi position biases (kgen.attention takes alibi_max_bias with a mask; use --shape)",
    "use_alibi": "ALiBi position biases (kgen.attention takes alibi_max_bias with a mask; use --shape)",
}


# --- what a model derives to -------------------------------------------------------------------
@dataclass(frozen=True)
class LayerKind:
    """The layers of a model that run the same attention."""

    name: str                   # "full", "sliding" or "mla"
    layer_indices: tuple[int, ...]
    heads_q: int
    heads_kv: int
    head_k: int
    head_v: int
    window: int = 0             # sliding window width in keys; 0: none
    softcap: float = 0.0        # tanh logit cap; 0: none
    scale: float | None = None  # None: 1/sqrt(head_k)
    scale_from: str = ""        # the fields the scale comes from, for reports
    sinks: bool = False
    v_in_k: bool = False        # MLA's absorbed form: V is the first head_v columns of K

    @property
    def layers(self) -> int:
        return len(self.layer_indices)

    @property
    def gqa(self) -> int:
        return self.heads_q // self.heads_kv

    def feature_values(self) -> dict:
        """The features this kind's cases turn on, with their values (window, softcap, scale)."""
        values: dict = {"causal": True}
        if self.window:
            values["window"] = self.window
        if self.softcap:
            values["softcap"] = self.softcap
        if self.sinks:
            values["sinks"] = True
        if self.scale is not None:
            values["scale"] = self.scale
        if self.v_in_k:
            values["v_in_k"] = True
        return values

    def as_dict(self) -> dict:
        return {"name": self.name, "layers": self.layers, "layer_indices": list(self.layer_indices),
                "head_k": self.head_k, "head_v": self.head_v, "heads_q": self.heads_q,
                "heads_kv": self.heads_kv, "gqa": self.gqa, "window": self.window, "softcap": self.softcap,
                "scale": self.scale, "scale_from": self.scale_from or None, "sinks": self.sinks,
                "v_in_k": self.v_in_k, "features": self.feature_values()}


@dataclass(frozen=True)
class ModelCase:
    """One derived case and where it comes from (the layer kind and how many layers run it)."""

    case: Case
    kind: LayerKind
    phase: str          # "prefill" or "decode"
    context: int

    @property
    def layers(self) -> int:
        return self.kind.layers


@dataclass(frozen=True)
class ModelAttention:
    """A model's attention: its layer kinds, and the cases they give (`cases`)."""

    name: str
    source: str                       # the preset's _source URL, or the config file's path
    model_type: str                   # the architecture read (a nested config's own type)
    num_layers: int
    kinds: tuple[LayerKind, ...]
    notes: tuple[str, ...] = ()       # defaults applied and fields read, for reports

    def cases(self, *, contexts=DEFAULT_CONTEXTS, ubatch: int = DEFAULT_UBATCH,
              decode_batch=DEFAULT_DECODE_BATCH, kv_types=DEFAULT_KV_TYPES,
              precisions=DEFAULT_PRECISIONS) -> tuple[ModelCase, ...]:
        """Per kind, context, KV type pair and precision: a prefill case (`ubatch` causal query
        rows, the last of `context` positions) and a decode case per width (its rows causal
        where there are several, as in speculative decoding). Batch 1: a decode batch of
        independent sequences is a different call (batch > 1), which --shape expresses."""
        contexts, decode_batch = _positive_ints(contexts, "--context"), _positive_ints(decode_batch, "--decode-batch")
        (ubatch,) = _positive_ints((ubatch,), "--ubatch")
        for rows, option in ((ubatch, "--ubatch"), (max(decode_batch), "--decode-batch")):
            if rows > min(contexts):
                raise ModelError(f"{option} {rows} > --context {min(contexts)}: the query rows are the "
                                 "last positions of the context, so a context holds at least that many")
        for precision in precisions:
            if precision not in PRECISIONS:
                raise ModelError(f"--precision {precision}: one of {', '.join(PRECISIONS)}")
        pairs = [(_kv_type(k, "--k-type"), _kv_type(v, "--v-type")) for k, v in kv_types]
        for k_type, v_type in pairs:
            if k_type != v_type and any(kind.v_in_k for kind in self.kinds):
                raise ModelError(f"{self.name}: MLA keeps V inside K's bytes, so K and V are one type "
                                 f"(got K {k_type}, V {v_type})")
        rows = [("prefill", ubatch)] + [("decode", width) for width in decode_batch]
        return tuple(self._case(kind, phase, n_q, context, k_type, v_type, precision)
                     for kind in self.kinds for context in contexts for k_type, v_type in pairs
                     for precision in dict.fromkeys(precisions) for phase, n_q in rows)

    def _case(self, kind: LayerKind, phase: str, n_q: int, context: int, k_type: str, v_type: str,
              precision: str) -> ModelCase:
        kv = k_type if k_type == v_type else f"{k_type}/{v_type}"
        label = "prefill" if phase == "prefill" else f"decode{n_q}"
        name = (f"{self.name} {label} {kind.name} ctx{context} {kv}"
                + ("" if precision == DEFAULT_PRECISIONS[0] else f" {precision}"))
        # One query row sees every key up to its own: the causal bound only matters with several
        # rows or a window (kgen reads the window under its causal feature).
        causal = n_q > 1 or kind.window > 0
        case = Case(name, kind.heads_kv, kind.gqa, n_q, context, kind.head_k, kind.head_v, k_type, v_type,
                    causal=causal, mla=kind.v_in_k, precision=precision, window=kind.window,
                    softcap=kind.softcap, scale=kind.scale, sinks=kind.sinks)
        return ModelCase(case, kind, phase, context)

    def as_dict(self) -> dict:
        return {"model": self.name, "source": self.source, "model_type": self.model_type,
                "num_hidden_layers": self.num_layers, "notes": list(self.notes),
                "layer_kinds": [k.as_dict() for k in self.kinds]}


def distinct_classes(cases) -> list[ModelCase]:
    """One case per problem class: the dispatcher picks a kernel by class, so a class is tuned
    once, on the case of the layer kind with the most layers (the first of a tie)."""
    best: dict[str, ModelCase] = {}
    for mc in cases:
        key = mc.case.problem().key
        if key not in best or mc.layers > best[key].layers:
            best[key] = mc
    return list(best.values())


# --- presets and config files -------------------------------------------------------------------
def preset_names() -> list[str]:
    return sorted((p.stem for p in PRESET_DIR.glob("*.json")), key=str.lower)


def read_config(name_or_path: str) -> tuple[dict, str, str]:
    """(config, model name, source) of a preset name (any case), a config.json path or a folder
    holding one."""
    path = Path(name_or_path)
    if path.is_dir():
        path = path / "config.json"
    if path.is_file():
        try:
            config = json.loads(path.read_text())
        except (OSError, UnicodeDecodeError, ValueError) as exc:
            raise ModelError(f"{path}: not a readable JSON config ({str(exc)[:200]})") from None
        if not isinstance(config, dict):
            raise ModelError(f"{path}: a config.json holds one JSON object, not a {type(config).__name__}")
        name = path.parent.name if path.name == "config.json" and path.parent.name else path.stem
        return config, name, str(path)
    by_name = {n.lower(): n for n in preset_names()}
    preset = by_name.get(name_or_path.lower())
    if preset is None:
        raise ModelError(f"{name_or_path!r} is neither a config.json (file or folder) nor a preset; "
                         f"presets: {', '.join(preset_names())}")
    config = json.loads((PRESET_DIR / f"{preset}.json").read_text())
    return config, preset, config.get(SOURCE_KEY, "")


def load(name_or_path: str) -> ModelAttention:
    """The attention of a preset or a config.json (see `read_config`)."""
    config, name, source = read_config(name_or_path)
    return derive(config, name=name, source=source)


def derive(config: dict, *, name: str = "model", source: str = "") -> ModelAttention:
    """The layer kinds of a config.json's attention; ModelError naming the field when kgen cannot
    read it."""
    config = {k: v for k, v in config.items() if k != SOURCE_KEY}
    where, model_type, arch, config = _architecture(config)
    reader = _Fields(config, arch, where)
    for key, what in UNSUPPORTED_FIELDS.items():
        if reader.raw(key) not in (None, False):
            raise ModelError(f"{reader.at(key)}={reader.raw(key)!r}: {what}, which kgen does not compute")
    layers = reader.positive_int("num_hidden_layers")
    if arch.mla:
        kinds = (_mla_kind(reader, layers),)
    else:
        reader.refuse_mla_fields(model_type)
        kinds = _standard_kinds(reader, layers, model_type)
    if reader.raw("num_nextn_predict_layers"):
        reader.note(f"{reader.at('num_nextn_predict_layers')}={reader.raw('num_nextn_predict_layers')}: "
                    "multi-token-prediction layers, outside num_hidden_layers and not counted here")
    return ModelAttention(name, source, model_type, layers, kinds, tuple(reader.notes))


def _architecture(config: dict) -> tuple[str, str, Architecture, dict]:
    """(where the attention fields are, model_type, its Architecture, the config holding them)."""
    model_type = config.get("model_type")
    known = ", ".join(sorted(ARCHITECTURES))
    if not isinstance(model_type, str):
        raise ModelError(f"model_type: missing (it names the architecture that reads the config); "
                         f"kgen reads: {known}")
    arch = ARCHITECTURES.get(model_type)
    if arch is None:
        raise ModelError(f"model_type {model_type!r}: kgen does not know how this architecture's "
                         f"attention reads its config; kgen reads: {known} (anything else: --shape)")
    if arch.text_config is None:
        return "", model_type, arch, config
    text = config.get("text_config")
    if not isinstance(text, dict):
        raise ModelError(f"text_config: missing; a {model_type} config keeps its attention fields there")
    inner = text.get("model_type", arch.text_config)
    if inner not in ARCHITECTURES or ARCHITECTURES[inner].text_config is not None:
        raise ModelError(f"text_config.model_type {inner!r}: kgen does not know how this architecture's "
                         f"attention reads its config; kgen reads: {known}")
    return "text_config.", inner, ARCHITECTURES[inner], text


class _Fields:
    """Reads a config's fields, with the architecture's defaults for omitted ones (each use of a
    default noted), and names the field in every error."""

    def __init__(self, config: dict, arch: Architecture, where: str):
        self.config, self.arch, self.where = config, arch, where
        self.notes: list[str] = []

    def at(self, key: str) -> str:
        return self.where + key

    def raw(self, key: str):
        return self.config.get(key)

    def get(self, key: str):
        """The field, else the architecture's default (noted), else None."""
        if key in self.config:
            return self.config[key]
        if key in self.arch.defaults:
            value = self.arch.defaults[key]
            self.note(f"{self.at(key)}: not in the config; {self.arch.config_class}'s default "
                      f"{json.dumps(value)}")
            return value
        return None

    def note(self, text: str) -> None:
        if text not in self.notes:
            self.notes.append(text)

    def positive_int(self, key: str, value=None, *, what: str = "") -> int:
        value = self.get(key) if value is None else value
        if value is None:
            raise ModelError(f"{self.at(key)}: missing{what}; it is needed to derive the attention shapes")
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ModelError(f"{self.at(key)}={value!r}: expected a positive integer")
        return value

    def number(self, key: str) -> float | None:
        value = self.get(key)
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
            raise ModelError(f"{self.at(key)}={value!r}: expected a finite number >= 0 (or null)")
        return float(value)

    def refuse_mla_fields(self, model_type: str) -> None:
        for key in MLA_FIELDS:
            if self.raw(key) is not None:
                raise ModelError(f"{self.at(key)}={self.raw(key)!r}: latent-attention fields on model_type "
                                 f"{model_type!r}, whose attention kgen reads as standard; MLA is read for "
                                 "deepseek_v2 and deepseek_v3")


def _heads(reader: _Fields) -> tuple[int, int]:
    heads_q = reader.positive_int("num_attention_heads")
    kv = reader.get("num_key_value_heads")
    if kv is None:
        reader.note(f"{reader.at('num_key_value_heads')}: not in the config; "
                    f"num_attention_heads ({heads_q}), as {reader.arch.config_class} sets it (MHA)")
        kv = heads_q
    heads_kv = reader.positive_int("num_key_value_heads", kv)
    if heads_q % heads_kv:
        raise ModelError(f"{reader.at('num_attention_heads')}={heads_q} is not a multiple of "
                         f"{reader.at('num_key_value_heads')}={heads_kv}: each KV head serves a whole "
                         "group of query heads (GQA/MQA)")
    return heads_q, heads_kv


def _head_size(value: int, what: str) -> int:
    if not (HEAD_MIN <= value <= HEAD_MAX and value % HEAD_STEP == 0):
        raise ModelError(f"{what} = {value}: {HEAD_LIMIT}")
    return value


def _standard_kinds(reader: _Fields, layers: int, model_type: str) -> tuple[LayerKind, ...]:
    heads_q, heads_kv = _heads(reader)
    head_dim = reader.get("head_dim")
    if head_dim is None:
        hidden = reader.positive_int("hidden_size", what=" (and head_dim is not given)")
        if hidden % heads_q:
            raise ModelError(f"{reader.at('hidden_size')}={hidden} is not a multiple of "
                             f"{reader.at('num_attention_heads')}={heads_q}, and head_dim is not given")
        head_dim = hidden // heads_q
        what = f"head size ({reader.at('hidden_size')} {hidden} / num_attention_heads {heads_q})"
    else:
        head_dim = reader.positive_int("head_dim", head_dim)
        what = f"head size ({reader.at('head_dim')})"
    _head_size(head_dim, what)
    common: dict = {"heads_q": heads_q, "heads_kv": heads_kv, "head_k": head_dim, "head_v": head_dim,
                    "sinks": reader.arch.sinks}
    if reader.arch.softcap:
        common["softcap"] = reader.number("attn_logit_softcapping") or 0.0
    if reader.arch.query_pre_attn_scalar:
        scalar = reader.number("query_pre_attn_scalar")
        if not scalar:
            raise ModelError(f"{reader.at('query_pre_attn_scalar')}={scalar!r}: the score scale is its "
                             "inverse square root, so it is > 0")
        common["scale"] = scalar ** -0.5
        common["scale_from"] = f"query_pre_attn_scalar {scalar:g} ** -0.5"
    types, window = _layer_types(reader, layers, model_type)
    kinds = []
    for layer_type in dict.fromkeys(types):   # in the order the layers first use them
        indices = tuple(i for i, t in enumerate(types) if t == layer_type)
        sliding = layer_type == SLIDING
        kinds.append(LayerKind("sliding" if sliding else "full", indices, window=window if sliding else 0,
                               **common))
    return tuple(kinds)


def _layer_types(reader: _Fields, layers: int, model_type: str) -> tuple[list[str], int]:
    """Each layer's type (full_attention or sliding_attention) and the sliding window width."""
    rule = reader.arch.sliding
    window = reader.get("sliding_window") if rule != "none" else reader.raw("sliding_window")
    if rule == "max_window_layers" and not reader.get("use_sliding_window"):
        window = None   # Qwen reads sliding_window only with use_sliding_window
    if window is not None:
        window = reader.positive_int("sliding_window", window)
    given = reader.raw("layer_types")
    if given is not None:
        if not isinstance(given, list) or len(given) != layers:
            raise ModelError(f"{reader.at('layer_types')}: expected a list of num_hidden_layers ({layers}) "
                             f"entries, got {json.dumps(given)[:120]}")
        for i, t in enumerate(given):
            if t not in LAYER_TYPES:
                raise ModelError(f"{reader.at('layer_types')}[{i}]={t!r}: kgen computes "
                                 f"{' and '.join(LAYER_TYPES)} layers only")
        types = list(given)
    elif rule == "none" or window is None:
        types = [FULL] * layers
    elif rule == "every_layer":
        types = [SLIDING] * layers
    elif rule == "max_window_layers":
        first = reader.get("max_window_layers")
        if isinstance(first, bool) or not isinstance(first, int) or first < 0:
            raise ModelError(f"{reader.at('max_window_layers')}={first!r}: expected a whole number >= 0")
        types = [SLIDING if i >= first else FULL for i in range(layers)]
    else:
        every = _pattern(reader)
        types = [SLIDING if (i + 1) % every else FULL for i in range(layers)]
    if SLIDING in types and rule == "none":
        raise ModelError(f"{reader.at('layer_types')}: sliding_attention layers on model_type "
                         f"{model_type!r}, whose transformers attention has no sliding window")
    if SLIDING in types and window is None:
        raise ModelError(f"{reader.at('layer_types')} has sliding_attention layers but "
                         f"{reader.at('sliding_window')} is null"
                         + (" (or use_sliding_window is false)" if rule == "max_window_layers" else ""))
    if rule == "none" and window is not None:
        raise ModelError(f"{reader.at('sliding_window')}={window}: model_type {model_type!r} has no "
                         "sliding-window attention in transformers, so kgen does not know which layers use it")
    return types, window or 0


def _pattern(reader: _Fields) -> int:
    """Every how many layers a full-attention layer comes, the rest sliding."""
    for key in ("sliding_window_pattern", "_sliding_window_pattern"):   # transformers >= 4.53 writes the second
        if reader.raw(key) is not None:
            return reader.positive_int(key)
    if reader.arch.pattern:
        reader.note(f"{reader.at('layer_types')}: not in the config; {reader.arch.config_class} makes "
                    f"layer i sliding_attention iff (i + 1) % {reader.arch.pattern} != 0")
        return reader.arch.pattern
    return reader.positive_int("sliding_window_pattern")


def _mla_kind(reader: _Fields, layers: int) -> LayerKind:
    """DeepSeek MLA as engines run it, absorbed: each query head's nope part is folded into the
    latent (kv_lora_rank) space, so all query heads read one shared latent K row of kv_lora_rank +
    qk_rope_head_dim values, and V is its first kv_lora_rank values. The softmax scale stays the
    un-absorbed one: (qk_nope_head_dim + qk_rope_head_dim) ** -0.5, times yarn's mscale ** 2."""
    heads_q = reader.positive_int("num_attention_heads")
    rank, rope, nope = (reader.positive_int(k) for k in ("kv_lora_rank", "qk_rope_head_dim", "qk_nope_head_dim"))
    reader.positive_int("v_head_dim")   # the output projection's width: outside the kernel, but MLA has it
    head_k = _head_size(rank + rope, f"head_k (kv_lora_rank {rank} + qk_rope_head_dim {rope})")
    head_v = _head_size(rank, f"head_v (kv_lora_rank {rank})")
    scale, scale_from = (nope + rope) ** -0.5, f"(qk_nope_head_dim {nope} + qk_rope_head_dim {rope}) ** -0.5"
    rope_scaling = reader.raw("rope_scaling") or reader.raw("rope_parameters") or {}
    if not isinstance(rope_scaling, dict):
        raise ModelError(f"{reader.at('rope_scaling')}={rope_scaling!r}: expected an object or null")
    mscale_all_dim = rope_scaling.get("mscale_all_dim") or 0
    if mscale_all_dim:   # DeepseekV2/V3Attention: softmax_scale *= yarn_get_mscale(factor, mscale_all_dim) ** 2
        factor = rope_scaling.get("factor")
        if not isinstance(factor, (int, float)) or isinstance(factor, bool) or factor <= 0:
            raise ModelError(f"{reader.at('rope_scaling')}.factor={factor!r}: yarn's mscale needs a factor > 0")
        mscale = 1.0 if factor <= 1 else 0.1 * mscale_all_dim * math.log(factor) + 1.0
        scale *= mscale * mscale
        scale_from += f" * (0.1 * mscale_all_dim {mscale_all_dim:g} * ln(factor {factor:g}) + 1) ** 2"
    if reader.raw("num_key_value_heads") not in (None, 1):
        reader.note(f"{reader.at('num_key_value_heads')}={reader.raw('num_key_value_heads')}: the heads of "
                    "MLA's un-absorbed form; absorbed, all query heads share one latent KV head")
    return LayerKind("mla", tuple(range(layers)), heads_q, 1, head_k, head_v, scale=scale,
                     scale_from=scale_from, v_in_k=True)


# --- options and --shape ------------------------------------------------------------------------
def _kv_type(text: str, option: str) -> str:
    try:
        return KvType.parse(text).label
    except ValueError as exc:
        raise ModelError(f"{option} {text}: {exc}") from None


def _positive_ints(values, option: str) -> tuple[int, ...]:
    values = tuple(dict.fromkeys(values))
    if not values:
        raise ModelError(f"{option}: give at least one value")
    for v in values:
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ModelError(f"{option} {v}: must be a whole number >= 1")
    return values


def int_list(text: str, option: str) -> tuple[int, ...]:
    """`4096,32768` as (4096, 32768); anything but positive whole numbers is refused by option."""
    parts = [p.strip() for p in str(text).split(",")]
    values = []
    for p in parts:
        if not p.isdigit() or int(p) < 1:
            raise ModelError(f"{option} {text}: comma-separated whole numbers >= 1 (e.g. 4096,32768)")
        values.append(int(p))
    return _positive_ints(values, option)


def kv_type_pairs(kv_type: str | None, k_type: str | None, v_type: str | None) -> tuple[tuple[str, str], ...]:
    """(K, V) type pairs of --kv-type (a list, each for both) or --k-type/--v-type (one pair)."""
    if kv_type is not None and (k_type is not None or v_type is not None):
        raise ModelError("--kv-type sets K and V together: give it, or --k-type/--v-type, not both")
    if kv_type is not None:
        return tuple((t, t) for t in dict.fromkeys(_kv_type(p.strip(), "--kv-type") for p in kv_type.split(",")))
    if k_type is None and v_type is None:
        return DEFAULT_KV_TYPES
    k = _kv_type(k_type or "f16", "--k-type")
    return ((k, _kv_type(v_type, "--v-type") if v_type else k),)


SHAPE_FORMAT = "B,Hq,Hkv,Nq,Nkv,Dk,Dv[,K type[/V type]][,features joined by + or ,]"
SHAPE_FEATURES = ("mask", "causal", "sinks", "mla", "window=W", "softcap=X", "scale=X", "page=N")


def parse_shape(text: str) -> Case:
    """A free-form case: `B,Hq,Hkv,Nq,Nkv,Dk,Dv`, then optionally the KV types (`q8_0` for both or
    `q8_0/f16`) and features (`causal+window=4096`, `softcap=50`, `sinks`, `scale=0.0625`,
    `mask`, `mla`: V is K's first Dv columns)."""
    tokens = [t.strip() for t in text.split(",")]
    where = f"--shape {text}"
    if len(tokens) < 7:
        raise ModelError(f"{where}: expected {SHAPE_FORMAT}")
    dims = []
    for label, token in zip(("B", "Hq", "Hkv", "Nq", "Nkv", "Dk", "Dv"), tokens[:7]):
        if not token.isdigit() or int(token) < 1:
            raise ModelError(f"{where}: {label}={token!r} is not a whole number >= 1 ({SHAPE_FORMAT})")
        dims.append(int(token))
    b, hq, hkv, nq, nkv, dk, dv = dims
    rest = tokens[7:]
    k_type = v_type = "f16"
    if rest and _is_kv_types(rest[0]):
        k_type, _, v_type = rest.pop(0).partition("/")
        v_type = v_type or k_type
    values: dict = {}
    for token in rest:
        for item in filter(None, token.split("+")):
            name, eq, value = item.partition("=")
            values[name] = _shape_feature(where, name, eq, value)
    if hq % hkv:
        raise ModelError(f"{where}: Hq={hq} is not a multiple of Hkv={hkv} (GQA/MQA)")
    _head_size(dk, f"{where}: Dk")
    _head_size(dv, f"{where}: Dv")
    mla = values.pop("mla", False)
    if mla and (dv > dk or k_type != v_type):
        raise ModelError(f"{where}: mla keeps V inside K (its first Dv columns): Dv <= Dk and one KV type")
    window = values.pop("window", 0)
    if (page := values.get("page", 0)):
        from .paged import why_block_size_invalid
        if (reason := why_block_size_invalid(page)) is not None:
            raise ModelError(f"{where}: page={page}: {reason}")
        if mla or values.get("mask"):
            raise ModelError(f"{where}: page={page}: paged KV is tuned without mask and mla so far")
    case = Case(f"shape {text}", hkv, hq // hkv, nq, nkv, dk, dv, k_type, v_type, batch=b, mla=mla,
                causal=values.pop("causal", False) or window > 0, window=window, **values)
    try:
        case.shapes().validate()
    except ValueError as exc:
        raise ModelError(f"{where}: {exc}") from None
    return case


def _is_kv_types(token: str) -> bool:
    parts = token.split("/")
    labels = {t.label for t in KvType}
    return 1 <= len(parts) <= 2 and all(p in labels for p in parts)


def _shape_feature(where: str, name: str, eq: str, value: str):
    if name in ("mask", "causal", "sinks", "mla"):
        if eq:
            raise ModelError(f"{where}: {name}{eq}{value}: {name} is on when named; it takes no value")
        return True
    try:
        if name in ("window", "page") and eq:
            if value.isdigit() and int(value) >= 1:
                return int(value)
        elif name in ("softcap", "scale") and eq:
            number = float(value)
            if math.isfinite(number) and number > 0:
                return number
    except ValueError:
        pass
    if name in ("window", "softcap", "scale", "page"):
        raise ModelError(f"{where}: {name}{eq}{value}: {name}=N with N > 0"
                         + (" and whole" if name in ("window", "page") else ""))
    raise ModelError(f"{where}: unknown feature {name!r}; features: {', '.join(SHAPE_FEATURES)}")


def case_dict(mc: ModelCase | Case, shares_class_with: str | None = None) -> dict:
    """A case as `kgen model show --json` lists it."""
    case = mc.case if isinstance(mc, ModelCase) else mc
    d = {"name": case.name, "class": case.problem().key, "describe": case.describe()}
    if isinstance(mc, ModelCase):
        d.update(phase=mc.phase, layer_kind=mc.kind.name, layers=mc.layers, context=mc.context)
    fields = dataclasses.asdict(case)
    for key in ("name", "reference_us", "target_us"):
        fields.pop(key)
    d.update(fields, heads_q=case.heads_q, shares_class_with=shares_class_with)
    return d
