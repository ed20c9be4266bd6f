"""kgen.models and `kgen model`: the attention a config.json derives to, its cases, --shape, and
every refusal (exit code 2, no device opened). No device."""
import dataclasses
import json
import math
import sys
import types

import pytest

from kgen import models
from kgen.cli import main
from kgen.models import ModelError
from kgen.problem import ProblemClass
from kgen.tools import bench
from kgen.tools.suites import SUITES, Case
from kgen.variant import HEAD_MAX, HEAD_MIN, HEAD_STEP

EVEN = tuple(range(0, 42, 2))
GPT_OSS_20B_SLIDING = tuple(range(0, 24, 2))


def kinds(name):
    return {k.name: k for k in models.load(name).kinds}


# --- presets: the derived classes from each config's numbers ------------------------------------
# preset: num_hidden_layers, {kind: (layers, Hq, Hkv, head_k, head_v, window, softcap, sinks, v_in_k)}
PRESETS = {
    "Llama-3.1-8B": (32, {"full": (32, 32, 8, 128, 128, 0, 0.0, False, False)}),
    "Llama-3.3-70B": (80, {"full": (80, 64, 8, 128, 128, 0, 0.0, False, False)}),
    "Qwen3-8B": (36, {"full": (36, 32, 8, 128, 128, 0, 0.0, False, False)}),
    "Qwen3-32B": (64, {"full": (64, 64, 8, 128, 128, 0, 0.0, False, False)}),
    "Mistral-Small-24B": (40, {"full": (40, 32, 8, 128, 128, 0, 0.0, False, False)}),
    "Gemma-2-9B": (42, {"sliding": (21, 16, 8, 256, 256, 4096, 50.0, False, False),
                        "full": (21, 16, 8, 256, 256, 0, 50.0, False, False)}),
    "Gemma-3-12B": (48, {"sliding": (40, 16, 8, 256, 256, 1024, 0.0, False, False),
                         "full": (8, 16, 8, 256, 256, 0, 0.0, False, False)}),
    "gpt-oss-20b": (24, {"sliding": (12, 64, 8, 64, 64, 128, 0.0, True, False),
                         "full": (12, 64, 8, 64, 64, 0, 0.0, True, False)}),
    "gpt-oss-120b": (36, {"sliding": (18, 64, 8, 64, 64, 128, 0.0, True, False),
                          "full": (18, 64, 8, 64, 64, 0, 0.0, True, False)}),
    "DeepSeek-V2-Lite": (27, {"mla": (27, 16, 1, 576, 512, 0, 0.0, False, True)}),
    "DeepSeek-V3": (61, {"mla": (61, 128, 1, 576, 512, 0, 0.0, False, True)}),
    "GLM-4.5-Air": (46, {"full": (46, 96, 8, 128, 128, 0, 0.0, False, False)}),
    "Phi-4": (40, {"full": (40, 40, 10, 128, 128, 0, 0.0, False, False)}),
}


def test_every_preset_is_tested_and_records_its_source():
    assert sorted(PRESETS, key=str.lower) == models.preset_names()
    for name in models.preset_names():
        config, _, source = models.read_config(name)
        assert source.startswith("https://huggingface.co/") and source.endswith("/config.json"), name


def test_presets_ship_with_the_package():
    import fnmatch
    import tomllib
    root = models.PRESET_DIR.parents[2]
    patterns = tomllib.loads((root / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]["kgen"]
    for path in models.PRESET_DIR.glob("*.json"):
        relative = path.relative_to(root / "kgen").as_posix()
        assert any(fnmatch.fnmatch(relative, p) and relative.count("/") == p.count("/") for p in patterns), relative


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_preset_derives_its_layer_kinds(name):
    layers, expected = PRESETS[name]
    model = models.load(name)
    assert model.num_layers == layers
    got = {k.name: (k.layers, k.heads_q, k.heads_kv, k.head_k, k.head_v, k.window, k.softcap, k.sinks, k.v_in_k)
           for k in model.kinds}
    assert got == expected
    indices = sorted(i for k in model.kinds for i in k.layer_indices)
    assert indices == list(range(layers))   # every layer in exactly one kind


def test_llama_head_size_comes_from_hidden_size_over_heads():
    config, _, _ = models.read_config("Llama-3.1-8B")
    assert "head_dim" not in config and config["hidden_size"] // config["num_attention_heads"] == 128
    (full,) = models.load("Llama-3.1-8B").kinds
    assert (full.gqa, full.scale, full.feature_values()) == (4, None, {"causal": True})


def test_gemma2_alternates_window_and_global_layers_with_softcap_and_scale():
    k = kinds("Gemma-2-9B")
    assert k["sliding"].layer_indices == EVEN and k["full"].layer_indices == tuple(i + 1 for i in EVEN)
    for kind in k.values():
        assert kind.softcap == 50.0
        assert kind.scale == 256 ** -0.5 and "query_pre_attn_scalar 256" in kind.scale_from
    assert k["sliding"].feature_values() == {"causal": True, "window": 4096, "softcap": 50.0, "scale": 0.0625}
    assert "full" in k and "window" not in k["full"].feature_values()


def test_gemma3_nested_config_takes_the_config_class_defaults_and_says_so():
    model = models.load("Gemma-3-12B")
    config, _, _ = models.read_config("Gemma-3-12B")
    assert "head_dim" not in config["text_config"]   # 3840 / 16 = 240 would be wrong: the default is 256
    k = kinds("Gemma-3-12B")
    assert k["full"].layer_indices == (5, 11, 17, 23, 29, 35, 41, 47)
    assert k["sliding"].scale == 1 / 16 and k["sliding"].softcap == 0.0
    notes = "\n".join(model.notes)
    for field in ("text_config.head_dim", "text_config.query_pre_attn_scalar",
                  "text_config.sliding_window_pattern"):
        assert f"{field}: not in the config; Gemma3TextConfig's default" in notes


def test_gpt_oss_has_sinks_and_a_128_window_on_alternate_layers():
    k = kinds("gpt-oss-20b")
    assert k["sliding"].layer_indices == GPT_OSS_20B_SLIDING and k["sliding"].window == 128
    assert k["sliding"].sinks and k["full"].sinks and k["full"].window == 0


def test_deepseek_mla_is_absorbed_with_the_yarn_scale():
    (v3,) = models.load("DeepSeek-V3").kinds
    assert (v3.head_k, v3.head_v, v3.heads_q, v3.heads_kv, v3.gqa, v3.v_in_k) == (576, 512, 128, 1, 128, True)
    mscale = 0.1 * 1.0 * math.log(40) + 1
    assert v3.scale == pytest.approx(192 ** -0.5 * mscale ** 2, rel=1e-12)
    (lite,) = models.load("DeepSeek-V2-Lite").kinds
    assert (lite.heads_q, lite.heads_kv) == (16, 1)
    assert lite.scale == pytest.approx(192 ** -0.5 * (0.1 * 0.707 * math.log(40) + 1) ** 2, rel=1e-12)
    notes = "\n".join(models.load("DeepSeek-V3").notes)
    assert "num_key_value_heads=128" in notes and "num_nextn_predict_layers=1" in notes


# --- configs beyond the presets -----------------------------------------------------------------
LLAMA = {"model_type": "llama", "num_hidden_layers": 4, "num_attention_heads": 8, "num_key_value_heads": 2,
         "hidden_size": 512}


def test_qwen_slides_from_max_window_layers_only_when_use_sliding_window():
    qwen = {"model_type": "qwen2", "num_hidden_layers": 6, "num_attention_heads": 8, "num_key_value_heads": 8,
            "hidden_size": 1024, "sliding_window": 2048, "max_window_layers": 4}
    (full,) = models.derive({**qwen, "use_sliding_window": False}).kinds
    assert full.name == "full" and full.layers == 6
    k = {x.name: x for x in models.derive({**qwen, "use_sliding_window": True}).kinds}
    assert k["full"].layer_indices == (0, 1, 2, 3) and k["sliding"].layer_indices == (4, 5)
    assert k["sliding"].window == 2048


def test_mistral_without_sliding_window_takes_the_config_class_default():
    config = {"model_type": "mistral", "num_hidden_layers": 2, "num_attention_heads": 32,
              "num_key_value_heads": 8, "hidden_size": 4096}
    model = models.derive(config)
    (sliding,) = model.kinds
    assert (sliding.name, sliding.window, sliding.layers) == ("sliding", 4096, 2)
    assert any("sliding_window: not in the config; MistralConfig's default 4096" in n for n in model.notes)
    (full,) = models.derive({**config, "sliding_window": None}).kinds
    assert full.name == "full"


def test_layer_types_win_over_the_pattern_and_missing_kv_heads_mean_mha():
    config = {"model_type": "gemma3_text", "num_hidden_layers": 3, "num_attention_heads": 4, "head_dim": 64,
              "sliding_window": 512, "layer_types": [models.FULL, models.SLIDING, models.SLIDING]}
    k = {x.name: x for x in models.derive(config).kinds}
    assert k["full"].layer_indices == (0,) and k["sliding"].layer_indices == (1, 2)
    model = models.derive({key: v for key, v in LLAMA.items() if key != "num_key_value_heads"})
    assert model.kinds[0].heads_kv == 8 and any("num_key_value_heads" in n for n in model.notes)


def test_config_path_file_or_folder(tmp_path):
    folder = tmp_path / "TinyLlama"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps(LLAMA))
    for given in (folder, folder / "config.json"):
        model = models.load(str(given))
        assert model.name == "TinyLlama" and model.source == str(folder / "config.json")
        assert (model.kinds[0].head_k, model.kinds[0].gqa) == (64, 4)


# --- bad configs: one clear error each ----------------------------------------------------------
@pytest.mark.parametrize("config, message", [
    ({**LLAMA, "num_attention_heads": None}, "num_attention_heads: missing"),
    ({k: v for k, v in LLAMA.items() if k != "num_hidden_layers"}, "num_hidden_layers: missing"),
    ({k: v for k, v in LLAMA.items() if k != "hidden_size"}, "hidden_size: missing (and head_dim is not given)"),
    ({**LLAMA, "num_key_value_heads": 3}, "num_attention_heads=8 is not a multiple of num_key_value_heads=3"),
    ({**LLAMA, "hidden_size": 100}, "hidden_size=100 is not a multiple of num_attention_heads=8"),
    ({**LLAMA, "head_dim": 16}, f"head size (head_dim) = 16: kgen runs head sizes that are multiples of "
                                f"{HEAD_STEP} from {HEAD_MIN} to {HEAD_MAX}"),
    ({**LLAMA, "head_dim": 600}, f"from {HEAD_MIN} to {HEAD_MAX} (kgen.variant HEAD_MIN, HEAD_MAX, HEAD_STEP)"),
    ({**LLAMA, "model_type": "mamba"}, "model_type 'mamba': kgen does not know"),
    ({k: v for k, v in LLAMA.items() if k != "model_type"}, "model_type: missing"),
    ({**LLAMA, "sliding_window": 4096}, "sliding_window=4096: model_type 'llama' has no sliding-window"),
    ({**LLAMA, "attention_chunk_size": 8192}, "attention_chunk_size=8192: chunked attention"),
    ({**LLAMA, "kv_lora_rank": 512}, "kv_lora_rank=512: latent-attention fields on model_type 'llama'"),
    ({"model_type": "gemma3"}, "text_config: missing"),
    ({"model_type": "llama4", "text_config": {}}, "model_type 'llama4'"),
    ({"model_type": "mistral3", "text_config": {"model_type": "llama4_text"}},
     "text_config.model_type 'llama4_text'"),
    ({**LLAMA, "model_type": "gpt_oss", "layer_types": ["full_attention"] * 3}, "expected a list of num_hidden_layers (4)"),
    ({**LLAMA, "model_type": "gpt_oss", "layer_types": ["chunked_attention"] * 4},
     "layer_types[0]='chunked_attention': kgen computes full_attention and sliding_attention layers only"),
    ({**LLAMA, "model_type": "gemma2", "attn_logit_softcapping": "big"}, "attn_logit_softcapping='big'"),
    ({"model_type": "deepseek_v3", "num_hidden_layers": 2, "num_attention_heads": 16, "kv_lora_rank": 512,
      "qk_rope_head_dim": 64, "v_head_dim": 128}, "qk_nope_head_dim: missing"),
    ({"model_type": "deepseek_v3", "num_hidden_layers": 2, "num_attention_heads": 16, "kv_lora_rank": 1024,
      "qk_rope_head_dim": 64, "qk_nope_head_dim": 128, "v_head_dim": 128},
     "head_k (kv_lora_rank 1024 + qk_rope_head_dim 64) = 1088: kgen runs head sizes"),
])
def test_a_config_kgen_cannot_read_is_refused_by_field(config, message):
    with pytest.raises(ModelError) as err:
        models.derive(config)
    assert message in str(err.value)


def test_unknown_preset_lists_the_known_ones():
    with pytest.raises(ModelError, match="'Llama-9' is neither a config.json") as err:
        models.load("Llama-9")
    assert all(name in str(err.value) for name in models.preset_names())


def test_an_unreadable_config_file_is_refused(tmp_path):
    bad = tmp_path / "config.json"
    bad.write_text("{not json")
    with pytest.raises(ModelError, match="not a readable JSON config"):
        models.load(str(bad))
    bad.write_text("[1, 2]")
    with pytest.raises(ModelError, match="one JSON object, not a list"):
        models.load(str(bad))


# --- cases --------------------------------------------------------------------------------------
def test_cases_per_kind_context_kv_type_and_decode_width():
    cases = models.load("Qwen3-8B").cases(contexts=(4096, 32768), ubatch=512, decode_batch=(1, 8),
                                          kv_types=(("f16", "f16"), ("q8_0", "q8_0")))
    assert len(cases) == 2 * 2 * 3
    by_name = {mc.case.name: mc for mc in cases}
    prefill = by_name["Qwen3-8B prefill full ctx32768 q8_0"].case
    assert (prefill.n_q, prefill.n_kv, prefill.heads_kv, prefill.gqa, prefill.causal) == (512, 32768, 8, 4, True)
    assert (prefill.k_type, prefill.v_type, prefill.batch) == ("q8_0", "q8_0", 1)
    assert not by_name["Qwen3-8B decode1 full ctx4096 f16"].case.causal   # one row sees every key
    assert by_name["Qwen3-8B decode8 full ctx4096 f16"].case.causal       # speculative rows are causal
    assert all(mc.layers == 36 for mc in cases)
    assert by_name["Qwen3-8B prefill full ctx4096 f16"].case.problem().key == "128/128 f16/f16 acc32 causal nq3 nkv2 gqa2"


def test_window_layers_need_the_causal_feature_even_in_decode():
    cases = {mc.case.name: mc.case for mc in models.load("gpt-oss-20b").cases()}
    sliding, full = cases["gpt-oss-20b decode1 sliding ctx4096 f16"], cases["gpt-oss-20b decode1 full ctx4096 f16"]
    assert (sliding.causal, sliding.window, sliding.sinks) == (True, 128, True)
    assert sliding.problem().features == ("causal", "sinks") and full.problem().features == ("sinks",)
    s = sliding.shapes()
    assert (s.window, s.sinks, s.scale) == (128, True, None)


def test_mla_cases_keep_v_inside_k_and_refuse_two_kv_types():
    (prefill, decode) = models.load("DeepSeek-V3").cases(kv_types=(("q8_0", "q8_0"),))
    assert prefill.case.mla and prefill.case.problem().v_in_k and prefill.case.shapes().v_in_k
    assert (decode.case.heads_kv, decode.case.gqa, decode.case.head_k, decode.case.head_v) == (1, 128, 576, 512)
    with pytest.raises(ModelError, match="MLA keeps V inside K's bytes, so K and V are one type"):
        models.load("DeepSeek-V3").cases(kv_types=(("q8_0", "f16"),))


def test_a_class_is_tuned_once_on_the_kind_with_most_layers():
    cases = models.load("Gemma-3-12B").cases()
    keys = [mc.case.problem().key for mc in cases]
    assert len(cases) == 4 and len(set(keys)) == 3   # both prefill kinds are causal: one class
    picked = models.distinct_classes(cases)
    assert [mc.case.name for mc in picked] == ["Gemma-3-12B prefill sliding ctx4096 f16",
                                               "Gemma-3-12B decode1 sliding ctx4096 f16",
                                               "Gemma-3-12B decode1 full ctx4096 f16"]


@pytest.mark.parametrize("kwargs, message", [
    ({"contexts": (0,)}, "--context 0: must be a whole number >= 1"),
    ({"contexts": (256,)}, "--ubatch 512 > --context 256"),
    ({"ubatch": 0}, "--ubatch 0"),
    ({"decode_batch": (1, 8), "contexts": (4,), "ubatch": 4}, "--decode-batch 8 > --context 4"),
    ({"kv_types": (("q7", "q7"),)}, "--k-type q7: unknown KV type 'q7'"),
    ({"precisions": ("f64",)}, "--precision f64: one of f32, f16"),
])
def test_bad_case_options_are_refused_by_option(kwargs, message):
    with pytest.raises(ModelError, match=message.replace("(", r"\(").replace(")", r"\)").replace("+", r"\+")):
        models.load("Llama-3.1-8B").cases(**kwargs)


def test_option_parsers():
    assert models.int_list("4096,32768,4096", "--context") == (4096, 32768)
    with pytest.raises(ModelError, match="--context 4k: comma-separated whole numbers"):
        models.int_list("4k", "--context")
    assert models.kv_type_pairs("f16,q8_0", None, None) == (("f16", "f16"), ("q8_0", "q8_0"))
    assert models.kv_type_pairs(None, "q8_0", None) == (("q8_0", "q8_0"),)
    assert models.kv_type_pairs(None, "q8_0", "q4_0") == (("q8_0", "q4_0"),)
    assert models.kv_type_pairs(None, None, None) == models.DEFAULT_KV_TYPES
    with pytest.raises(ModelError, match="--kv-type sets K and V together"):
        models.kv_type_pairs("f16", "q8_0", None)


# --- --shape ------------------------------------------------------------------------------------
def test_shape_parses_dims_types_and_features():
    c = models.parse_shape("2,32,8,512,4096,128,128")
    assert (c.batch, c.heads_q, c.heads_kv, c.gqa, c.n_q, c.n_kv, c.head_k, c.head_v) == (2, 32, 8, 4, 512, 4096, 128, 128)
    assert (c.k_type, c.v_type, c.causal, c.mask, c.mla, c.window, c.softcap, c.scale, c.sinks) == \
        ("f16", "f16", False, False, False, 0, 0.0, None, False)
    c = models.parse_shape("1,16,8,1,8192,256,256,q8_0/f16,window=4096+softcap=50,scale=0.0625,sinks")
    assert (c.k_type, c.v_type, c.window, c.causal, c.softcap, c.scale, c.sinks) == \
        ("q8_0", "f16", 4096, True, 50.0, 0.0625, True)   # a window implies the causal bound
    c = models.parse_shape("1,128,1,1,16384,576,512,q8_0,mla,mask")
    assert c.mla and c.mask and c.problem().v_in_k and c.problem().features == ("mask",)


@pytest.mark.parametrize("text, message", [
    ("1,32,8,512", "expected B,Hq,Hkv,Nq,Nkv,Dk,Dv"),
    ("1,32,8,512,0,128,128", "Nkv='0' is not a whole number >= 1"),
    ("1,32,8,x,4096,128,128", "Nq='x'"),
    ("1,32,6,512,4096,128,128", "Hq=32 is not a multiple of Hkv=6"),
    ("1,32,8,512,4096,20,128", "Dk = 20: kgen runs head sizes that are multiples of 8 from 32 to 576"),
    ("1,32,8,512,4096,128,584", "Dv = 584"),
    ("1,32,8,512,4096,128,128,q9", "unknown feature 'q9'"),
    ("1,32,8,512,4096,128,128,causal+alibi", "unknown feature 'alibi'; features: mask, causal"),
    ("1,32,8,512,4096,128,128,window=0", "window=0: window=N with N > 0 and whole"),
    ("1,32,8,512,4096,128,128,causal=1", "causal=1: causal is on when named; it takes no value"),
    ("1,32,8,512,4096,128,128,softcap=-1", "softcap=-1"),
    ("1,32,8,512,4096,128,128,scale=nan", "scale=nan"),
    ("1,16,1,1,4096,512,576,q8_0,mla", "mla keeps V inside K"),
    ("1,16,1,1,4096,576,512,q8_0/f16,mla", "mla keeps V inside K"),
])
def test_bad_shapes_are_refused(text, message):
    with pytest.raises(ModelError) as err:
        models.parse_shape(text)
    assert message in str(err.value) and f"--shape {text}" in str(err.value)


# --- the CLI: show, and refusals before any device ----------------------------------------------
@pytest.fixture
def no_device(monkeypatch):
    """Any attempt to reach Vulkan fails the test."""
    def refuse(*args, **kwargs):
        pytest.fail("a device was opened")
    fake = types.ModuleType("kgen.runtime")
    fake.open_device = refuse
    monkeypatch.setitem(sys.modules, "kgen.runtime", fake)
    monkeypatch.setattr("kgen.planning.probe.open_for_kernels", refuse)


def test_model_show_json(no_device, capsys):
    assert main(["model", "show", "Gemma-2-9B", "--json", "--context", "4096,32768", "--decode-batch", "1,4",
                 "--kv-type", "f16,q8_0"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert (doc["model"], doc["model_type"], doc["num_hidden_layers"]) == ("Gemma-2-9B", "gemma2", 42)
    assert doc["source"] == "https://huggingface.co/google/gemma-2-9b-it/blob/main/config.json"
    sliding, full = doc["layer_kinds"]
    assert (sliding["name"], sliding["layers"], sliding["head_k"], sliding["head_v"], sliding["heads_q"],
            sliding["heads_kv"], sliding["gqa"]) == ("sliding", 21, 256, 256, 16, 8, 2)
    assert sliding["features"] == {"causal": True, "window": 4096, "softcap": 50.0, "scale": 0.0625}
    assert full["layer_indices"] == list(range(1, 42, 2))
    assert len(doc["cases"]) == 2 * 2 * 2 * 3
    case = doc["cases"][0]
    assert case["name"] == "Gemma-2-9B prefill sliding ctx4096 f16" and case["layers"] == 21
    assert ProblemClass.parse(case["class"]).features == ("causal", "softcap")
    assert (case["phase"], case["layer_kind"], case["context"], case["n_q"], case["n_kv"], case["window"]) == \
        ("prefill", "sliding", 4096, 512, 4096, 4096)
    assert case["shares_class_with"] is None
    twin = next(c for c in doc["cases"] if c["name"] == "Gemma-2-9B prefill full ctx4096 f16")
    assert twin["shares_class_with"] == case["name"] and twin["class"] == case["class"]


def test_model_show_text_lists_kinds_then_cases(no_device, capsys):
    assert main(["model", "show", "DeepSeek-V3"]) == 0
    out = capsys.readouterr().out
    assert "DeepSeek-V3: model_type deepseek_v3, 61 layers" in out
    assert "mla         61      576     512     128  1    128  causal, scale=0.135234" in out
    assert "DeepSeek-V3 decode1 mla ctx4096 f16" in out and "576/512 f16/f16 acc32 v_in_k nq0 nkv2 gqa5" in out


def test_model_list_names_every_preset(capsys):
    assert main(["model", "list"]) == 0
    out = capsys.readouterr().out
    assert all(name in out for name in models.preset_names())


@pytest.mark.parametrize("argv, message", [
    (["model", "show", "Nonesuch"], "kgen model show: 'Nonesuch' is neither a config.json"),
    (["model", "show", "Qwen3-8B", "--context", "0"], "--context 0: comma-separated whole numbers >= 1"),
    (["model", "show", "DeepSeek-V3", "--k-type", "q8_0", "--v-type", "f16"], "K and V are one type"),
    (["tune", "--model", "Nonesuch"], "kgen tune: 'Nonesuch' is neither"),
    (["tune", "--model", "Qwen3-8B", "--ubatch", "1024", "--context", "512"], "--ubatch 1024 > --context 512"),
    (["tune", "--context", "4096"], "--context: options of a model's cases; give --model"),
    (["tune", "--suite", "quick", "--model", "Qwen3-8B"], "--suite quick and --model/--shape both pick"),
    (["tune", "--shape", "1,32,7,1,4096,128,128"], "Hq=32 is not a multiple of Hkv=7"),
    (["tune", "--shape", "1,32,8,1,4096,128,128", "--kv-type", "q8_0"], "a --shape case is given in full"),
    (["tune", "--model", "Qwen3-8B", "--case", "nope"], "--case nope: no case matches; the cases: Qwen3-8B prefill"),
    (["bench", "--model", "Qwen3-8B", "--kv-type", "q7"], "kgen bench: --kv-type q7: unknown KV type"),
    (["bench", "--model", "Gemma-2-9B", "--precision", "f64"], "--precision f64: one of f32, f16"),
    (["bench", "--decode-batch", "8"], "--decode-batch: options of a model's cases"),
])
def test_bad_input_exits_2_with_one_message_before_any_device(argv, message, no_device, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1


def test_bad_config_file_exits_2(tmp_path, no_device, capsys):
    path = tmp_path / "config.json"
    path.write_text(json.dumps({**LLAMA, "num_key_value_heads": 3}))
    assert main(["tune", "--model", str(path)]) == 2
    assert "num_attention_heads=8 is not a multiple of num_key_value_heads=3" in capsys.readouterr().err


# --- what the suites keep -----------------------------------------------------------------------
def test_existing_suites_keep_their_shapes_and_results_keys():
    """Case's new fields are off by default: a suite's shapes, descriptions and bench result
    keys are what they were."""
    from kgen.shapes import Shapes
    for cases in SUITES.values():
        for c in cases:
            s = c.shapes()
            assert (s.window, s.scale, s.softcap, s.sinks) == (0, None, 0.0, False)
            assert not any(word in c.describe() for word in ("window", "softcap", "scale", "sinks"))
            assert set(bench._dims(c)) == {"heads_kv", "gqa", "n_q", "n_kv", "head_k", "head_v", "k_type",
                                           "v_type", "mask", "causal", "mla", "batch", "precision"}
    p1 = SUITES["h100-anchors"][0]
    assert p1.shapes() == Shapes(1, 32, 32, 512, 16384, 128, 128)
    windowed = dataclasses.replace(p1, window=64, causal=True, sinks=True)
    assert {"window", "sinks"} <= set(bench._dims(windowed))


def test_fitting_a_causal_case_keeps_its_rows_within_its_keys():
    from kgen.profiles import H100, LAVAPIPE
    case = models.load("Qwen3-8B").cases(contexts=(512,))[0].case
    fitted = case.fitted(LAVAPIPE)
    assert fitted.flops <= 2e8 and fitted.n_q <= fitted.n_kv and fitted.causal
    assert case.fitted(H100) is case
    plain = Case("x", 8, 4, 512, 4096)   # not causal: fitted as before (keys first, then rows)
    assert (plain.fitted(LAVAPIPE).n_q, plain.fitted(LAVAPIPE).n_kv) == (512, 128)


def test_the_tuners_check_problem_narrows_a_window_to_exercise_it():
    from kgen.profiles import LAVAPIPE
    from kgen.shapes import fold_gqa
    from kgen.tune import candidates
    from kgen.tune.measure import check_shapes
    timed = fold_gqa(models.load("gpt-oss-20b").cases(contexts=(512,))[0].case.fitted(LAVAPIPE).shapes())
    cands, _ = candidates(timed, LAVAPIPE)
    for c in cands[:5]:
        s = check_shapes(timed, c)
        assert 1 <= s.window < s.n_kv and s.sinks and s.causal
