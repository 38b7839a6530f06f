r"""Numerical check: every derived formula against JAX autodiff and jaxsce's fused gradient.

Three legs per identity, in float64, at random points that include targets with
:math:`\sum y \ne 1`, masked classes and logits up to :math:`10^3`:
the symbolic closed form (through :mod:`symbolic._bridge`), JAX autodiff of the plain
formulation (``fused=False``) and jaxsce's hand-written custom_vjp (``fused=True``).
"""

from __future__ import annotations

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
    def ok(self) -> bool:
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


def check_all(derivations: list[Derivation]) -> list[Row]:
    """Evaluate every formula of ``derivations`` against autodiff and jaxsce."""
    import jaxsce

    f = {name: form.jax for dv in derivations for name, form in dv.formulas.items()}
    rows: dict[str, list[tuple[float, float | None]]] = {}

    def add(name, sym, auto, fused=None):
        rows.setdefault(name, []).append(
            (_err(sym, auto), None if fused is None else _err(sym, fused))
        )

    with jax.enable_x64(True):
        for z, y, mask, label, masked in points():
            where = mask if masked else None
            p = jax.nn.softmax(z, where=mask)
            sce = jaxsce.softmax_cross_entropy
            add(
                "softmax Jacobian",
                jax.vmap(f["softmax_jacobian"])(p),
                jax.vmap(jax.jacrev(lambda v, m: jax.nn.softmax(v, where=m)))(z, mask),
                jax.vmap(jax.jacrev(lambda v, m: jaxsce.softmax(v, where=m)))(z, mask),
            )

            def loss(zz, fused, yy=y, where=where):
                return sce(zz, yy, where=where, fused=fused).sum()

            add(
                "CE gradient p sum(y) - y",
                f["ce_gradient"](p, y),
                jax.grad(loss)(z, False),
                jax.grad(loss)(z, True),
            )
            y1 = y / y.sum(-1, keepdims=True)
            add(
                "CE gradient p - y (sum(y) = 1)",
                f["ce_gradient_sum1"](p, y1),
                jax.grad(lambda v: loss(v, False, y1))(z),
                jax.grad(lambda v: loss(v, True, y1))(z),
            )
            hz = jax.vmap(
                lambda v, yy: jax.hessian(
                    lambda u: sce(u, yy, where=where if where is None else None, fused=False)
                )(v)
            )
            if not masked:
                add(
                    "CE Hessian sum(y)(diag(p) - pp^T)",
                    jax.vmap(f["ce_hessian"])(p, y),
                    hz(z, y),
                    jax.vmap(
                        lambda v, yy: jax.jacrev(jax.grad(lambda u: sce(u, yy, fused=True)))(v)
                    )(z, y),
                )
            onehot = jax.nn.one_hot(label, z.shape[-1], dtype=z.dtype)
            il = jaxsce.softmax_cross_entropy_with_integer_labels
            lse = jaxsce.logsumexp(z, where=where)
            add(
                "log-sum-exp loss -z_y + lse",
                f["lse_loss"](onehot, z, lse),
                il(z, label, where=where, fused=False),
                il(z, label, where=where, fused=True),
            )
            add(
                "log-sum-exp gradient p - e_y",
                f["lse_gradient"](p, onehot),
                jax.grad(lambda v: il(v, label, where=where, fused=False).sum())(z),
                jax.grad(lambda v: il(v, label, where=where, fused=True).sum())(z),
            )
            add(
                "shift invariance",
                f["softmax"](p),
                jax.nn.softmax(z + 7.5, where=mask),
                jaxsce.softmax(z + 7.5, where=where),
            )
            s = jax.nn.sigmoid(z)
            yb = y / 2
            bce = jaxsce.sigmoid_binary_cross_entropy
            add(
                "sigmoid' = s(1 - s)",
                f["sigmoid_derivative"](s),
                jax.vmap(jax.vmap(jax.grad(jax.nn.sigmoid)))(z),
            )
            add(
                "BCE gradient sigmoid(z) - y",
                f["bce_gradient"](s, yb),
                jax.grad(lambda v: bce(v, yb, fused=False).sum())(z),
                jax.grad(lambda v: bce(v, yb, fused=True).sum())(z),
            )
            # Regression: X (B, d), theta (d, n); logits X theta.
            xs = z[:, :3] / (100 if z.max() > 100 else 1)
            theta = jnp.asarray(np.random.default_rng(1).normal(size=(3, z.shape[-1])))

            def mean_loss(th, fused):
                return sce(xs @ th, y, fused=fused).mean()

            add(
                "regression X^T (P sum(Y) - Y) / B",
                f["regression_gradient"](xs, jax.nn.softmax(xs @ theta), y, xs.shape[0]),
                jax.grad(mean_loss)(theta, False),
                jax.grad(mean_loss)(theta, True),
            )
            if not masked:
                _options(add, f, z, label, onehot, p, lse)
        # dL/dp at random distributions (p from logits can underflow to 0).
        pp = jax.nn.softmax(jnp.asarray(np.random.default_rng(2).normal(size=(6, 5))))
        yy = jnp.asarray(np.random.default_rng(3).random((6, 5)))
        add("dL/dp = -y/p", f["grad_p"](pp, yy), jax.grad(lambda q: -(yy * jnp.log(q)).sum())(pp))
    out = []
    for name, errs in rows.items():
        fused = [e[1] for e in errs if e[1] is not None]
        out.append(Row(name, max(e[0] for e in errs), max(fused) if fused else None))
    return out


def _options(add, f, z, label, onehot, p, lse):
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
            add(name + f" (absent: {err})", sym, sym)
            continue
        add(name, sym, auto, fused)


def format_table(rows: list[Row], markdown: bool = False) -> str:
    """The table of maximum errors per identity."""
    head = ("identity", "vs autodiff", "vs fused", "ok")
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
        "max relative error, float64, logits up to 1e3, sum(y) != 1, masks\n"
        + "\n".join(lines)
        + "\n"
    )
