r"""The online (max, rest) merge of chunks and the combination of vocabulary shards.

A chunk of classes is summarised by its pivot logit :math:`m` and rest :math:`r`, with
:math:`e^m (1 + r) = \sum_{k \in \text{chunk}} e^{z_k}` (the normaliser derivation, for any
set of classes). The linear loss merges chunk after chunk:

.. math::
  (m, r) \oplus (m_c, r_c) =
  \begin{cases}
    (m_c,\ r_c + (1 + r)\, e^{m - m_c}) & m_c > m \\
    (m,\ r + (1 + r_c)\, e^{m_c - m}) & \text{otherwise,}
  \end{cases}

with the factor 0 when the smaller side is :math:`-\infty` (an empty chunk). The
vocab-parallel loss combines :math:`S` shards at once:
:math:`r = \sum_s b_s + (\sum_s a_s - 1)`, :math:`a_s = [m_s = m]`,
:math:`b_s = r_s` when :math:`m_s = m` and :math:`(1 + r_s) e^{m_s - m}` otherwise.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable

import sympy as sp
from sympy.codegen.cfunctions import log1p

from symbolic import _algebra as A
from symbolic._derivation import Derivation
from symbolic._prover import Proof, at_random_points, prove_identity

k, n, z = A.k, A.n, A.z
eps, lse = A.eps, A.lse
a = sp.Symbol("a", integer=True, positive=True)  # the split: chunk A = 1..a, chunk B = a+1..n
m_sym, r_sym = sp.symbols("m r", real=True)
mc_sym, rc_sym = sp.symbols("m_c r_c", real=True)

# Shards: S shards of V_l classes each, Z[s, k] the logit of class k of shard s.
S_n = sp.Symbol("S", integer=True, positive=True)
V_l = sp.Symbol("V_l", integer=True, positive=True)
s, sigma, kappa = sp.symbols("s sigma kappa", integer=True, positive=True)
Z = sp.IndexedBase("Z", real=True)
M = sp.IndexedBase("m")  # each shard's pivot logit
R = sp.IndexedBase("r")  # each shard's rest

Pair = tuple[sp.Expr, sp.Expr]


def merge(x: Pair, y: Pair, guard: bool = True) -> Pair:
    r"""The library's merge of two (max, rest) pairs, the branch chosen by sympy.

    Where sympy cannot decide :math:`m_c > m` the result is a ``Piecewise``.
    ``guard=False`` drops the library's guard against :math:`-\infty - (-\infty)`.
    """
    (m, r), (mc, rc) = x, y
    wins = sp.Gt(mc, m)

    def factor(low: sp.Expr, high: sp.Expr) -> sp.Expr:
        return sp.S.Zero if guard and low == -sp.oo else sp.exp(low - high)

    chunk = (mc, rc + (1 + r) * factor(m, mc))
    kept = (m, r + (1 + rc) * factor(mc, m))
    if wins == sp.true:
        return chunk
    if wins == sp.false:
        return kept
    return (
        sp.Piecewise((chunk[0], wins), (kept[0], True)),
        sp.Piecewise((chunk[1], wins), (kept[1], True)),
    )


def first_max_merge(x: Pair, y: Pair) -> Pair:
    """A plausible wrong merge: always rescale to the first side's max."""
    (m, r), (mc, rc) = x, y
    return m, r + (1 + rc) * sp.exp(mc - m)


def _pair_proof(
    name: str, cases: list[tuple[dict[str, str], Pair, Pair]], check: Callable | None = None
) -> Proof:
    """Every case's two pairs are equal: maxima identical, rests equal after simplify."""
    for where, (m1, r1), (m2, r2) in cases:
        residual = sp.simplify(r1 - r2) if m1 == m2 else m1 - m2
        if residual != 0 or r1.has(sp.nan) or r2.has(sp.nan):
            witness = {**where, "residual": str(residual if residual != 0 else sp.nan)}
            return Proof(name, r1, r2, residual, False, False, witness)
    return Proof(name, sp.S.Zero, sp.S.Zero, sp.S.Zero, True, True)


def _weak_orderings(count: int) -> list[tuple[int, ...]]:
    """Every ranking of ``count`` values with ties: (0, 0, 1) means m1 = m2 < m3."""
    out = []
    for ranks in itertools.product(range(count), repeat=count):
        used = sorted(set(ranks))
        if used == list(range(len(used))):
            out.append(ranks)
    return out


def _ordered_pairs(ranks: tuple[int, ...]) -> list[Pair]:
    base = sp.Symbol("mu", real=True)
    gaps = sp.symbols("g1:4", positive=True)
    rests = sp.symbols("r1:4", nonnegative=True)
    return [(base + sum(gaps[:rank]), rest) for rank, rest in zip(ranks, rests, strict=False)]


def _algebra_cases(op: Callable[[Pair, Pair], Pair], count: int, law: str):
    cases = []
    for ranks in _weak_orderings(count):
        x = _ordered_pairs(ranks)
        where = {"order of the maxima (0 smallest)": str(ranks)}
        if law == "commutative":
            cases.append((where, op(x[0], x[1]), op(x[1], x[0])))
        else:
            cases.append((where, op(op(x[0], x[1]), x[2]), op(x[0], op(x[1], x[2]))))
    return cases


def online_merge() -> Derivation:
    r"""Prove the merge correct for any split, associative, commutative and safe at
    :math:`-\infty` (``jaxsce._linear._merge_max_and_rest``)."""
    out = Derivation("merge", "The online merge of two chunks", ("000",), "Extends",
        "jaxsce._linear._merge_max_and_rest")
    T_A = sp.Sum(sp.exp(z[k]), (k, 1, a))
    T_B = sp.Sum(sp.exp(z[k]), (k, a + 1, n))
    mA, mB = sp.symbols("m_A m_B", real=True)
    rA, rB = sp.exp(-mA) * T_A - 1, sp.exp(-mB) * T_B - 1
    out.say(
        "Split the classes anywhere: chunk A = 1..a, chunk B = a+1..n. Each chunk's "
        "(m, r) has e^m (1 + r) = its sum of exponentials:",
        sp.exp(sp.Symbol("m_A")) * (1 + sp.Symbol("r_A")),
        T_A,
    )
    total = sp.Sum(sp.exp(z[k]), (k, 1, n))
    sizes, free = {n: 4, a: 2}, {}
    sA, sB = sp.symbols("r_A r_B", real=True)
    for label, (m, r) in (
        ("B holds the larger max", (mB, rB + (1 + rA) * sp.exp(mA - mB))),
        ("A holds the larger max (or a tie)", (mA, rA + (1 + rB) * sp.exp(mB - mA))),
    ):
        shown = 1 + (
            sB + (1 + sA) * sp.exp(mA - mB) if m == mB else sA + (1 + sB) * sp.exp(mB - mA)
        )
        out.say(
            f"{label}: the merged pair (m, r) = ({m}, {sp.sstr(shown - 1)}) stands for the "
            "sum over all n classes:",
            sp.exp(m) * shown,
            total,
            prove_identity(
                f"merge correct for any split: {label}",
                sp.exp(m) * (1 + r),
                total,
                free,
                sizes,
                rewrite=sp.expand,
            ),
        )
    out.say(
        "Both branches are exact for any values; taking the larger max keeps every exponent "
        "<= 0, and the merged max is the max of the union. By induction over the chunks "
        "(each merge adds one more chunk's sum), a loop over any number of chunks ends with "
        "the (m, r) of the whole row."
    )
    x = ((m_sym, r_sym), (mc_sym, rc_sym))
    out.say(
        "Commutative, over every order of the two maxima (ties included):",
        None,
        None,
        _pair_proof("merge is commutative", _algebra_cases(merge, 2, "commutative")),
    )
    out.say(
        "Associative, over all 13 orders of three maxima: neither the chunk order nor the "
        "device count changes the result:",
        None,
        None,
        _pair_proof("merge is associative", _algebra_cases(merge, 3, "associative")),
    )
    empty = (-sp.oo, sp.S.Zero)
    out.say(
        "An empty chunk (every logit -inf) is (-inf, 0); the guard makes its factor 0:",
        sp.Function("merge")(sp.Tuple(m_sym, r_sym), sp.Tuple(-sp.oo, 0)),
        sp.Tuple(*merge(x[0], empty)),
        _pair_proof(
            "merge with an empty chunk is the identity",
            [
                ({"side": "right"}, merge(x[0], empty), x[0]),
                ({"side": "left"}, merge(empty, x[0]), x[0]),
                ({"side": "both"}, merge(empty, empty), empty),
            ],
        ),
    )
    out.rejected += [
        prove_identity(
            "merge r + r_c e^{m_c - m} (the other side's top 1 forgotten)",
            sp.exp(mA) * (1 + rA + rB * sp.exp(mB - mA)),
            total,
            free,
            sizes,
            rewrite=sp.expand,
        ),
        _pair_proof("merge kept at the first side's max is commutative", _algebra_cases(
            first_max_merge, 2, "commutative"
        )),
        _pair_proof(
            "merge without the -inf guard: two empty chunks give (-inf, 0)",
            [({"m": "-oo", "m_c": "-oo"}, merge(empty, empty, guard=False), empty)],
        ),
    ]
    out.formula(
        "merge_max",
        sp.Piecewise((mc_sym, mc_sym > m_sym), (m_sym, True)),
        (),
        (m_sym, r_sym, mc_sym, rc_sym),
    )
    out.formula(
        "merge_rest",
        sp.Piecewise(
            (rc_sym + (1 + r_sym) * sp.exp(m_sym - mc_sym), mc_sym > m_sym),
            (r_sym + (1 + rc_sym) * sp.exp(mc_sym - m_sym), True),
        ),
        (),
        (m_sym, r_sym, mc_sym, rc_sym),
    )
    return out


def shards() -> Derivation:
    r"""Prove the vocab-parallel combination for :math:`S` shards, with label smoothing over
    the global vocabulary :math:`V = S V_l` (``jaxsce._linear._combine_shards``)."""
    out = Derivation("shards", "The vocab-parallel combination of shards", (), "",
        "jaxsce._linear._combine_shards")
    m = sp.Symbol("m", real=True)
    shard_sum = sp.Sum(sp.exp(Z[s, k]), (k, 1, V_l))
    total = sp.Sum(shard_sum, (s, 1, S_n))
    sizes = {S_n: 2, V_l: 2}
    out.say(
        "S shards of V_l classes each; shard s holds the logits Z_sk and its own (m_s, r_s):",
        sp.exp(M[s]) * (1 + R[s]),
        shard_sum,
    )
    b_top, b_low = R[s], (1 + R[s]) * sp.exp(M[s] - m)
    a_top, a_low = sp.S.One, sp.S.Zero
    out.say("Each shard sends b_s and a_s = [m_s = m] to one all-reduce sum:")
    for label, bb, aa, at in (
        ("m_s = m", b_top, a_top, {M[s]: m}),
        ("m_s < m", b_low, a_low, {}),
    ):
        out.say(
            f"Case {label}:",
            sp.Symbol("a_s") + sp.Symbol("b_s"),
            (1 + R[s]) * sp.exp(M[s] - m),
            prove_identity(
                f"a_s + b_s = (1 + r_s) e^{{m_s - m}} when {label}",
                aa + bb,
                ((1 + R[s]) * sp.exp(M[s] - m)).xreplace(at),
                {s: 1},
                {},
                rewrite=sp.expand,
                logits=(),
            ),
        )
    rest_global = sp.Sum(sp.exp(-M[s]) * shard_sum * sp.exp(M[s] - m), (s, 1, S_n)) - 1
    out.say(
        "So r = sum_s b_s + (sum_s a_s - 1) = sum_s (1 + r_s) e^{m_s - m} - 1, and",
        m + log1p(sp.Symbol("r")),
        sp.log(total),
        prove_identity(
            "m + log1p(r) = log of the sum over all S V_l classes",
            m + sp.log(1 + rest_global),
            sp.log(total),
            {},
            sizes,
            rewrite=lambda e: sp.expand(sp.expand_log(e, force=True)),
            logits=(Z,),
        ),
    )
    V = S_n * V_l
    one_hot = A.delta(s, sigma) * A.delta(k, kappa)
    target = (1 - eps) * one_hot + eps / V
    loss = sp.Sum(sp.Sum(target * (lse - Z[s, k]), (k, 1, V_l)), (s, 1, S_n))
    zsum = sp.Sum(sp.Sum(Z[s, k], (k, 1, V_l)), (s, 1, S_n))
    library = (1 - eps) * (lse - Z[sigma, kappa]) + eps * (lse - zsum / V)
    ctx = A.context(s, upper=S_n) & sp.Q.le(sigma, S_n) & sp.Q.le(kappa, V_l)
    out.say(
        "Label smoothing: the target is 1 - eps on the label (shard sigma, column kappa) "
        "plus eps/V on every class of the global vocabulary V = S V_l:",
        sp.Symbol("L"),
        loss,
    )
    free = {sigma: 2, kappa: 2}
    out.say(
        "The library sums the logits over all shards (in the same all-reduce) and divides "
        "by the global V:",
        sp.Symbol("L"),
        library,
        prove_identity(
            "smoothed loss with the global V = S V_l",
            loss,
            library,
            free,
            sizes,
            assumptions=ctx,
            rewrite=sp.expand,
            logits=(Z,),
        ),
    )
    # The gap form: each shard sends g_s + V_l (m - m_s), g_s = sum_k (m_s - Z_sk) >= 0.
    gap_shard = sp.Sum(M[s] - Z[s, k], (k, 1, V_l))
    sent = sp.Sum(gap_shard + V_l * (m - M[s]), (s, 1, S_n))
    gap = sp.Sum(sp.Sum(m - Z[s, k], (k, 1, V_l)), (s, 1, S_n))
    out.say(
        "The library may send, in place of the sum of the logits, each shard's gap "
        "g_s = sum_k (m_s - Z_sk) >= 0 shifted to the global max, which keeps its accuracy "
        "under a common offset of the logits:",
        sp.Sum(sp.Symbol("g_s") + V_l * (m - M[s]), (s, 1, S_n)),
        gap,
        prove_identity(
            "sum_s (g_s + V_l (m - m_s)) = sum_s sum_k (m - Z_sk)",
            sent,
            gap,
            {},
            sizes,
            rewrite=sp.expand,
            logits=(Z,),
        ),
    )
    out.say(
        "and the smoothing term divides it by the global V, m - mean(z) = gap / V:",
        sp.Symbol("L"),
        (1 - eps) * (lse - Z[sigma, kappa]) + eps * (lse - m + gap / V),
        prove_identity(
            "smoothed loss with the gap over the global V = S V_l",
            loss,
            (1 - eps) * (lse - Z[sigma, kappa]) + eps * (lse - m + gap / V),
            free,
            sizes,
            assumptions=ctx,
            rewrite=sp.expand,
            logits=(Z,),
        ),
    )
    local = (1 - eps) * (lse - Z[sigma, kappa]) + eps * (
        lse - sp.Sum(Z[1, k], (k, 1, V_l)) / V_l
    )
    megatron = prove_identity(
        "smoothing with the local size and local mean (Megatron-LM #737), on shard 1",
        loss,
        local,
        free,
        sizes,
        assumptions=ctx,
        rewrite=sp.expand,
        logits=(Z,),
    )
    one_shard, _ = at_random_points(
        "local size, one shard", loss - local, {sigma: 1, kappa: 2}, {S_n: 1, V_l: 2}, logits=(Z,)
    )
    out.say(
        "The local-size variant depends on the shard and on S: "
        + ("with one shard it is right, with two it is not." if one_shard else "wrong at S = 1.")
    )
    out.formula("shard_gap", gap, (), (Z, m))
    out.formula(
        "shard_rest", sp.Sum((1 + R[s]) * sp.exp(M[s] - m), (s, 1, S_n)) - 1, (), (M, R, m)
    )
    zz, zy, SS, VV = sp.IndexedBase("Z"), sp.Symbol("z_y"), sp.Symbol("S"), sp.Symbol("V_l")
    whole = sp.Sum(sp.Sum(zz[s, k], (k, 1, V_l)), (s, 1, S_n))
    out.formula(
        "smoothed_loss",
        (1 - eps) * (lse - zy) + eps * (lse - whole / (SS * VV)),
        (),
        (zz, zy, lse, eps, SS, VV),
    )
    out.formula(
        "local_size_loss",
        (1 - eps) * (lse - zy) + eps * (lse - sp.Sum(zz[s, k], (k, 1, V_l)) / VV),
        (s,),
        (zz, zy, lse, eps, VV),
    )
    out.rejected += [
        megatron,
        prove_identity(
            "r = sum_s r_s e^{m_s - m} (the other shards' top 1s forgotten)",
            sp.exp(m)
            * (1 + sp.Sum((sp.exp(-M[s]) * shard_sum - 1) * sp.exp(M[s] - m), (s, 1, S_n))),
            total,
            {},
            sizes,
            rewrite=sp.expand,
            logits=(Z,),
        ),
        prove_identity(
            "smoothing with the gap over the local size V_l",
            loss,
            (1 - eps) * (lse - Z[sigma, kappa]) + eps * (lse - m + gap / V_l),
            free,
            sizes,
            assumptions=ctx,
            rewrite=sp.expand,
            logits=(Z,),
        ),
    ]
    return out
