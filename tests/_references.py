"""High-precision references (mpmath) and error measures shared by the tests."""

import mpmath
import numpy as np

DPS = 120  # enough for the margins tested: the loss ~ e^-margin sits ~margin/2.3 digits down


def _row_mp(z):
    return [mpmath.mpf(float(v)) for v in z]


def lse_mp(z):
    """log sum exp of one row, exact float inputs, ``DPS`` digits."""
    with mpmath.workdps(DPS):
        zs = [v for v in _row_mp(z) if v != mpmath.ninf]
        m = max(zs)
        return m + mpmath.log(mpmath.fsum(mpmath.exp(v - m) for v in zs))


def softmax_mp(z):
    """``softmax`` of one row as float64 (``-inf`` entries give 0)."""
    with mpmath.workdps(DPS):
        lse = lse_mp(z)
        return np.array([float(mpmath.exp(v - lse)) for v in _row_mp(z)])


def integer_ce_mp(z, label):
    """Loss ``lse(z) - z_y`` and gradient ``p - onehot(y)`` of one row, as float64."""
    with mpmath.workdps(DPS):
        lse = lse_mp(z)
        zs = _row_mp(z)
        loss = lse - zs[label]
        p = [mpmath.exp(v - lse) for v in zs]
        p[label] -= 1
        return float(loss), np.array([float(v) for v in p])


def ulp_error(x, ref, dtype=np.float32):
    """|x - ref| in units of the spacing of ``dtype`` at ``ref``.

    References below the dtype's smallest normal number count in units of that
    number's spacing times 2**23 (flush-to-zero of subnormals is allowed).
    """
    x = np.asarray(x, np.float64)
    ref = np.asarray(ref, np.float64)
    info = np.finfo(dtype)
    unit = np.maximum(np.spacing(np.abs(ref).astype(dtype)).astype(np.float64), float(info.tiny))
    return np.abs(x - ref) / unit
