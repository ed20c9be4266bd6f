"""Integer formulas over a call's dimensions: workgroup grids and buffer sizes of the passes a
plan runs, written once and used three ways: evaluated by the plan, written into the exported
dispatch table (JSON), and rendered as C for the exported header.

An expression is an int (a constant), a str (a dimension of the call, by name) or a tuple
(op, *operands) with op "mul" (product of the operands) or "ceil_div" (ceil(a / b), b at
least 1). The dimensions are the push-constant fields of kgen/abi.py plus DIMS.
"""
from __future__ import annotations

import math
from typing import Callable, Union

Expr = Union[int, str, tuple]

# Dimensions of a call that are not push-constant fields; an engine knows them from its tensors.
DIMS = {
    "n_head_kv": "KV heads: n_head_q / gqa_ratio",
    "mask_rows": "rows of the stored mask: 1 when one row serves every query, else n_q",
    "mask_planes": "(batch x heads) planes of the stored mask: its batch size (1 or n_batch) "
                   "times its head count (1 or n_head_q)",
}
OPS = ("mul", "ceil_div")


def mul(*terms: Expr) -> Expr:
    """The product of `terms`, with constant factors folded into one (leading) factor."""
    const = math.prod(t for t in terms if isinstance(t, int))
    rest = tuple(t for t in terms if not isinstance(t, int))
    if not rest:
        return const
    if const == 1 and len(rest) == 1:
        return rest[0]
    return ("mul",) + ((const,) if const != 1 else ()) + rest


def ceil_div(a: Expr, b: Expr) -> Expr:
    """ceil(a / b); a constant divisor must be positive, any other must evaluate to >= 1."""
    if isinstance(b, bool) or (isinstance(b, int) and b < 1):
        raise ValueError(f"ceil_div divisor {b!r}: must be a positive int or a dimension")
    if isinstance(b, int) and isinstance(a, int):
        return -(-a // b)
    return a if b == 1 else ("ceil_div", a, b)


def evaluate(e, dims: dict[str, int]) -> int:
    """The value of `e` (a tuple or, as read back from JSON, a list) for `dims`."""
    if isinstance(e, bool):
        raise ValueError(f"expression {e!r}: not an int, a dimension name or an operation")
    if isinstance(e, int):
        return e
    if isinstance(e, str):
        if e not in dims:
            raise ValueError(f"expression names dimension {e!r}, which the call does not give "
                             f"(it gives {', '.join(sorted(dims))})")
        return dims[e]
    if isinstance(e, (tuple, list)) and e and e[0] in OPS:
        values = [evaluate(x, dims) for x in e[1:]]
        if e[0] == "mul":
            return math.prod(values)
        if len(values) != 2 or values[1] < 1:
            raise ValueError(f"ceil_div {list(e)!r}: needs two operands and a positive divisor")
        return -(-values[0] // values[1])
    raise ValueError(f"expression {e!r}: not an int, a dimension name or one of {OPS}")


def names(e) -> tuple[str, ...]:
    """The dimensions `e` depends on, each once, in order of appearance."""
    if isinstance(e, str):
        return (e,)
    if isinstance(e, (tuple, list)) and e and e[0] in OPS:
        return tuple(dict.fromkeys(n for x in e[1:] for n in names(x)))
    return ()


def text(e: Expr) -> str:
    """The formula for people: ceil(n_q / 16) * n_batch * 512."""
    if isinstance(e, (int, str)):
        return str(e)
    if e[0] == "mul":
        return " * ".join(text(x) for x in e[1:])
    return f"ceil({text(e[1])} / {text(e[2])})"


def c_expr(e: Expr, dim: Callable[[str], str], unsigned: str = "u") -> str:
    """The formula as a C expression; `dim` maps a dimension name to C code, `unsigned` is the
    constants' suffix (u for uint32_t, ull for uint64_t arithmetic)."""
    if isinstance(e, int):
        return f"{e}{unsigned}"
    if isinstance(e, str):
        return dim(e)
    if e[0] == "mul":
        return "(" + " * ".join(c_expr(x, dim, unsigned) for x in e[1:]) + ")"
    a, b = c_expr(e[1], dim, unsigned), c_expr(e[2], dim, unsigned)
    return f"(({a} + {b} - 1{unsigned}) / {b})"


def to_json(e: Expr):
    """Tuples as lists (JSON arrays): [op, operand, ...]."""
    return [to_json(x) for x in e] if isinstance(e, tuple) else e

