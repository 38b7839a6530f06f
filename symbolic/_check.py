r"""Numerical check: every derived formula against JAX autodiff and jaxsce's fused gradient.

Three legs per identity, in float64, at random points that include targets with
:math:`\sum y \ne 1`, masked classes and logits up to :math:`10^3`:
the symbolic closed form (through :mod:`symbolic._bridge`), JAX autodiff of the plain
formulation (``fused=False``) and jaxsce's hand-written custom_vjp (``fused=True``).
"""

from __future__ import annotations

import concurrent.futures
import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from symbolic._derivation import Derivation

TOL = 1e-11


@dataclasses.dataclass(frozen=True)
class Row:
    """Max relative errors of one identity: symbolic vs autodiff, symbolic vs fused."""

    name: str
    autodiff: float
    fused: float | None

    @property
    def refuted(self) -> bool:
        """A wrong formula placed beside a right one: it must disagree with both legs."""
        return "REFUTED" in self.name

    @property
    def ok(self) -> bool:
        if self.refuted:
            return self.autodiff > 1e-3 and (self.fused is None or self.fused > 1e-3)
        return self.autodiff <= TOL and (self.fused is None or self.fused <= TOL)


def _err(a, b) -> float:
    a, b = np.asarray(a), np.asarray(b)
    return float(np.max(np.abs(a - b)) / max(1.0, float(np.max(np.abs(b)))))


def points(seed: int = 0, batch: int = 6, classes: int = 5):
    """Random logits (scale 1 and 1e3), targets with sum(y) != 1, masks, labels."""
    rng = np.random.default_rng(seed)
    for scale, masked in ((1.0, False), (1e3, False), (3.0, True), (1e3, True)):
        z = rng.normal(size=(batch, classes)) * scale
        mask = np.ones((batch, classes), bool)
        if masked:
            mask[:, : classes // 2] = rng.random((batch, classes // 2)) < 0.5
        y = rng.random((batch, classes)) * 2 * mask
        label = np.argmax(np.where(mask, rng.random((batch, classes)), -1), axis=-1)
        yield jnp.asarray(z), jnp.asarray(y), jnp.asarray(mask), jnp.asarray(label), masked


def _textbook_legs(f, z, y, mask, label, masked: bool) -> dict[str, tuple]:
    """The three legs of every textbook identity at one set of points: name -> arrays."""
    import jaxsce

    out: dict[str, tuple] = {}
    where = mask if masked else None
    p = jax.nn.softmax(z, where=mask)
    sce = jaxsce.softmax_cross_entropy
    out["softmax Jacobian"] = (
        jax.vmap(f["softmax_jacobian"])(p),
        jax.vmap(jax.jacrev(lambda v, m: jax.nn.softmax(v, where=m)))(z, mask),
        jax.vmap(jax.jacrev(lambda v, m: jaxsce.softmax(v, where=m)))(z, mask),
    )

    def loss(zz, fused, yy=y):
        return sce(zz, yy, where=where, fused=fused).sum()

    out["CE gradient p sum(y) - y"] = (
        f["ce_gradient"](p, y),
        jax.grad(loss)(z, False),
        jax.grad(loss)(z, True),
    )
    y1 = y / y.sum(-1, keepdims=True)
    out["CE gradient p - y (sum(y) = 1)"] = (
        f["ce_gradient_sum1"](p, y1),
        jax.grad(lambda v: loss(v, False, y1))(z),
        jax.grad(lambda v: loss(v, True, y1))(z),
    )
    if not masked:
        out["CE Hessian sum(y)(diag(p) - pp^T)"] = (
            jax.vmap(f["ce_hessian"])(p, y),
            jax.vmap(lambda v, yy: jax.hessian(lambda u: sce(u, yy, fused=False))(v))(z, y),
            jax.vmap(lambda v, yy: jax.jacrev(jax.grad(lambda u: sce(u, yy, fused=True)))(v))(
                z, y
            ),
        )
    onehot = jax.nn.one_hot(label, z.shape[-1], dtype=z.dtype)
    il = jaxsce.softmax_cross_entropy_with_integer_labels
    lse = jaxsce.logsumexp(z, where=where)
    out["log-sum-exp loss -z_y + lse"] = (
        f["lse_loss"](onehot, z, lse),
        il(z, label, where=where, fused=False),
        il(z, label, where=where, fused=True),
    )
    out["log-sum-exp gradient p - e_y"] = (
        f["lse_gradient"](p, onehot),
        jax.grad(lambda v: il(v, label, where=where, fused=False).sum())(z),
        jax.grad(lambda v: il(v, label, where=where, fused=True).sum())(z),
    )
    out["shift invariance"] = (
        f["softmax"](p),
        jax.nn.softmax(z + 7.5, where=mask),
        jaxsce.softmax(z + 7.5, where=where),
    )
    s = jax.nn.sigmoid(z)
    yb = y / 2
    bce = jaxsce.sigmoid_binary_cross_entropy
    out["sigmoid' = s(1 - s)"] = (
        f["sigmoid_derivative"](s),
        jax.vmap(jax.vmap(jax.grad(jax.nn.sigmoid)))(z),
        None,
    )
    out["BCE gradient sigmoid(z) - y"] = (
        f["bce_gradient"](s, yb),
        jax.grad(lambda v: bce(v, yb, fused=False).sum())(z),
        jax.grad(lambda v: bce(v, yb, fused=True).sum())(z),
    )
    # Regression: X (B, d), theta (d, n); logits X theta.
    xs = z[:, :3] / jnp.where(jnp.max(z) > 100, 100.0, 1.0)
    theta = jnp.asarray(np.random.default_rng(1).normal(size=(3, z.shape[-1])))

    def mean_loss(th, fused):
        return sce(xs @ th, y, fused=fused).mean()

    out["regression X^T (P sum(Y) - Y) / B"] = (
        f["regression_gradient"](xs, jax.nn.softmax(xs @ theta), y, xs.shape[0]),
        jax.grad(mean_loss)(theta, False),
        jax.grad(mean_loss)(theta, True),
    )
    if not masked:
        _options(out, f, z, label, onehot, p, lse)
    return out


class Programs:
    """The check programs, each traced once its formulas exist and compiled in a thread.

    XLA's compilation releases the GIL, so the programs compile in parallel with each
    other and with whatever the caller does next (``python -m symbolic`` traces the
    textbook programs while its worker processes still derive the library's algorithms).
    """

    def __init__(self) -> None:
        self.f: dict = {}
        self.names: dict = {}
        self.compiled: dict = {}  # structure -> Future of the compiled program
        self._threads = concurrent.futures.ThreadPoolExecutor(3)
        with jax.enable_x64(True):
            self.textbook_points = list(points())
            rng = np.random.default_rng(7)
            self.library_points = [
                (
                    jnp.asarray(rng.normal(size=(6, 8)) * scale),
                    jnp.asarray(rng.random((6, 8))),
                    jnp.asarray(rng.integers(0, 8, 6)),
                )
                for scale in (1.0, 1e3)
            ]

    def add(self, derivations: list[Derivation]) -> None:
        """Make the formulas of ``derivations`` available to the programs."""
        for dv in derivations:
            self.f.update({name: form.jax for name, form in dv.formulas.items()})

    def start_textbook(self) -> None:
        """Trace the textbook legs (one program per structure, masked or not); compile."""
        if True in self.compiled:
            return

        def textbook(masked, z, y, mask, label):
            out = _textbook_legs(self.f, z, y, mask, label, masked)
            self.names[masked] = list(out)
            return list(out.values())

        legs = jax.jit(textbook, static_argnums=(0,))
        with jax.enable_x64(True):
            for z, y, mask, label, masked in self.textbook_points:
                if masked not in self.compiled:
                    lowered = legs.lower(masked, z, y, mask, label)
                    self.compiled[masked] = self._threads.submit(lowered.compile)

    def start_library(self) -> None:
        """Trace the legs of the library's algorithms (items 1-7); compile."""
        if "library" in self.compiled:
            return

        def library(z, y, label):
            out = _library_legs(self.f, z, y, label)
            self.names["library"] = list(out)
            return list(out.values())

        with jax.enable_x64(True):
            lowered = jax.jit(library).lower(*self.library_points[0])
        self.compiled["library"] = self._threads.submit(lowered.compile)


def check_all(derivations: list[Derivation], programs: Programs | None = None) -> list[Row]:
    """Evaluate every formula of ``derivations`` against autodiff and jaxsce.

    Each set of legs is one ``jax.jit`` program, compiled once per structure (masked or
    not) and reused for every point: far fewer compilations than op-by-op evaluation.

    Args:
      derivations: every derivation, from :func:`symbolic.derive_all`.
      programs: the programs, some of them maybe already started; new ones by default.
    """
    programs = programs or Programs()
    programs.add(derivations)
    programs.start_textbook()
    programs.start_library()
    f, names = programs.f, programs.names
    rows: dict[str, list[tuple[float, float | None]]] = {}

    def add(name, sym, auto, fused=None):
        rows.setdefault(name.split(" @")[0], []).append(
            (_err(sym, auto), None if fused is None else _err(sym, fused))
        )

    with jax.enable_x64(True):
        compiled = {key: future.result() for key, future in programs.compiled.items()}
        for z, y, mask, label, masked in programs.textbook_points:
            values = compiled[masked](z, y, mask, label)
            for name, (sym, auto, fused) in zip(names[masked], values, strict=True):
                add(name, sym, auto, fused)
        for z, y, label in programs.library_points:
            values = compiled["library"](z, y, label)
            for name, (sym, auto, fused) in zip(names["library"], values, strict=True):
                add(name, sym, auto, fused)
        # dL/dp at random distributions (p from logits can underflow to 0).
        pp = jax.nn.softmax(jnp.asarray(np.random.default_rng(2).normal(size=(6, 5))))
        yy = jnp.asarray(np.random.default_rng(3).random((6, 5)))
        add("dL/dp = -y/p", f["grad_p"](pp, yy), jax.grad(lambda q: -(yy * jnp.log(q)).sum())(pp))
    out = []
    for name, errs in rows.items():
        fused = [e[1] for e in errs if e[1] is not None]
        out.append(Row(name, max(e[0] for e in errs), max(fused) if fused else None))
    return out


def _options(out, f, z, label, onehot, p, lse):
    """Class weights, label smoothing (torch, t5x) and z-loss vs the general gradient."""
    import jaxsce

    il = jaxsce.softmax_cross_entropy_with_integer_labels
    n = z.shape[-1]
    w = jnp.linspace(0.5, 2.0, n)
    eps, zeta = 0.1, 1e-4
    cases = {
        "options: class weights": (dict(class_weights=w), w * onehot, 0.0),
        "options: torch smoothing + weights + z-loss": (
            dict(class_weights=w, label_smoothing=eps, z_loss=zeta),
            w * ((1 - eps) * onehot + eps / n),
            zeta,
        ),
        "options: t5x smoothing + z-loss": (
            dict(label_smoothing=eps, smoothing="t5x", z_loss=zeta),
            (1 - eps) * onehot + eps / (n - 1) * (1 - onehot),
            zeta,
        ),
    }
    for name, (kw, yeff, zl) in cases.items():
        sym = f["general_gradient"](p, yeff, zl, lse)
        try:
            auto = jax.grad(lambda v, kw=kw: il(v, label, fused=False, **kw).sum())(z)
            fused = jax.grad(lambda v, kw=kw: il(v, label, fused=True, **kw).sum())(z)
        except TypeError as err:  # an option the library does not have yet
            out[name + f" (absent: {err})"] = (sym, sym, None)
            continue
        out[name] = (sym, auto, fused)


def format_table(rows: list[Row], markdown: bool = False) -> str:
    """The table of maximum errors per identity."""
    head = ("identity", "vs autodiff", "vs jaxsce", "ok")
    body = [
        (
            r.name,
            f"{r.autodiff:.1e}",
            "-" if r.fused is None else f"{r.fused:.1e}",
            "yes" if r.ok else "NO",
        )
        for r in rows
    ]
    if markdown:
        lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        return "\n".join(lines + ["| " + " | ".join(b) + " |" for b in body]) + "\n"
    width = max(len(b[0]) for b in body + [head])
    lines = [f"{head[0]:<{width}}  {head[1]:>11}  {head[2]:>9}  {head[3]}"]
    lines += [f"{b[0]:<{width}}  {b[1]:>11}  {b[2]:>9}  {b[3]}" for b in body]
    return (
        "max relative error, float64, logits up to 1e3, sum(y) != 1, masks; "
        "vs autodiff: a plain formulation (jax.nn, jax.grad); vs jaxsce: the library's own "
        "function; REFUTED rows: a wrong formula, ok when it disagrees with both\n"
        + "\n".join(lines)
        + "\n"
    )


def _library_legs(f, z, y, label) -> dict[str, tuple]:
    """The algorithms of items 1-7 against the library's own internal functions.

    Legs: the proven formula (lambdified), an independent reference (jax.nn and autodiff)
    and the library's function (through :mod:`symbolic._library`).
    """
    from symbolic import _library as lib

    out: dict[str, tuple] = {}
    n = z.shape[-1]
    m = jnp.max(z, axis=-1)
    top = jax.nn.one_hot(jnp.argmax(z, axis=-1), n, dtype=z.dtype)
    m_lib, r_lib, lse_lib = lib.normaliser(z)
    r = jax.vmap(f["rest"])(z, top, m)
    lse = f["lse_from_rest"](m, r)
    ref_lse = jax.nn.logsumexp(z, axis=-1)
    out["1 rest r = sum_{k != top} e^(z_k - m)"] = (r, jnp.exp(ref_lse - m) - 1, r_lib)
    out["1 lse = m + log1p(r)"] = (lse, ref_lse, lse_lib)
    one_minus = f["one_minus_p_top"](r)
    lib_top = -jnp.sum(lib.fused_gradient(z, top, 0.0) * top, axis=-1)
    ref_top = 1 - jnp.sum(jax.nn.softmax(z) * top, -1)
    out["1 1 - p_top = r / (1 + r)"] = (one_minus, ref_top, lib_top)
    # 2: the fused backward with the z-loss.
    zeta = 1e-3
    e = jnp.exp(z - m[:, None])
    K = jnp.sum(y, -1) + 2 * zeta * lse
    fused = f["fused_backward"](e, y, K, r)

    def plain(v):
        lv = jax.nn.logsumexp(v, axis=-1)
        return jnp.sum(y * (lv[:, None] - v)) + zeta * jnp.sum(lv**2)

    got = lib.fused_gradient(z, y, zeta)
    out["2 fused ((e K - y) - y r)/(1 + r)"] = (fused, jax.grad(plain)(z), got)
    # 3: the merge of two chunks, split at every column; and an empty chunk.
    for a in range(1, n):
        mA, rA, _ = lib.normaliser(z[:, :a])
        mB, rB, _ = lib.normaliser(z[:, a:])
        sym = (f["merge_max"](mA, rA, mB, rB), f["merge_rest"](mA, rA, mB, rB))
        got = lib.merge(mA, rA, mB, rB)
        swapped = lib.merge(mB, rB, mA, rA)
        out[f"3 merge at every split of the classes @{a}"] = (
            jnp.stack(sym),
            jnp.stack([m, jnp.exp(ref_lse - m) - 1]),
            jnp.stack(got),
        )
        out[f"3 merge commutative at every split @{a}"] = (jnp.stack(sym), jnp.stack(swapped), None)
    thirds = [lib.normaliser(z[:, cols])[:2] for cols in (slice(0, 1), slice(1, 3), slice(3, n))]
    left = lib.merge(*lib.merge(*thirds[0], *thirds[1]), *thirds[2])
    right = lib.merge(*thirds[0], *lib.merge(*thirds[1], *thirds[2]))
    out["3 merge associative"] = (jnp.stack([m, r]), jnp.stack(left), jnp.stack(right))
    minus_inf = jnp.full_like(m, -jnp.inf)
    zero = jnp.zeros_like(m)
    empty = jnp.stack(
        [
            jnp.stack(lib.merge(m, r, minus_inf, zero)),
            jnp.stack(lib.merge(minus_inf, zero, m, r)),
            jnp.stack(lib.merge(minus_inf, zero, minus_inf, zero)),
        ]
    )
    expected = jnp.stack([jnp.stack([m, r]), jnp.stack([m, r]), jnp.stack([minus_inf, zero])])
    same = jnp.where(empty == expected, 0.0, 1.0)  # -inf == -inf; NaN fails
    nothing = jnp.zeros_like(same)
    out["3 merge with an empty (-inf, 0) chunk"] = (nothing, nothing, same)
    # 4: shards, with label smoothing over the global vocabulary.
    eps = 0.1
    zy = jnp.take_along_axis(z, label[:, None], -1)[:, 0]
    logp = jax.nn.log_softmax(z)
    dense = -((1 - eps) * jnp.take_along_axis(logp, label[:, None], -1)[:, 0] + eps * logp.mean(-1))
    for shards in (2, 4):
        vl = n // shards
        zs = jnp.stack([z[:, s * vl : (s + 1) * vl] for s in range(shards)])  # (S, N, V_l)
        m_l, r_l, _ = jax.vmap(lib.normaliser)(zs)
        cols = jnp.arange(shards)[:, None] * vl
        owned = (label[None, :] >= cols) & (label[None, :] < cols + vl)
        zy_l = jnp.where(owned, zy[None, :], 0.0)
        m_g, r_g, gap = lib.combine_shards(m_l, r_l, zy_l, zs, owned)
        sym_r = jax.vmap(f["shard_rest"], in_axes=(1, 1, 0))(m_l, r_l, m_g[0])
        out[f"4 shards combined, S = {shards}"] = (sym_r, jnp.exp(ref_lse - m_g[0]) - 1, r_g[0])
        by_row = jnp.transpose(zs, (1, 0, 2))  # (N, S, V_l)
        if gap is not None:  # the gap sum_k (m - z_k) that the smoothing divides by V
            sym_gap = f["shard_gap"](by_row, m_g[0])
            ref_gap = n * m_g[0] - jnp.sum(z, -1)
            out[f"4 smoothing gap combined, S = {shards}"] = (sym_gap, ref_gap, gap[0])
        sym = f["smoothed_loss"](by_row, zy, ref_lse, eps, shards, vl)
        got = lib.vocab_parallel_loss(zs, label, eps)
        out[f"4 smoothing, global V, S = {shards}"] = (sym, dense, got)
        local = f["local_size_loss"](by_row, zy, ref_lse, eps, vl)  # (N, S)
        out[f"4 REFUTED local V (Megatron #737), S = {shards}"] = (local.T, dense[None], got)
    # 5: soft-capping.
    cap = 2.0
    x = 3 * z / (1 + jnp.max(jnp.abs(z)) / 10)
    capped = f["softcap"](x, cap)
    dz = lib.label_gradient(capped, label)
    sym = f["softcap_chain"](dz, x, cap)

    def capped_plain(v):
        lp = jax.nn.log_softmax(cap * jnp.tanh(v / cap))
        return -jnp.sum(jnp.take_along_axis(lp, label[:, None], -1))

    got = lib.softcap_gradient(x, label, cap)
    name = "5 softcap dz (1 - tanh^2(x/c))"
    if got is None:
        name += " [logit_softcap absent: jaxsce of c tanh(x/c)]"
        got = jax.grad(lambda v: lib.label_loss(cap * jnp.tanh(v / cap), label))(x)
    out[name] = (sym, jax.grad(capped_plain)(x), got)
    hidden, weight = z[:, :3] / 10, jnp.asarray(np.random.default_rng(5).normal(size=(3, n)))
    got = lib.linear_softcap_gradient(hidden, weight, label, cap)
    if got is not None:  # the linear loss's logit_softcap: dW = X^T (dz (1 - tanh^2(x/c)))
        x = hidden @ weight
        dz = lib.label_gradient(f["softcap"](x, cap), label)
        sym = hidden.T @ f["softcap_chain"](dz, x, cap)

        def linear_capped(w):
            lp = jax.nn.log_softmax(cap * jnp.tanh(hidden @ w / cap))
            return -jnp.sum(jnp.take_along_axis(lp, label[:, None], -1))

        out["5 softcap, linear loss logit_softcap"] = (sym, jax.grad(linear_capped)(weight), got)
    # 6: the gradient computed in the forward pass, scaled by the cotangent.
    P = jax.nn.softmax(hidden @ weight)
    Y = jax.nn.one_hot(label, n, dtype=z.dtype)
    g = 0.7
    G = f["stored_gradient"](hidden, P, Y)

    def linear_plain(w):
        lp = jax.nn.log_softmax(hidden @ w)
        return -jnp.sum(jnp.take_along_axis(lp, label[:, None], -1))

    ref = g * jax.grad(linear_plain)(weight)
    out["6 scalar cotangent: g G"] = (g * G, ref, lib.linear_vjp(hidden, weight, label, g))
    pre = lib.linear_vjp(hidden, weight, label, g, method="precompute")
    if pre is not None:
        out["6 scalar cotangent: g G, method=precompute"] = (g * G, ref, pre)
    gb = jnp.linspace(0.2, 2.0, z.shape[0])
    right = f["per_example_vjp"](gb, hidden, P, Y)
    got = lib.linear_vjp(hidden, weight, label, gb)

    def weighted(w):
        lp = jax.nn.log_softmax(hidden @ w)
        return -jnp.sum(gb * jnp.take_along_axis(lp, label[:, None], -1)[:, 0])

    out["6 per-example g_b: sum_b g_b dl_b"] = (right, jax.grad(weighted)(weight), got)
    out["6 REFUTED per-example: mean(g) G"] = (jnp.mean(gb) * G, right, got)
    # 7: entropy.
    p = jax.nn.softmax(z)
    out["7 entropy H = lse - sum p z"] = (
        f["entropy"](p, z, ref_lse),
        -jnp.sum(p * jax.nn.log_softmax(z), -1),
        lib.entropy(z),
    )
    out["7 entropy gradient -p (z - sum p z)"] = (
        f["entropy_gradient"](p, z),
        jax.grad(lambda v: -jnp.sum(jax.nn.softmax(v) * jax.nn.log_softmax(v)))(z),
        jax.grad(lambda v: jnp.sum(lib.entropy(v)))(z),
    )
    return out
