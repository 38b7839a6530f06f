r"""Symbols of the derivations and the rewriting that turns a raw derivative into a closed form.

The derivations use sympy's ``IndexedBase`` / ``Sum`` / ``KroneckerDelta`` with a symbolic
number of classes :math:`n`, so that a result holds for every :math:`n`.  A raw derivative of
a ``Sum`` is a sum of Kronecker deltas; :func:`evaluate` collapses it (``doit``), removes the
``Piecewise`` left by the summation bounds (``refine`` with :math:`i, j \le n`) and splits the
remaining sums into constant factors times sums, until nothing changes.  :func:`to_p` then
writes the result as a function of the probabilities :math:`p`, which is what makes it stable
at large logits.
"""

from __future__ import annotations

from collections.abc import Callable

import sympy as sp

# Sizes.
n = sp.Symbol("n", integer=True, positive=True)  # number of classes
B = sp.Symbol("B", integer=True, positive=True)  # batch size
d = sp.Symbol("d", integer=True, positive=True)  # number of features

# Indices: i, j, c, r, s are free; k, m, q, a, b are summation variables.
i, j, k, m, q = sp.symbols("i j k m q", integer=True, positive=True)
a, b, c, r, s = sp.symbols("a b c r s", integer=True, positive=True)

tau = sp.Symbol("tau", integer=True, positive=True)  # the class the library pivots on (the top)

# Arrays.
z = sp.IndexedBase("z", real=True)  # logits
y = sp.IndexedBase("y", real=True)  # targets (any non-negative weights, sum(y) free)
p = sp.IndexedBase("p", positive=True)  # softmax probabilities
w = sp.IndexedBase("w", positive=True)  # class weights
t = sp.IndexedBase("t", real=True)  # probability targets
e = sp.IndexedBase("e", real=True)  # one-hot of the integer label: e_c = delta_{c,label}
X = sp.IndexedBase("X", real=True)  # features, (B, d)
theta = sp.IndexedBase("theta", real=True)  # weights of the linear model, (d, n)
Y = sp.IndexedBase("Y", real=True)  # targets of the batch, (B, n)
P = sp.IndexedBase("P", positive=True)  # softmax(X theta), (B, n)
G = sp.IndexedBase("g", real=True)  # per-example cotangents, (B,)

# Scalars.
S = sp.Symbol("S", positive=True)  # the normaliser sum_k exp(z_k), kept opaque
Sb = sp.IndexedBase("S", positive=True)  # one normaliser per row of a batch
lse = sp.Symbol("lse", real=True)  # log sum_k exp(z_k)
eps = sp.Symbol("epsilon", nonnegative=True)  # label smoothing
zeta = sp.Symbol("zeta", nonnegative=True)  # z-loss coefficient
const = sp.Symbol("C", real=True)  # the constant of the shift
g = sp.Symbol("g", real=True)  # the cotangent of a scalar loss
cap = sp.Symbol("c", positive=True)  # the soft-capping constant

delta = sp.KroneckerDelta


def normaliser(index: sp.Symbol = m) -> sp.Expr:
    r"""The softmax normaliser :math:`\sum_{m=1}^n e^{z_m}`."""
    return sp.Sum(sp.exp(z[index]), (index, 1, n))


def softmax(index: sp.Expr) -> sp.Expr:
    r"""Softmax entry :math:`p_i = e^{z_i} / \sum_m e^{z_m}` written in the logits."""
    return sp.exp(z[index]) / normaliser()


def sum_of(base: sp.IndexedBase, index: sp.Symbol = k, upper: sp.Expr = n) -> sp.Expr:
    r""":math:`\sum_{k=1}^n` ``base``:math:`_k`."""
    return sp.Sum(base[index], (index, 1, upper))


def sum_to_one(expr: sp.Expr, base: sp.IndexedBase = y) -> sp.Expr:
    r"""Replace :math:`\sum_k y_k` by 1, whatever the name of ``k``."""
    return expr.replace(
        lambda x: isinstance(x, sp.Sum) and x.function == base[x.limits[0][0]],
        lambda x: sp.S.One,
    )


def lse_form(expr: sp.Expr) -> sp.Expr:
    r"""Write :math:`\log \sum_m e^{z_m}` as ``lse`` and expand logarithms, keeping the logits."""
    expr = sp.expand_log(expr, force=True)
    return expr.replace(lambda x: isinstance(x, sp.log) and to_p(x.args[0]) == S, lambda x: lse)


def context(*free: sp.Symbol, upper: sp.Expr = n) -> sp.Boolean:
    r"""Assumptions :math:`1 \le i \le n` for the free indices, as ``refine`` takes them."""
    return sp.And(*[sp.Q.le(index, upper) for index in free]) if free else sp.true


def _nested(sum_: sp.Sum) -> sp.Expr:
    """Sum(f, (c, ...), (b, ...)) as Sum(Sum(f, (c, ...)), (b, ...))."""
    out = sum_.function
    for limit in sum_.limits:
        out = sp.Sum(out, limit)
    return out


def _split(sum_: sp.Sum) -> sp.Expr:
    r"""Linearity of a sum: :math:`\sum_k (a f_k + g_k) = a \sum_k f_k + \sum_k g_k`."""
    if len(sum_.limits) > 1:
        return _nested(sum_)
    (var, lower, upper) = sum_.limits[0]
    out = sp.S.Zero
    for term in sp.Add.make_args(sp.expand(sum_.function)):
        coeff, rest = term.as_independent(var, as_Add=False)
        out += coeff * (upper - lower + 1 if rest == 1 else sp.Sum(rest, (var, lower, upper)))
    return out


def _collapse(sum_: sp.Sum, assumptions: sp.Boolean) -> sp.Expr:
    r"""Sifting by a delta: :math:`\sum_{k=1}^n \delta_{ku} f_k = f_u` when :math:`u \le n`."""
    if len(sum_.limits) != 1:
        return sum_
    (var, lower, upper) = sum_.limits[0]
    factors = sp.Mul.make_args(sum_.function)
    for factor in factors:
        if isinstance(factor, sp.KroneckerDelta) and var in factor.args:
            (other,) = [x for x in factor.args if x != var] or [var]
            if other == var or var in other.free_symbols or lower != 1:
                continue
            if not (other.is_positive and sp.ask(sp.Q.le(other, upper), assumptions)):
                continue
            rest = [x for x in factors if x is not factor]
            return sp.Mul(*rest).xreplace({var: other})
    return sum_


def sift_deltas(expr: sp.Expr) -> sp.Expr:
    r"""In a term holding :math:`\delta_{uv}`, write :math:`v` as :math:`u` in the other factors."""
    out = sp.S.Zero
    for term in sp.Add.make_args(sp.expand(expr)):
        factors = sp.Mul.make_args(term)
        deltas = [f for f in factors if isinstance(f, sp.KroneckerDelta)]
        if deltas:
            u, v = sorted(deltas[0].args, key=str)
            rest = sp.Mul(*[f for f in factors if f is not deltas[0]]).xreplace({v: u})
            term = deltas[0] * rest
        out += term
    return out


def _rename_dummies(expr: sp.Expr) -> sp.Expr:
    """Give every summation variable a canonical name, so equal sums compare equal."""

    def rename(sum_: sp.Sum) -> sp.Expr:
        if len(sum_.limits) != 1:
            return sum_
        (var, lower, upper) = sum_.limits[0]
        depth = sum(1 for x in sp.preorder_traversal(sum_.function) if isinstance(x, sp.Sum))
        new = {B: b, d: a}.get(upper, (k, m, q)[min(depth, 2)])
        if new in sum_.function.free_symbols:
            return sum_
        return sp.Sum(sum_.function.xreplace({var: new}), (new, lower, upper))

    return expr.replace(lambda x: isinstance(x, sp.Sum), rename)


def evaluate(expr: sp.Expr, assumptions: sp.Boolean = sp.true, rounds: int = 8) -> sp.Expr:
    r"""Collapse Kronecker-delta sums, drop the bound checks and split sums, to a fixed point.

    Args:
      expr: a raw derivative, as ``sympy.diff`` returns it.
      assumptions: facts such as :math:`i \le n` that ``refine`` uses on the ``Piecewise``
        terms the summation bounds leave.
      rounds: the most passes made.

    Returns:
      The expression with every collapsible sum collapsed.
    """

    def collapse(sum_: sp.Sum) -> sp.Expr:
        return _collapse(sum_, assumptions)

    for _ in range(rounds):
        new = expr.replace(lambda x: isinstance(x, sp.Sum), _split)
        new = new.replace(lambda x: isinstance(x, sp.Sum), collapse)
        if any(
            isinstance(x, sp.Sum) and x.has(sp.KroneckerDelta) for x in sp.preorder_traversal(new)
        ) or new.has(sp.Derivative):
            try:  # sympy's own delta summation leaves Piecewise bounds that refine removes
                new = sp.refine(new.doit(), assumptions)
            except (StopIteration, TypeError, ValueError):  # it can fail on nested sums
                pass
        new = new.replace(lambda x: isinstance(x, sp.Sum), _split)
        new = _rename_dummies(new)
        if new == expr:
            break
        expr = new
    return expr


def _softmax_logit(arg: sp.Expr) -> tuple[tuple[sp.Expr, ...], sp.Expr] | None:
    """z_x -> ((), x): the row key and the class of a logit of one example."""
    if isinstance(arg, sp.Indexed) and arg.base == z:
        return (), arg.indices[0]
    return None


def _linear_logit(arg: sp.Expr) -> tuple[tuple[sp.Expr, ...], sp.Expr] | None:
    """sum_a X_{b,a} theta_{a,x} -> ((b,), x): the row and class of a logit of X theta."""
    if isinstance(arg, sp.Sum) and len(arg.limits) == 1:
        factors = sp.Mul.make_args(arg.function)
        xs = [f for f in factors if isinstance(f, sp.Indexed) and f.base == X]
        ts = [f for f in factors if isinstance(f, sp.Indexed) and f.base == theta]
        if len(factors) == 2 and xs and ts:
            return (xs[0].indices[0],), ts[0].indices[1]
    return None


def to_p(
    expr: sp.Expr,
    logit: Callable[[sp.Expr], tuple[tuple[sp.Expr, ...], sp.Expr] | None] = _softmax_logit,
    probs: sp.IndexedBase = p,
) -> sp.Expr:
    r"""Rewrite :math:`e^{z_x} \to p_x S` and :math:`\sum_m e^{z_m} \to S`, then cancel :math:`S`.

    With ``log S`` written ``lse``, the result is a function of :math:`p` (and of the
    log-sum-exp), which is how a derived formula is evaluated stably at large logits.

    Args:
      expr: an expression in the logits.
      logit: recognises a logit; returns the row key and the class index.
      probs: the array of probabilities to write (``p`` or ``P``).

    Returns:
      The same quantity as a function of the probabilities.
    """

    def norm_key(x: sp.Expr) -> tuple[sp.Expr, ...] | None:
        if isinstance(x, sp.Sum) and len(x.limits) == 1 and isinstance(x.function, sp.exp):
            hit = logit(x.function.args[0])
            if hit is not None and hit[1] == x.limits[0][0]:
                return hit[0]
        return None

    def norm_symbol(key: tuple[sp.Expr, ...]) -> sp.Expr:
        return Sb[key] if key else S

    expr = sp.expand(expr, power_exp=True, mul=False, multinomial=False, log=False)
    # sympy writes exp(sum_a f_a) as prod_a exp(f_a); undo it.
    expr = expr.replace(
        lambda x: isinstance(x, sp.Product) and isinstance(x.function, sp.exp),
        lambda x: sp.exp(sp.Sum(x.function.args[0], *x.limits)),
    )
    expr = expr.replace(lambda x: norm_key(x) is not None, lambda x: norm_symbol(norm_key(x)))

    def is_exp_logit(x: sp.Expr) -> bool:
        return isinstance(x, sp.exp) and logit(x.args[0].as_coeff_Mul()[1]) is not None

    def exp_to_p(x: sp.Expr) -> sp.Expr:
        power, arg = x.args[0].as_coeff_Mul()
        key, cls = logit(arg)
        return (probs[(*key, cls)] * norm_symbol(key)) ** power

    expr = expr.replace(is_exp_logit, exp_to_p)
    expr = sp.expand_log(expr, force=True)
    expr = expr.replace(lambda x: x == sp.log(S), lambda x: lse)
    return sp.expand(sp.cancel(sp.expand(expr)))
