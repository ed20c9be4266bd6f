"""What the tuner tries for one problem class: the valid variants of the device's paths, each with
the KV split counts worth trying, the heuristic default first."""
from __future__ import annotations

from dataclasses import dataclass

from ..shapes import Shapes, fold_gqa
from ..caps import Caps
from ..errors import InvalidVariant
from ..paths.shared import FUSED_STATS_SLOTS
from ..planning.choose import choose_variant, split_count
from ..space import default_variant, enumerate_space, why_invalid
from ..variant import PathKind, Schedule, Variant


@dataclass(frozen=True)
class Candidate:
    variant: Variant
    splits: int = 1

    @property
    def name(self) -> str:
        return self.variant.uri if self.splits == 1 else f"{self.variant.uri}@{self.splits}"

    @classmethod
    def parse(cls, name: str) -> "Candidate":
        uri, _, splits = name.partition("@")
        return cls(Variant.parse(uri), int(splits) if splits else 1)


def for_shape(v: Variant, shapes: Shapes) -> Variant:
    """The variant as a plan for `shapes` runs it: the aligned fast path iff Nkv fills whole tiles."""
    return v.replace(aligned=shapes.n_kv % v.bc == 0)


def split_options(v: Variant, shapes: Shapes, caps: Caps) -> list[int]:
    """1, and a quarter to 4x the heuristic's count when the row tiles alone leave the GPU idle
    (the heuristic caps splits at 4 KV tiles each; the tuner may go down to 1)."""
    guess = split_count(shapes, caps, v.br, v.bc)
    if guess == 1:
        return [1]
    most = max(1, shapes.n_kv // v.bc)
    return sorted({1} | {s for s in (guess // 4, guess // 2, guess, 2 * guess, 4 * guess) if 2 <= s <= most})


# A decode of at most this many (GQA-folded) query rows also searches the scalar path on matrix
# hardware: it streams K and V at the memory's pace (H100, 128/128 GQA 4 decode: scalar br4
# 34.5 us against coopmat2's 33.4 for the attention pass).
SCALAR_DECODE_ROWS = 8


def _scalar_decode(v: Variant, n_q: int) -> bool:
    """The scalar variants worth timing for a decode on matrix hardware: K/V straight from memory,
    one row group holding every row (row groups of one row ran 1.2-4x slower on the H100)."""
    return (v.schedule is not Schedule.STAGE and v.row_split == 1
            and v.br == min(SCALAR_DECODE_ROWS, 1 << (n_q - 1).bit_length()))


# fused_reduce is timed where the last workgroup of a row tile reads at most this many partial
# vec4s per thread (about two rounds of loads in flight): past that, one workgroup reading every
# split's rows takes longer than the reduce pass, whose grid spreads them over the GPU.
FUSED_MAX_LOADS = 32


def fused_reduce_fits(v: Variant, splits: int, n_q: int) -> bool:
    """Whether a fused reduce of `splits` partial rows is worth timing for a kernel of `n_q`
    (GQA-folded) query rows."""
    rows = min(v.br, n_q)
    return (1 < splits and splits * rows <= FUSED_STATS_SLOTS
            and splits * rows * (v.head_v // 4) <= FUSED_MAX_LOADS * v.wg)


def candidates(shapes: Shapes, caps: Caps, paths: tuple[PathKind, ...] | None = None) -> tuple[list[Candidate], Candidate]:
    """The restricted space for the class of `shapes`, timed on `shapes`, and the heuristic
    default (also first in the list). Restricted: on a device with cooperative matrices the
    scalar path offers only its default (its tiles run several times slower on matrix hardware;
    force `paths` to search it), and for a decode of few rows its direct, one-row-group tiles.
    The order is deterministic: it breaks remaining ties."""
    forced = paths[0] if paths and len(paths) == 1 else None
    default_v, default_splits, _ = choose_variant(shapes, caps, forced, None, tuned=False)
    default = Candidate(default_v, default_splits)
    found = {default.name: default}
    extra: list[Variant] = []
    if paths is None and (caps.has_coopmat1 or caps.has_coopmat2):
        paths = (PathKind.COOPMAT2, PathKind.COOPMAT1)
        scalar_default = default_variant(shapes.problem(), caps, PathKind.SCALAR)
        found.setdefault(scalar_default.uri, Candidate(for_shape(scalar_default, shapes)))
        if shapes.n_q <= SCALAR_DECODE_ROWS:
            extra = [v for v in enumerate_space(shapes.problem(), caps, (PathKind.SCALAR,)).valid
                     if _scalar_decode(v, shapes.n_q)]
    folded_rows = fold_gqa(shapes).n_q
    for v in [*enumerate_space(shapes.problem(), caps, paths).valid, *extra]:
        v = for_shape(v, shapes)
        for splits in split_options(v, shapes, caps):
            sv = v.replace(split_k=splits > 1)
            options = [sv]
            if fused_reduce_fits(sv, splits, folded_rows):
                options.append(_fused(sv))
            for c in options:
                if c is not None and why_invalid(c, caps) is None:
                    found.setdefault(Candidate(c, splits).name, Candidate(c, splits))
    return list(found.values()), default


def _fused(v: Variant) -> Variant | None:
    """`v` with fused_reduce, or None where its path's rules refuse the knob (coopmat1)."""
    try:
        return v.replace(fused_reduce=True)
    except InvalidVariant:
        return None
