"""The coopmat1 fragment probe: where a device really keeps each lane's matrix elements
(kgen.paths.fragments names the schemes). It renders and compiles a small kernel, so it runs
here, when a plan (or the tuner) opens a device for kernels, never inside the runtime."""
from __future__ import annotations

import dataclasses
import functools
import threading
import warnings
import weakref
from typing import Any

import numpy as np

from .. import abi
from ..caps import Fragment
from ..errors import KgenError

_probed: "weakref.WeakSet[Any]" = weakref.WeakSet()
_probe_lock = threading.Lock()   # two threads' first plans on a device must not both probe it


def open_for_kernels(device: Any = None) -> Any:
    """kgen.runtime.open_device(device), with the coopmat1 fragment layout probed into its caps
    once per Device (the register-softmax kernels need it; other paths do not care)."""
    from ..runtime import open_device
    dev = open_device(device)
    if dev in _probed:
        return dev
    with _probe_lock:
        if dev not in _probed:
            if dev.caps.has_coopmat1 and dev.caps.subgroup_size_control and not dev.caps.coopmat1_fragments:
                dev.caps = dataclasses.replace(dev.caps, coopmat1_fragments=probe_or_warn(dev))
            _probed.add(dev)
    return dev


def probe_or_warn(device: Any) -> tuple[Fragment, ...]:
    """probe(), for a device about to run kernels: a failed probe must not stop it from running
    every other kernel, so it warns and leaves the layout unknown (variants of the regs and
    osplit schedules then say so)."""
    try:
        return probe(device)
    except (KgenError, ValueError) as exc:  # the compiler, the driver or the read-back refused
        warnings.warn(f"coopmat1 fragment probe failed ({type(exc).__name__}: {exc}); "
                      "regs and osplit variants are unavailable on this device", RuntimeWarning,
                      stacklevel=2)
        return ()


def probe(device: Any) -> tuple[Fragment, ...]:
    """Every subgroup-scope f16 x f16 -> f32 shape's accumulator and A fragments, as the device
    lays them out (one small dispatch per shape)."""
    from ..compile import create_with
    from ..paths.coopmat1 import _shapes  # the shapes coopmat1 multiplies f16 -> f32 with
    from ..render import environment

    caps = device.caps
    shapes = _shapes(caps, 32)
    lanes = caps.subgroup_size
    out: list[Fragment] = []
    for m, n, k in shapes:
        if m * k > 1024 or m * n > 4096:
            continue  # indices must be exact in f16; no FA shape is that large
        slots = max(m * n, m * k)
        source = environment().get_template("probe/fragments.comp.j2").render(
            m=m, n=n, k=k, subgroup=lanes, slots=slots, push_fields=abi.PUSH_FIELDS,
            binding=abi.BINDING, roles={})
        name = f"fragment_probe_m{m}n{n}k{k}"
        kernel = create_with(source, functools.partial(device.pipeline, name=name, required_subgroup_size=lanes,
                                                       full_subgroups=True), name=name)
        buf = device.buffer(4 * (2 + 2 * lanes * slots))
        try:
            buf.write(np.full(2 + 2 * lanes * slots, -1.0, np.float32))
            kernel({abi.BINDING["out"]: buf}, abi.pack_some(), (1, 1, 1))
            data = np.frombuffer(buf.read(), np.float32)
        finally:
            buf.close()
            device.drop_pipeline(kernel)
        acc_len, a_len = int(data[0]), int(data[1])
        for use, length, base, width in (("acc", acc_len, 2, n), ("a", a_len, 2 + lanes * slots, k)):
            idx = [[int(data[base + lane * slots + i]) for i in range(length)] for lane in range(lanes)]
            out.append(Fragment(m, n, k, use, tuple(tuple(e // width for e in row) for row in idx),
                                tuple(tuple(e % width for e in row) for row in idx)))
    return tuple(out)
