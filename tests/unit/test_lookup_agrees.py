"""The exported C lookup and kgen's Python dispatcher pick the same tuned entry for every call:
over 600 random calls against a DB of many tuned classes (exact classes, nearest ones, ties,
calls nothing serves), the header's kgen_fa_lookup, compiled with cc, names the class that
kgen.planning.dispatch.lookup chose, and both name the same kernel for the call's Nkv. No device."""
from __future__ import annotations

import dataclasses
import random
import shutil
import subprocess

import pytest

from kgen import profiles
from kgen.identity import BuildIdentity, DeviceIdentity, kernel_digest
from kgen.planning import dispatch
from kgen.planning.choose import aligned_for
from kgen.problem import GQA_BUCKETS, NKV_BUCKETS, NQ_BUCKETS, ProblemClass, bucket_rep
from kgen.space import default_variant
from kgen.tools import export as ex
from kgen.tunedb import TuningDB, Winner
from kgen.types import KV_TYPES
from kgen.variant import FEATURES

CAPS = profiles.LAVAPIPE
DEVICE = DeviceIdentity.of(CAPS)
HEADS = ((64, 64), (128, 128))
FEATURE_SETS = ((), ("mask",), ("causal",))
CALLS = 600

PROGRAM = r"""
#include <stdio.h>
#include "kgen_fa_table.h"

int main(void) {
    kgen_fa_device dev = kgen_fa_entries[0].device;
    unsigned hk, hv, kt, vt, feats, acc, vink, nq, nkv, gqa;
    while (scanf("%u %u %u %u %u %u %u %u %u %u", &hk, &hv, &kt, &vt, &feats, &acc, &vink, &nq, &nkv, &gqa) == 10) {
        const kgen_fa_entry *e = kgen_fa_lookup(&dev, hk, hv, kt, vt, feats, acc, vink, nq, nkv, gqa);
        uint32_t words;
        if (e == NULL) { printf("NULL\n"); continue; }
        printf("%s|%s|%u\n", e->problem, e->variant, (unsigned)(kgen_fa_kernel(e, nkv, &words) == e->spv));
    }
    return 0;
}
"""


def _tuned_classes(rng: random.Random) -> list[ProblemClass]:
    """Several classes per (head sizes, features), at random buckets, plus one with V inside K."""
    out = set()
    for head_k, head_v in HEADS:
        for features in FEATURE_SETS:
            for _ in range(4):
                out.add(ProblemClass(head_k=head_k, head_v=head_v, features=features,
                                     nq_bucket=rng.randrange(len(NQ_BUCKETS)),
                                     nkv_bucket=rng.randrange(len(NKV_BUCKETS)),
                                     gqa_bucket=rng.randrange(len(GQA_BUCKETS))))
    out.add(ProblemClass(head_k=128, head_v=64, nq_bucket=3, nkv_bucket=2, gqa_bucket=0, v_in_k=True))
    return sorted(out, key=lambda p: p.key)


def _winner(problem: ProblemClass, splits: int) -> Winner:
    features = problem.features + (("split_k",) if splits > 1 else ())
    v = default_variant(dataclasses.replace(problem, features=features), CAPS)
    v = v.replace(split_k=splits > 1, aligned=problem.nkv_bucket % 2 == 0)
    return Winner(problem, v.uri, splits, median_us=10.0, spread_us=0.1, kernel=kernel_digest(v.uri))


def _value(edges: tuple, rng: random.Random, index: int | None = None) -> int:
    """A value in bucket `index` (a random one if None)."""
    index = rng.randrange(len(edges)) if index is None else index
    low = 1 if index == 0 else edges[index - 1] + 1
    return rng.randint(low, bucket_rep(index, edges))


@pytest.fixture(scope="module")
def tuned(tmp_path_factory):
    rng = random.Random(7)
    folder = tmp_path_factory.mktemp("lookup")
    build = BuildIdentity.current()
    winners = [_winner(p, 4 if p.nq_bucket == 0 else 1) for p in _tuned_classes(rng)]
    with TuningDB(folder / "tuning.sqlite") as db:
        for w in winners:
            db.set_winner(DEVICE, build, w)
    ex.export([(DEVICE, build, w) for w in winners], folder / "include", "c-header")
    return folder, winners


def test_c_lookup_and_python_dispatch_pick_the_same_entry(tuned, tmp_path, monkeypatch):
    if shutil.which("cc") is None:
        pytest.fail("no cc on PATH: scripts/bootstrap.sh installs one")
    folder, winners = tuned
    monkeypatch.setenv("KGEN_DB", str(folder / "tuning.sqlite"))
    (tmp_path / "lookup.c").write_text(PROGRAM)
    exe = tmp_path / "lookup"
    build = subprocess.run(["cc", "-std=c99", "-O1", "-Wall", "-Werror", "-I", str(folder / "include"),
                            str(tmp_path / "lookup.c"), "-o", str(exe)], capture_output=True, text=True)
    assert build.returncode == 0, build.stderr

    rng = random.Random(11)
    calls, want, rows = [], [], []
    for _ in range(CALLS):
        head_k, head_v = rng.choice(HEADS + ((96, 96),))       # 96: no tuned class
        features = rng.choice(FEATURE_SETS + (("mask", "softcap"),))
        v_in_k = head_k == 128 and rng.random() < 0.1
        if v_in_k:
            head_v = 64
        n_q, n_kv, gqa = _value(NQ_BUCKETS, rng), _value(NKV_BUCKETS, rng), _value(GQA_BUCKETS, rng)
        if rng.random() < 0.3:   # inside a tuned class's buckets
            tuned_class = rng.choice(winners).problem
            head_k, head_v, features, v_in_k = (tuned_class.head_k, tuned_class.head_v, tuned_class.features,
                                                tuned_class.v_in_k)
            n_q, n_kv, gqa = (_value(edges, rng, index) for edges, index in (
                (NQ_BUCKETS, tuned_class.nq_bucket), (NKV_BUCKETS, tuned_class.nkv_bucket),
                (GQA_BUCKETS, tuned_class.gqa_bucket)))
        problem = ProblemClass.of(head_k=head_k, head_v=head_v, features=features, n_q=n_q, n_kv=n_kv, gqa=gqa,
                                  v_in_k=v_in_k)
        calls.append((problem, n_kv))
        want.append(dispatch.lookup(CAPS, problem))
        flags = sum(1 << FEATURES.index(f) for f in problem.features)
        rows.append(" ".join(map(str, (head_k, head_v, KV_TYPES.index(problem.k_type), KV_TYPES.index(problem.v_type),
                                       flags, problem.acc, int(v_in_k), n_q, n_kv, gqa))))
    out = subprocess.run([str(exe)], input="\n".join(rows) + "\n", capture_output=True, text=True,
                         check=True).stdout.splitlines()
    assert len(out) == CALLS
    levels = {"exact": 0, "nearest": 0, "none": 0}
    for (problem, n_kv), decision, line in zip(calls, want, out):
        if decision is None:
            levels["none"] += 1
            assert line == "NULL", problem.key
            continue
        levels[decision.level] += 1
        cls, uri, tuned_twin = line.split("|")
        assert (cls, uri) == (decision.source, decision.variant.uri), problem.key
        # The same kernel for this Nkv: the tuned twin exactly when its alignment is the call's.
        assert (tuned_twin == "1") == (aligned_for(decision.variant, n_kv).uri == uri)
    assert min(levels.values()) >= 20, levels   # every kind of answer was exercised


def test_the_rule_is_one_table_both_sides_read():
    """The C lookup is rendered from dispatch.NEAREST_TIERS; a class one bucket away in n_q
    loses to one two buckets away in n_kv + gqa, as the tiers say."""
    a = ProblemClass(head_k=64, head_v=64, nq_bucket=2, nkv_bucket=2, gqa_bucket=2)
    near_q = ProblemClass(head_k=64, head_v=64, nq_bucket=3, nkv_bucket=2, gqa_bucket=2)
    near_kv = ProblemClass(head_k=64, head_v=64, nq_bucket=2, nkv_bucket=4, gqa_bucket=3)
    assert dispatch.NEAREST_TIERS[0] == ("n_q",)
    assert dispatch.distance(a, near_kv) < dispatch.distance(a, near_q)
