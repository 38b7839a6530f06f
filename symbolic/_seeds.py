r"""The blog posts the derivations follow, by title and by what each derives."""

from __future__ import annotations

import dataclasses


@dataclasses.dataclass(frozen=True)
class Seed:
    """One blog post: its title as published, in English, its byline and what it derives."""

    title: str
    english: str
    byline: str
    derives: str


SEEDS = {
    "000": Seed(
        "Softmax Cross Entropy Loss笔记",
        "Notes on the softmax cross-entropy loss",
        "2019",
        "the stable softmax (subtract the max), the Jacobian matrix and the gradient p - y",
    ),
    "001": Seed(
        "Softmax和交叉熵",
        "Softmax and cross-entropy",
        "Welt Xing, 2021",
        "dL/dp = -y/p, the sigmoid's f' = f (1 - f) and the gradient by the chain rule",
    ),
    "002": Seed(
        "手撕 Softmax 和 Cross-entropy 公式及代码",
        "Softmax and cross-entropy by hand: formulas and code",
        "",
        "the log-sum-exp form of the loss, its gradient p - e_y and the linear model's "
        "X^T (P - Y)",
    ),
    "003": Seed(
        "Softmax and Cross Entropy Loss",
        "Softmax and Cross Entropy Loss",
        "2018",
        "softmax's invariance to a constant shift, its Jacobian and the backward pass",
    ),
    "004": Seed(
        "softmax推导",
        "Deriving softmax",
        "2019",
        "the gradient p - y by the chain rule over every probability",
    ),
}


def cite(key: str, ascii_only: bool = False) -> str:
    """A post named by title (English only when ``ascii_only``) and what it derives."""
    seed = SEEDS[key]
    by = f"; {seed.byline}" if seed.byline else ""
    if ascii_only:
        name = f"\u201c{seed.english}\u201d"
        if seed.english != seed.title:
            name += f" (in Chinese{by})"
        elif seed.byline:
            name += f" ({seed.byline})"
    elif seed.english == seed.title:
        name = f"\u201c{seed.title}\u201d" + (f" ({seed.byline})" if seed.byline else "")
    else:
        name = f"\u201c{seed.title}\u201d ({seed.english}{by})"
    return f"{name}, which derives {seed.derives}"
