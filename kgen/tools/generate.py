"""`kgen generate`: render a reference set of variants into generated/ and compile them.

generated/ is checked in so that a person debugging a kernel can read its GLSL, and so that a
template refactor shows as an empty (or reviewed) `git diff generated/`.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

from ..compile import compile_many, compile_source
from ..errors import CompileError
from ..passes import passes_before
from ..problem import NQ_BUCKETS, ProblemClass, bucket
from ..profiles import PROFILES
from ..render import render, render_split_k_reduce
from ..space import default_variant, why_invalid
from ..variant import PathKind, Schedule, Variant

HEADS = ((64, 64), (128, 128), (256, 256), (576, 512))
KV_TYPES = ("f16", "q8_0", "q4_0")


# The H100 tuned winners (benchmarks/results): `kgen generate --check` guards the kernels that win.
H100_WINNERS = (
    "fa_cm1_k128_v128_f16f16_acc32_br128_bc64_wg256_sg32_regs1_sync1_m16n8k16_aligned",
    "fa_sc_k128_v128_f16f16_acc32_br4_bc64_wg256_sg32_ds16_rs1_fusedred_mask_splitk_aligned",
    "fa_cm1_k128_v128_q8_0q8_0_acc32_br128_bc64_wg256_sg32_regs1_kvf16_m16n8k16_mask_aligned",
    "fa_cm1_k576_v512_f16f16_acc32_br64_bc32_wg256_sg32_regs1_osplit_vink_m16n8k16_mask_aligned",
    "fa_cm1_k576_v512_f16f16_acc32_br16_bc32_wg128_sg32_stream_vink_m16n8k16_splitk_aligned",
    "fa_cm1_k256_v256_f16f16_acc32_br128_bc16_wg256_sg32_regs1_m16n8k16_mask_aligned",
)


def _structures() -> list[Variant]:
    """One H100 variant per kernel structure the defaults leave out: the winners above
    (coopmat1 regs with split_sync 0 and 1, kv_f16, osplit with v_in_k as MLA uses, stream
    with split-k; scalar fused-reduce split-k), then the coopmat1 stage and direct schedules and
    regs with split_sync=2, coopmat2 mask_tiles with kv_f16 and with fused_reduce, and a
    scalar split-k decode with sinks (the reduce pass with sinks)."""
    h100 = PROFILES["h100"]
    prefill = ProblemClass(head_k=128, head_v=128, k_type="f16", v_type="f16", features=("mask",),
                           nq_bucket=bucket(512, NQ_BUCKETS))
    quant = ProblemClass(head_k=128, head_v=128, k_type="q8_0", v_type="q8_0", features=("mask",),
                         nq_bucket=bucket(512, NQ_BUCKETS))
    decode = ProblemClass(head_k=128, head_v=128, k_type="f16", v_type="f16", features=("mask", "split_k"),
                          nq_bucket=0)
    sinks = ProblemClass(head_k=128, head_v=128, k_type="f16", v_type="f16",
                         features=("mask", "sinks", "split_k"), nq_bucket=0)
    cm1 = default_variant(prefill, h100, PathKind.COOPMAT1)
    out = [Variant.parse(uri) for uri in H100_WINNERS]
    out += [cm1.replace(schedule=Schedule.STAGE), cm1.replace(schedule=Schedule.DIRECT),
            out[0].replace(split_sync=2),
            default_variant(quant, h100, PathKind.COOPMAT2).replace(kv_f16=True, mask_tiles=True),
            default_variant(decode, h100, PathKind.COOPMAT2).replace(fused_reduce=True),
            default_variant(sinks, h100, PathKind.SCALAR)]
    for v in out:
        if (reason := why_invalid(v, h100)) is not None:
            raise AssertionError(f"reference variant {v.uri} is invalid on the H100 profile: {reason}")
    return out


def reference_set() -> list[tuple[str, Variant]]:
    """(profile name, variant): each path's default for prefill on the H100 profile, and the
    scalar path's split-k decode on lavapipe, over the common head sizes and KV types; then the
    H100 winners and one variant of each other kernel structure (`_structures`)."""
    out = []
    for head_k, head_v in HEADS:
        for kv in KV_TYPES:
            prefill = ProblemClass(head_k=head_k, head_v=head_v, k_type=kv, v_type=kv,
                                   features=("mask",), nq_bucket=bucket(512, NQ_BUCKETS))
            for path in PathKind:
                out.append(("h100", default_variant(prefill, PROFILES["h100"], path)))
            decode = ProblemClass(head_k=head_k, head_v=head_v, k_type=kv, v_type=kv,
                                  features=("mask", "split_k"), nq_bucket=0)
            out.append(("lavapipe", default_variant(decode, PROFILES["lavapipe"], PathKind.SCALAR)))
    seen = {v.uri for _, v in out}
    out += [("h100", v) for v in _structures() if v.uri not in seen]
    return out


def reference_passes(variants: list[tuple[str, Variant]]) -> dict[str, str]:
    """name -> GLSL of the passes the variants run: those before the kernel (passes_before) and
    the split-k reduce pass (fa_reduce_v<head_v>[_sinks]) after a split-k kernel without fused_reduce."""
    out: dict[str, str] = {}
    for _, v in variants:
        for p in passes_before(v):
            out.setdefault(p.name, p.render())
        if v.split_k and not v.fused_reduce:
            out.setdefault(f"fa_reduce_v{v.head_v}{'_sinks' if v.sinks else ''}",
                           render_split_k_reduce(v.head_v, v.sinks))
    return out


def _files(variants: list[tuple[str, Variant]], passes: dict[str, str]) -> dict[str, str]:
    files = {f"{v.path}/{v.uri}.comp": render(v) for _, v in variants}
    files |= {f"passes/{name}.comp": text for name, text in passes.items()}
    index = [{"uri": v.uri, "profile": profile, "file": f"{v.path}/{v.uri}.comp"} for profile, v in variants]
    index += [{"name": name, "file": f"passes/{name}.comp"} for name in passes]
    files["index.json"] = json.dumps(index, indent=1) + "\n"
    return files


def generate(out_dir: Path, *, check: bool = False, compile_: bool = True) -> int:
    variants = reference_set()
    passes = reference_passes(variants)
    files = _files(variants, passes)
    existing = {p.relative_to(out_dir).as_posix() for p in out_dir.rglob("*") if p.is_file()} \
        if out_dir.is_dir() else set()
    stale = sorted(name for name, text in files.items()
                   if name not in existing or (out_dir / name).read_text() != text)
    extra = sorted(existing - set(files))
    if check:
        for name in stale:
            print(f"stale: {out_dir / name}", file=sys.stderr)
        for name in extra:
            print(f"not generated by kgen: {out_dir / name}", file=sys.stderr)
        if stale or extra:
            print("run `kgen generate` to refresh generated/", file=sys.stderr)
            return 1
        print(f"generated/ is up to date ({len(variants)} variants, {len(passes)} passes)")
    else:
        for name in stale:
            path = out_dir / name
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(path.name + ".tmp")
            tmp.write_text(files[name])
            tmp.replace(path)
        for name in extra:
            (out_dir / name).unlink()
        print(f"generated/: {len(variants)} variants, {len(passes)} passes, {len(stale)} file(s) written, "
              f"{len(extra)} removed")
    if compile_:
        return _compile_report([v for _, v in variants], passes)
    return 0


def _compile_report(variants: list[Variant], passes: dict[str, str]) -> int:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
    with Progress(TextColumn("compiling"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                  transient=True) as bar:
        task = bar.add_task("compile", total=len(set(v.uri for v in variants)))
        results = compile_many(variants, progress=lambda done, total, uri: bar.update(task, completed=done))
    for name, source in passes.items():
        try:
            results[name] = compile_source(source, name=name)
        except CompileError as err:
            results[name] = err
    failed = {uri: r for uri, r in results.items() if isinstance(r, CompileError)}
    cached = sum(1 for r in results.values() if not isinstance(r, CompileError) and r.from_cache)
    print(f"compiled {len(results) - len(failed)}/{len(results)} to SPIR-V (spirv-val clean), "
          f"{cached} from cache")
    for err in failed.values():
        print(err, file=sys.stderr)
    return 1 if failed else 0
