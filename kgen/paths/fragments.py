"""Where a cooperative matrix's elements live: the row and column of each lane's element i.

VK_KHR_cooperative_matrix leaves that mapping to the implementation. The coopmat1 kernels of the
regs and osplit schedules keep S, P and O of their rows in registers, as FlashAttention-2 does on
CUDA, and compile in a fragment *scheme* (the variant's `frag_scheme`): which of a lane's
accumulator elements share a row (its row slots), which lanes hold the rest of that row (reduced
with xor shuffles), and which of the lane's own S elements make up each element of P's A operand
(so P never leaves registers).

A scheme is a named, fixed mapping (its number is part of the variant's uri, so a uri always
renders the same code); `probe` reads the mapping a device really uses, once per device, and a
variant with a scheme only runs where the probe matches it exactly (`scheme_reason`).
"""
from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Callable

from ..caps import Fragment

SUBGROUP = 32  # every scheme so far is for 32-lane subgroups




# --- schemes ---------------------------------------------------------------------------------
def _mma(m: int, width: int) -> tuple[list, list]:
    """NVIDIA's fragments as its Vulkan driver orders them (probed on an H100, driver 580), the
    same for the f32 accumulator (width n) and the f16 A operand (width k): lane L holds rows
    L/4 and L/4 + 8; in each, columns 2(L%4) and 2(L%4)+1 of every 8-column block, row by row."""
    rows, cols = [], []
    for lane in range(SUBGROUP):
        g, t = lane // 4, lane % 4
        r_l, c_l = [], []
        for bm in range(m // 16):
            for half in (0, 8):
                for cb in range(width // 8):
                    for dc in (0, 1):
                        r_l.append(bm * 16 + g + half)
                        c_l.append(cb * 8 + 2 * t + dc)
        rows.append(r_l)
        cols.append(c_l)
    return rows, cols


@dataclass(frozen=True)
class Scheme:
    number: int
    name: str
    acc: Callable[[int, int], tuple[list, list]]
    a: Callable[[int, int], tuple[list, list]]
    shapes: tuple[tuple[int, int, int], ...]  # (m, n, k) it is defined for


SCHEMES = {1: Scheme(1, "NVIDIA mma.sync fragments", _mma, _mma,
                     ((16, 16, 16), (16, 8, 16), (16, 8, 8)))}


def expected(scheme: Scheme, m: int, n: int, k: int) -> tuple[Fragment, Fragment]:
    (ar, ac), (br, bc) = scheme.acc(m, n), scheme.a(m, k)
    tup = lambda x: tuple(tuple(row) for row in x)  # noqa: E731
    return (Fragment(m, n, k, "acc", tup(ar), tup(ac)), Fragment(m, n, k, "a", tup(br), tup(bc)))


@dataclass(frozen=True)
class RegLayout:
    """What the template compiles in for one scheme and matrix shape (see the module doc)."""

    acc_len: int                      # accumulator elements per lane
    a_len: int                        # A-operand elements per lane
    slots: int                        # distinct rows a lane holds in one accumulator tile
    slot_of: tuple[int, ...]          # accumulator element -> row slot
    row_xor: tuple[int, ...]          # lane xor masks that reach every lane holding a row
    a_from: tuple[tuple[int, int], ...]  # A element -> (S tile within the k step, S element)
    rows: tuple[tuple[int, ...], ...]  # [lane][slot]: the row of each slot (tile-relative)
    cols: tuple[tuple[int, ...], ...]  # [lane][i]: the column of accumulator element i


@functools.cache
def reg_layout(number: int, m: int, n: int, k: int) -> RegLayout:
    """The scheme's compiled-in numbers for (m, n, k); ValueError names what does not hold."""
    scheme = SCHEMES.get(number)
    if scheme is None:
        raise ValueError(f"frag_scheme={number}: no such fragment scheme (known: {sorted(SCHEMES)})")
    if (m, n, k) not in scheme.shapes:
        raise ValueError(f"frag_scheme={number} ({scheme.name}) is defined for shapes "
                         f"{scheme.shapes}, not {m}x{n}x{k}")
    acc, a = expected(scheme, m, n, k)
    return analyse(acc, a)


def analyse(acc: Fragment, a: Fragment) -> RegLayout:
    m, n, k = acc.m, acc.n, acc.k
    lanes = len(acc.rows)
    acc_len, a_len = len(acc.rows[0]), len(a.rows[0])
    # Row slots: the same grouping of elements by row in every lane.
    first = acc.rows[0]
    distinct = sorted(set(first), key=first.index)
    slot_of = tuple(distinct.index(r) for r in first)
    for lane in range(lanes):
        got = acc.rows[lane]
        if len(got) != acc_len or any((got[i] == got[j]) != (slot_of[i] == slot_of[j])
                                      for i in range(acc_len) for j in range(acc_len)):
            raise ValueError(f"lane {lane} groups its accumulator elements by row unlike lane 0")
    slots = len(distinct)
    rows = tuple(tuple(acc.rows[lane][slot_of.index(s)] for s in range(slots)) for lane in range(lanes))
    # Lanes holding a row: closed under xor with a set of masks, same slot.
    masks = tuple(o for o in (1, 2, 4, 8, 16, 32, 64) if o < lanes
                  and all(rows[lane ^ o] == rows[lane] for lane in range(lanes)))
    span = {0}
    for o in masks:
        span |= {x ^ o for x in span}
    for lane in range(lanes):
        for s in range(slots):
            holders = {q for q in range(lanes) if rows[lane][s] in rows[q]}
            if holders != {lane ^ x for x in span}:
                raise ValueError(f"the lanes holding row {rows[lane][s]} are not lane {lane} xor "
                                 f"{masks}: a shuffle tree cannot reduce the row")
            cols_of_row = sorted(acc.cols[q][i] for q in holders for i in range(acc_len)
                                 if slot_of[i] == s)
            if cols_of_row != list(range(n)):
                raise ValueError(f"row {rows[lane][s]}'s columns are not each held once")
    if sorted({r for lane_rows in rows for r in lane_rows}) != list(range(m)):
        raise ValueError("the accumulator's rows are not all held")
    # P as A operands: element i of lane L at (r, c) of the k step must be the same lane's S
    # element (r, c % n) of S tile c // n, at an element index that does not depend on the lane.
    if k % n:
        raise ValueError(f"mat_k={k} is not a multiple of mat_n={n}: a P step would cut an S tile")
    a_from = []
    for i in range(a_len):
        where = set()
        for lane in range(lanes):
            r, c = a.rows[lane][i], a.cols[lane][i]
            hits = [j for j in range(acc_len) if acc.rows[lane][j] == r and acc.cols[lane][j] == c % n]
            if not hits:
                raise ValueError(f"A element {i} of lane {lane} ({r}, {c}) is in no S element of that lane")
            where.add((c // n, hits[0]))
        if len(where) != 1:
            raise ValueError(f"A element {i} comes from different S elements in different lanes")
        a_from.append(where.pop())
    return RegLayout(acc_len=acc_len, a_len=a_len, slots=slots, slot_of=slot_of, row_xor=masks,
                     a_from=tuple(a_from), rows=rows, cols=tuple(tuple(c) for c in acc.cols))


MASK_FRAG_CHUNK = 16  # mask columns per 16-byte element of a fragment-ordered mask


def mask_frag_tiles(number: int, m: int, n: int, k: int) -> int:
    """S tiles whose accumulator elements fill one lane's 16 bytes (8 halves) of a
    fragment-ordered mask (kgen.render.render_mask_frag), or 0 where the shape has no such
    order (the kernel then reads the mask as scalars)."""
    acc_len = reg_layout(number, m, n, k).acc_len
    tiles = 8 // acc_len if acc_len in (4, 8) else 0
    return tiles if m == 16 and tiles * n == MASK_FRAG_CHUNK else 0


def scheme_reason(number: int, m: int, n: int, k: int, probed: tuple[Fragment, ...],
                  subgroup: int) -> str | None:
    """Why the device cannot run scheme `number` at (m, n, k), or None."""
    try:
        reg_layout(number, m, n, k)
    except ValueError as e:
        return str(e)
    if subgroup != SUBGROUP:
        return f"frag_scheme={number}: schemes are for {SUBGROUP}-lane subgroups, not {subgroup}"
    want = expected(SCHEMES[number], m, n, k)
    got = {f.use: f for f in probed if (f.m, f.n, f.k) == (m, n, k)}
    if set(got) != {"acc", "a"}:
        return (f"frag_scheme={number}: the device's fragment layout at {m}x{n}x{k} is not "
                "known (caps carry no probe for it; a Device probes when it opens)")
    for w in want:
        if got[w.use] != w:
            return (f"frag_scheme={number}: the device's {w.use} fragments at {m}x{n}x{k} are not "
                    f"{SCHEMES[number].name}")
    return None




