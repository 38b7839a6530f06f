"""``python -m symbolic`` (``jaxsce-derive``): print the derivations; ``--check`` compares.

``--check`` also evaluates every formula against jaxsce and JAX autodiff.
"""

from __future__ import annotations

import argparse
import sys


def main(argv: list[str] | None = None) -> int:
    """Derive, prove and print; return 0 when every proof and every check passes."""
    parser = argparse.ArgumentParser(prog="jaxsce-derive", description=__doc__)
    parser.add_argument("--format", choices=("text", "markdown", "latex"), default="text")
    parser.add_argument("--output", "-o", help="write to this file instead of stdout")
    parser.add_argument(
        "--check",
        action="store_true",
        help="also compare every formula with jaxsce and JAX autodiff",
    )
    parser.add_argument(
        "--fresh",
        action="store_true",
        help="derive and compile everything again instead of reusing the proofs and the "
        "compiled checks of an earlier run of the same source (kept under "
        "~/.cache/jaxsce-symbolic)",
    )
    args = parser.parse_args(argv)

    import os

    if args.check and "xla_backend_optimization_level" not in os.environ.get("XLA_FLAGS", ""):
        # The check programs run a few times on a few dozen numbers: LLVM's optimisation,
        # most of their compile time, would never pay for itself. Level 0 still computes
        # IEEE float64 (no fast-math), so the errors stay ~1e-16. Read when JAX starts.
        os.environ["XLA_FLAGS"] = (
            os.environ.get("XLA_FLAGS", "") + " --xla_backend_optimization_level=0"
        ).strip()

    from symbolic import _render
    from symbolic._all import TEXTBOOK, cache_dir, derive_all

    if args.check and not args.fresh:
        # XLA's compiled checks are kept on disk too (JAX keys them by program and version).
        import jax

        jax.config.update("jax_compilation_cache_dir", str(cache_dir() / "xla"))
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
        jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)

    programs = None

    def progress(derived):
        # The pool has forked: JAX may start. Trace the textbook checks and compile them
        # while the workers derive the library's algorithms.
        nonlocal programs
        if args.check and len(derived) == TEXTBOOK:
            from symbolic._check import Programs

            programs = Programs()
            programs.add(derived)
            programs.start_textbook()

    # Nothing has started JAX yet, so sympy may fork: two processes halve the derivation.
    derivations = derive_all(
        cache=not args.fresh, processes=min(2, os.cpu_count() or 1), progress=progress
    )
    render = {
        "text": _render.render_text,
        "markdown": _render.render_markdown,
        "latex": _render.render_latex,
    }[args.format]
    doc = render(derivations)
    ok = all(dv.ok for dv in derivations)
    if args.check:
        from symbolic._check import check_all, format_table

        rows = check_all(derivations, programs)
        doc += "\n" + format_table(rows, markdown=args.format != "text")
        ok = ok and all(row.ok for row in rows)
    if args.output:
        with open(args.output, "w", encoding="utf-8") as f:
            f.write(doc)
    else:
        sys.stdout.write(doc)
    print(
        ("all proofs hold" if ok else "FAILED")
        + (" and all checks pass" if ok and args.check else ""),
        file=sys.stderr,
    )
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
