r"""A character-level transformer language model, trained on Python's own source code.

A small decoder-only transformer (flax ``nnx``) learns to predict the next
character of a few modules of Python's standard library, read from the
installed interpreter (``argparse.py``, ``textwrap.py``, ...): no data is
downloaded. Two other modules (``calendar.py``, ``colorsys.py``) are held out
to measure the loss on text the model never trained on.

The data is cut into rows of whole lines, at most ``context + 1`` characters
long; the rest of a row is padding. Each row gives the inputs ``row[:-1]`` and
the labels ``row[1:]``, and a padded position's label is ``-100``, so the loss

.. math::

  L = \frac{1}{|\{t : y_t \ne -100\}|} \sum_{t : y_t \ne -100}
      \Big(\operatorname{lse}(h_t W) - (h_t W)_{y_t}\Big)

counts characters only. It is computed by
``jaxsce.linear_softmax_cross_entropy(hidden, kernel, labels,
ignore_index=-100, reduction="mean")``, which never builds the logits
``hidden @ kernel``. Characters are their ASCII codes (a vocabulary of 128;
any other character becomes code 26, ASCII's substitute, and inputs are padded
with code 0).

With ``--devices 4`` the same model trains on 4 devices (simulated CPU devices
when there is no accelerator): the output kernel's vocabulary axis is split over
a mesh axis, each device holding 32 of the 128 columns, and the loss is
``jaxsce.vocab_parallel_linear_softmax_cross_entropy`` inside ``jax.shard_map``.
The batch is split over the same axis for the transformer body (data
parallel); ``shard_map`` gathers the hidden states for the loss. From the same
seed, both runs see the same initial parameters and batches, so their first
losses agree to float32 rounding.

Run: ``python examples/char_lm.py [--devices 4] [--steps 600] [--plot PATH]``.
"""

from __future__ import annotations

import argparse
import functools
import math
import sys
import sysconfig
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

import jaxsce

TRAIN_FILES = (
    "argparse.py",
    "dataclasses.py",
    "difflib.py",
    "enum.py",
    "fractions.py",
    "functools.py",
    "heapq.py",
    "json/decoder.py",
    "json/encoder.py",
    "queue.py",
    "random.py",
    "statistics.py",
    "string.py",
    "textwrap.py",
)
HELD_OUT_FILES = ("calendar.py", "colorsys.py")
VOCAB = 128  # ASCII codes
PAD = 0  # input code of a padded position
OTHER = 26  # ASCII SUB: every non-ASCII character
IGNORE = -100  # label of a padded position
AXIS = "devices"  # the mesh axis: vocabulary of the output layer, batch of the body


# -- data ------------------------------------------------------------------


def read_stdlib(names: Sequence[str]) -> list[str]:
    """The text of standard-library modules of the running interpreter."""
    root = Path(sysconfig.get_paths()["stdlib"])
    return [(root / name).read_text(encoding="utf-8") for name in names]


def encode(text: str) -> list[int]:
    """ASCII codes; any other character becomes ``OTHER``."""
    return [code if (code := ord(c)) < VOCAB else OTHER for c in text]


def rows_of_lines(texts: Sequence[str], length: int) -> np.ndarray:
    """Whole lines packed into rows of at most ``length`` codes, ``-1`` after the end.

    A line longer than a row is split over several rows. Rows never cross from
    one file to the next.
    """
    rows: list[list[int]] = []
    for text in texts:
        row: list[int] = []
        for line in text.splitlines(keepends=True):
            codes = encode(line)
            if row and len(row) + len(codes) > length:
                rows.append(row)
                row = []
            while len(codes) > length:
                rows.append(codes[:length])
                codes = codes[length:]
            row += codes
        if row:
            rows.append(row)
    out = np.full((len(rows), length), -1, np.int32)
    for i, row in enumerate(rows):
        out[i, : len(row)] = row
    return out


def inputs_and_labels(rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Next-character pairs: inputs ``row[:-1]`` (padding ``PAD``), labels ``row[1:]``."""
    inputs = np.where(rows[:, :-1] < 0, PAD, rows[:, :-1]).astype(np.int32)
    labels = np.where(rows[:, 1:] < 0, IGNORE, rows[:, 1:]).astype(np.int32)
    return inputs, labels


# -- model -----------------------------------------------------------------


class Block(nnx.Module):
    """Pre-norm transformer block: causal self-attention, then a GELU MLP."""

    def __init__(self, width: int, heads: int, *, rngs: nnx.Rngs):
        self.attention_norm = nnx.LayerNorm(width, rngs=rngs)
        self.attention = nnx.MultiHeadAttention(
            num_heads=heads, in_features=width, decode=False, rngs=rngs
        )
        self.mlp_norm = nnx.LayerNorm(width, rngs=rngs)
        self.up = nnx.Linear(width, 4 * width, rngs=rngs)
        self.down = nnx.Linear(4 * width, width, rngs=rngs)

    def __call__(self, x: jax.Array, mask: jax.Array) -> jax.Array:
        x = x + self.attention(self.attention_norm(x), mask=mask)
        return x + self.down(nnx.gelu(self.up(self.mlp_norm(x))))


class CharTransformer(nnx.Module):
    """Character embeddings and learned positions, blocks, a final norm, an output kernel.

    The output layer is a bare ``(width, VOCAB)`` kernel: the loss takes it
    directly, so the model never computes the logits while it trains.
    """

    def __init__(self, width: int, heads: int, layers: int, context: int, *, rngs: nnx.Rngs):
        self.embed = nnx.Embed(VOCAB, width, rngs=rngs)
        self.position = nnx.Param(0.02 * jax.random.normal(rngs.params(), (context, width)))
        self.blocks = nnx.List([Block(width, heads, rngs=rngs) for _ in range(layers)])
        self.norm = nnx.LayerNorm(width, rngs=rngs)
        init = nnx.initializers.normal(1.0 / math.sqrt(width))
        self.kernel = nnx.Param(init(rngs.params(), (width, VOCAB)))

    def hidden(self, tokens: jax.Array) -> jax.Array:
        """The last layer's states ``(batch, time, width)`` for ``tokens`` ``(batch, time)``."""
        x = self.embed(tokens) + self.position[...][None, : tokens.shape[-1]]
        mask = nnx.make_causal_mask(tokens)
        for block in self.blocks:
            x = block(x, mask)
        return self.norm(x)

    def logits(self, tokens: jax.Array) -> jax.Array:
        """``hidden @ kernel``, for sampling only."""
        return self.hidden(tokens) @ self.kernel[...]


@functools.partial(nnx.jit, static_argnums=(0, 1, 2, 3, 4))
def create_model(width: int, heads: int, layers: int, context: int, seed: int) -> CharTransformer:
    """A freshly initialised model (initialised in one compiled call, not op by op)."""
    return CharTransformer(width, heads, layers, context, rngs=nnx.Rngs(seed))


def make_loss(mesh: Mesh | None):
    """The mean loss over non-padded positions of ``(hidden, kernel, labels)``.

    Without a mesh: ``linear_softmax_cross_entropy``. With one: the
    vocab-parallel version on each device's columns of the kernel.
    """
    if mesh is None:
        return lambda hidden, kernel, labels: jaxsce.linear_softmax_cross_entropy(
            hidden, kernel, labels, ignore_index=IGNORE, reduction="mean"
        )

    def local(hidden, local_kernel, labels):
        return jaxsce.vocab_parallel_linear_softmax_cross_entropy(
            hidden, local_kernel, labels, axis_name=AXIS, ignore_index=IGNORE, reduction="mean"
        )

    return jax.shard_map(local, mesh=mesh, in_specs=(P(), P(None, AXIS), P()), out_specs=P())


def replicate_the_rest(module: nnx.Module, mesh: Mesh) -> None:
    """Puts every array of ``module`` that is not yet placed on a mesh on all its devices."""
    replicated = NamedSharding(mesh, P())
    state = nnx.state(module)
    placed = jax.tree.map(
        lambda x: x if isinstance(x.sharding, NamedSharding) else jax.device_put(x, replicated),
        state,
    )
    nnx.update(module, placed)


def build(args: argparse.Namespace, mesh: Mesh | None, steps: int):
    """The model, its optimizer (AdamW, warm-up then cosine decay), and the jitted steps."""
    model = create_model(args.width, args.heads, args.layers, args.context, args.seed)
    if mesh is not None:
        # The output kernel's columns split over the devices, every other parameter on all.
        model.kernel[...] = jax.device_put(model.kernel[...], NamedSharding(mesh, P(None, AXIS)))
        replicate_the_rest(model, mesh)
    schedule = optax.warmup_cosine_decay_schedule(
        0.0, args.lr, min(100, steps // 10 + 1), max(steps, 2), end_value=args.lr / 10
    )
    optimizer = nnx.Optimizer(model, optax.adamw(schedule, weight_decay=0.01), wrt=nnx.Param)
    if mesh is not None:
        # Adam's moments follow their parameters; its step counters go on every device
        # too, where the compiled step puts them (else the second step compiles again).
        replicate_the_rest(optimizer, mesh)
    loss_of = make_loss(mesh)

    def loss_fn(model: CharTransformer, inputs, labels):
        return loss_of(model.hidden(inputs), model.kernel[...], labels)

    @nnx.jit
    def train_step(model, optimizer, inputs, labels):
        loss, grads = nnx.value_and_grad(loss_fn)(model, inputs, labels)
        optimizer.update(model, grads)
        return loss

    @nnx.jit
    def eval_loss(model, inputs, labels):
        return loss_fn(model, inputs, labels)

    return model, optimizer, train_step, eval_loss


def sample(model: CharTransformer, prompt: str, context: int, temperature: float, seed: int) -> str:
    """Continues ``prompt`` to ``context`` characters, one sampled character at a time."""
    logits_at = nnx.jit(lambda model, tokens: model.logits(tokens[None])[0])
    tokens = np.full(context, PAD, np.int32)
    start = encode(prompt)
    tokens[: len(start)] = start
    key = jax.random.PRNGKey(seed)
    for t in range(len(start), context):
        key, sub = jax.random.split(key)
        logits = logits_at(model, jnp.asarray(tokens))[t - 1]
        tokens[t] = int(jax.random.categorical(sub, logits / temperature))
    return "".join(map(chr, tokens))


# -- training --------------------------------------------------------------


def train(args: argparse.Namespace) -> dict[str, Any]:
    """Trains for ``args.steps`` steps; returns the loss curves and a sample."""
    mesh = None
    if args.devices > 1:
        if jax.device_count() < args.devices:
            raise RuntimeError(
                f"char_lm: --devices {args.devices} needs {args.devices} devices, jax has "
                f"{jax.device_count()}; set XLA_FLAGS=--xla_force_host_platform_device_count="
                f"{args.devices} before jax starts (the command-line flag does it when it can)"
            )
        if VOCAB % args.devices or args.batch % args.devices:
            raise ValueError(
                f"char_lm: --devices must divide the vocabulary ({VOCAB}) and --batch "
                f"({args.batch}), got {args.devices}"
            )
        mesh = Mesh(np.array(jax.devices()[: args.devices]), (AXIS,))

    train_rows = rows_of_lines(read_stdlib(TRAIN_FILES), args.context + 1)
    held_inputs, held_labels = inputs_and_labels(
        rows_of_lines(read_stdlib(HELD_OUT_FILES), args.context + 1)[: args.eval_rows]
    )
    model, optimizer, train_step, eval_loss = build(args, mesh, args.steps)
    batch_sharding = None if mesh is None else NamedSharding(mesh, P(AXIS))
    rng = np.random.default_rng(args.seed)

    losses: list[float] = []
    eval_steps: list[int] = []
    eval_losses: list[float] = []
    columns = (
        TextColumn("[progress.description]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("loss {task.fields[loss]:.3f}"),
        TimeElapsedColumn(),
    )
    start = time.perf_counter()
    with Progress(*columns, disable=not args.progress) as progress:
        label = f"training on {args.devices} device{'s' * (args.devices > 1)}"
        task = progress.add_task(label, total=args.steps, loss=float("nan"))
        for step in range(args.steps):
            if args.eval_every and step % args.eval_every == 0:
                eval_steps.append(step)
                eval_losses.append(float(eval_loss(model, held_inputs, held_labels)))
            inputs, labels = inputs_and_labels(
                train_rows[rng.integers(len(train_rows), size=args.batch)]
            )
            if batch_sharding is not None:
                inputs, labels = jax.device_put((inputs, labels), batch_sharding)
            losses.append(float(train_step(model, optimizer, inputs, labels)))
            progress.update(task, advance=1, loss=losses[-1])
    seconds = time.perf_counter() - start
    if args.eval_every:
        eval_steps.append(args.steps)
        eval_losses.append(float(eval_loss(model, held_inputs, held_labels)))

    text = sample(model, "def ", args.context, 0.8, args.seed) if args.sample else ""
    padded = float(np.mean(train_rows < 0))
    tail = max(1, args.steps // 10)
    return {
        "devices": args.devices,
        "steps": args.steps,
        "losses": losses,
        "eval_steps": eval_steps,
        "eval_losses": eval_losses,
        "first_loss": losses[0],
        "final_loss": float(np.mean(losses[-tail:])),
        "padding_fraction": padded,
        "train_characters": int(np.sum(train_rows >= 0)),
        "parameters": int(sum(x.size for x in jax.tree.leaves(nnx.state(model, nnx.Param)))),
        "seconds": seconds,
        "sample": text,
    }


def plot(result: dict[str, Any], path: Path, args: argparse.Namespace) -> None:
    """The training loss (each step, and a running mean) and the held-out loss against the step."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    losses = np.asarray(result["losses"])
    window = max(1, len(losses) // 30)
    running = np.convolve(losses, np.ones(window) / window, mode="valid")
    fig, ax = plt.subplots(figsize=(6.4, 3.6), dpi=100)
    ax.plot(losses, color="0.75", lw=0.8, label="training batch")
    ax.plot(
        np.arange(window - 1, len(losses)), running, color="C0", label=f"running mean of {window}"
    )
    ax.plot(
        result["eval_steps"],
        result["eval_losses"],
        "o-",
        color="C1",
        ms=3,
        label="held out: calendar.py, colorsys.py",
    )
    ax.axhline(math.log(VOCAB), color="0.5", ls=":", lw=0.8, label="log 128 (uniform)")
    ax.set_xlabel("step")
    ax.set_ylabel("loss (nats per character)")
    ax.set_title(
        f"char-level transformer on Python's stdlib, {result['devices']} device(s): "
        f"{args.layers} layers, width {args.width}, {result['parameters']:,} parameters",
        fontsize=8,
    )
    ax.set_ylim(0, math.log(VOCAB) + 0.5)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)


def simulate_cpu_devices(count: int) -> None:
    """Asks JAX for ``count`` CPU devices; possible only before its first operation."""
    try:
        jax.config.update("jax_num_cpu_devices", count)
    except RuntimeError:
        pass  # JAX has started: train() reports the devices it has, if too few.


def parse(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--devices",
        type=int,
        default=1,
        help="train vocab-parallel on this many devices (CPU devices are simulated)",
    )
    parser.add_argument("--steps", type=int, default=600)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--context", type=int, default=128)
    parser.add_argument("--width", type=int, default=128)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument(
        "--eval-every", type=int, default=50, help="steps between held-out evaluations; 0 for none"
    )
    parser.add_argument("--eval-rows", type=int, default=256, help="held-out rows to evaluate")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--plot",
        default="char_lm_loss.png",
        help="where to write the loss curve (PNG); '' for none",
    )
    parser.add_argument(
        "--no-sample",
        dest="sample",
        action="store_false",
        help="skip sampling text from the trained model",
    )
    parser.add_argument("--no-progress", dest="progress", action="store_false")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    args = parse(argv)
    if args.devices > 1:
        simulate_cpu_devices(args.devices)
    result = train(args)
    print(
        f"{result['steps']} steps on {result['devices']} device(s), {result['seconds']:.0f} s: "
        f"loss {result['first_loss']:.3f} -> {result['final_loss']:.3f} nats per character; "
        f"{result['padding_fraction']:.1%} of the positions are padding (ignore_index)"
    )
    if result["eval_losses"]:
        held = result["eval_losses"]
        print(f"held-out loss {held[0]:.3f} -> {held[-1]:.3f} (calendar.py, colorsys.py)")
    if result["sample"]:
        print("sample:\n" + result["sample"])
    if args.plot:
        plot(result, Path(args.plot), args)
        print(f"loss curve: {args.plot}")
    return result


if __name__ == "__main__":
    sys.exit(0 if main() else 1)
