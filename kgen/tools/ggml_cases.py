"""ggml's own FLASH_ATTN_EXT cases (test-backend-ops, eval mode, at the ggml commit the ggml
integration pins: d99724f2, 2026-08-21) as kgen shapes, so that `kgen export --cover ggml` can
carry a kernel for every class they fall in and the eval exercises kgen, not the fallback.

The loops follow tests/test-backend-ops.cpp's make_test_cases_eval(); the tensors it builds:
Q (Dk, Nq, nh*nr2, nr3) f32, K/V (D, Nkv, nh, nr3), mask (Nkv, Nq, 1, nr3) f16, sinks (Hq,) f32,
dst (Dv, Hq, Nq, B); permute (0, 2, 1, 3) stores Q, K and V with heads inside rows."""
from __future__ import annotations

from dataclasses import dataclass

from ..problem import ProblemClass
from ..shapes import Shapes, fold_for_layouts
from ..types import KvType

GGML_COMMIT = "d99724f2b141fed9e1a9f402213506c081433465"

# ggml types kgen's kernels read (the others fall back to ggml's shaders).
KV_TYPES = {"f16": KvType.F16, "q8_0": KvType.Q8_0, "q5_1": KvType.Q5_1, "q5_0": KvType.Q5_0,
            "q4_1": KvType.Q4_1, "q4_0": KvType.Q4_0}


@dataclass(frozen=True)
class GgmlCase:
    hsk: int
    hsv: int
    nh: int
    nr2: int
    nr3: int
    kv: int
    nb: int
    mask: bool
    sinks: bool
    max_bias: float
    softcap: float
    prec: str          # "f32" or "default"
    type_k: str
    type_v: str
    permuted: bool = False   # permute (0, 2, 1, 3)
    v_in_k: bool = False     # DeepSeek MLA: V is a view of K

    @property
    def params(self) -> str:
        """The case as test-backend-ops prints it (FLASH_ATTN_EXT(<params>)) and -p matches it."""
        prec = "f32" if self.prec == "f32" else "def"
        return (f"hsk={self.hsk},hsv={self.hsv},nh={self.nh},nr23=[{self.nr2},{self.nr3}],kv={self.kv},"
                f"nb={self.nb},mask={int(self.mask)},sinks={int(self.sinks)},max_bias={self.max_bias:.6f},"
                f"logit_softcap={self.softcap:.6f},prec={prec},type_K={self.type_k},type_V={self.type_v},"
                f"permute=[{'0,2,1,3' if self.permuted else '0,1,2,3'}],kv_view=1,v_is_view_of_k={int(self.v_in_k)}")

    def unsupported(self) -> str | None:
        """Why kgen cannot serve this case, or None."""
        bad = [t for t in (self.type_k, self.type_v) if t not in KV_TYPES]
        return f"KV type {'/'.join(bad)}" if bad else None

    def shapes(self) -> Shapes:
        """What kgen's kernel computes for this case, GQA folded where the C dispatcher folds it."""
        hq, tk, tv = self.nh * self.nr2, KV_TYPES[self.type_k], KV_TYPES[self.type_v]
        # test-backend-ops pads each head size to whole blocks of its type (Q's to K's).
        dk, dv = _pad(self.hsk, tk.block_size), _pad(self.hsv, tv.block_size)
        s = Shapes(batch=self.nr3, heads_q=hq, heads_kv=self.nh, n_q=self.nb, n_kv=self.kv,
                   head_k=dk, head_v=dv, k_type=tk, v_type=tv,
                   mask_shape=(self.nr3, 1, self.nb, self.kv) if self.mask else None,
                   softcap=self.softcap, alibi_max_bias=self.max_bias, sinks=self.sinks,
                   v_in_k=self.v_in_k and self.type_k == self.type_v)
        q = (hq * dk, dk, self.nb * hq * dk) if self.permuted else (dk, self.nb * dk, hq * self.nb * dk)
        o = (hq * dv, dv, self.nb * hq * dv)
        return fold_for_layouts(s, q, o)[0]

    def problem(self) -> ProblemClass:
        return self.shapes().problem()


def _pad(n: int, block: int) -> int:
    return -(-n // block) * block


def eval_cases() -> list[GgmlCase]:
    """test-backend-ops' FLASH_ATTN_EXT cases (eval mode), in its order."""
    out = []
    for kv in (1024, 2048):   # long-KV prefill
        for hs in (64, 128, 256):
            for nb in (32, 64):
                for t in ("f16", "q8_0", "q4_0"):
                    out.append(GgmlCase(hs, hs, 8, 4, 1, kv, nb, True, False, 0.0, 0.0, "f32", t, t))
    for hsk in (40, 64, 72, 80, 96, 128, 192, 256, 320, 512, 576):
        for hsv in (40, 64, 72, 80, 96, 128, 192, 256, 512):
            if hsk not in (192, 320, 576) and hsk != hsv:
                continue
            if (hsk == 192 and hsv not in (128, 192)) or (hsk == 576 and hsv != 512) or (hsk == 320 and hsv != 256):
                continue
            for mask in (True, False):
                for sinks in (True, False):
                    for max_bias in (0.0, 8.0):
                        if not mask and max_bias > 0:
                            continue
                        for softcap in (0.0, 10.0):
                            if hsk != 128 and softcap != 0:
                                continue
                            out += _heads(hsk, hsv, mask, sinks, max_bias, softcap)
    mixed = [(64, 64, 128, 2, True, "q8_0", "q4_0"), (64, 64, 128, 2, True, "q4_0", "f16"),
             (72, 72, 96, 2, True, "q4_0", "q8_0"), (64, 64, 96, 2, True, "f16", "f32"),
             (128, 128, 256, 1, False, "f16", "q4_0"), (128, 128, 96, 2, True, "q1_0", "q1_0"),
             (128, 64, 128, 2, True, "q1_0", "q4_0"), (64, 128, 128, 2, True, "q4_0", "q1_0"),
             (128, 64, 64, 2, True, "q1_0", "f16"), (128, 128, 96, 2, True, "q2_0", "q2_0"),
             (128, 64, 128, 2, True, "q2_0", "q4_0"), (64, 128, 128, 2, True, "q4_0", "q2_0")]
    for hsk, hsv, kv, nb, mask, tk, tv in mixed:
        out.append(GgmlCase(hsk, hsv, 4, 1, 1, kv, nb, mask, False, 0.0, 0.0, "f32", tk, tv))
    return out


def _heads(hsk, hsv, mask, sinks, max_bias, softcap) -> list[GgmlCase]:
    out = []
    for nh in (1, 4):
        if nh == 1 and hsk not in (320, 576):
            continue
        for nr3 in (1, 3):
            if hsk > 64 and nr3 > 1:
                continue
            for nr2 in (1, 4, 8, 12, 16, 20, 32):
                if (nr2 == 8 and hsk != 192) or (nr2 == 12 and hsk != 128) or (nr2 == 16 and hsk != 192):
                    continue
                if (nr2 == 20 and (nh != 1 or hsk != 576)) or (nr2 == 32 and (nh != 1 or hsk != 320)):
                    continue
                for kv in (113, 512, 1024):
                    if nr2 != 1 and kv != 512:
                        continue
                    for nb in (1, 3, 32, 75):
                        for prec in ("f32", "default"):
                            if hsk != 128 and prec == "default":
                                continue
                            for t in ("f32", "f16", "bf16", "q8_0", "q5_1", "q5_0", "q4_1", "q4_0", "iq4_nl"):
                                if t != "f16" and hsk not in (64, 72):
                                    continue
                                case = GgmlCase(hsk, hsv, nh, nr2, nr3, kv, nb, mask, sinks, max_bias, softcap,
                                                prec, t, t, v_in_k=hsk == 576)
                                out.append(case)
                                if mask and max_bias == 0 and softcap == 0 and kv == 512:
                                    out.append(GgmlCase(hsk, hsv, nh, nr2, nr3, kv, nb, mask, sinks, max_bias,
                                                        softcap, prec, t, t, permuted=True, v_in_k=hsk == 576))
    return out


def classes(cases: list[GgmlCase]) -> tuple[list[tuple[ProblemClass, Shapes]], dict[str, int]]:
    """(the distinct classes kgen can serve, each with the shapes of its first case, in first-seen
    order; {reason: cases} it cannot)."""
    seen: dict[str, tuple[ProblemClass, Shapes]] = {}
    refused: dict[str, int] = {}
    for c in cases:
        if (why := c.unsupported()) is not None:
            refused[why] = refused.get(why, 0) + 1
            continue
        s = c.shapes()
        p = s.problem()
        seen.setdefault(p.key, (p, s))
    return list(seen.values()), refused
