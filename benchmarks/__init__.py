"""fl-sim's benchmarks, run from the checkout's root with ``python -m benchmarks NAME [--smoke] [options]``.

A benchmark is a module here with:

``__doc__``              first line: the one-line description ``python -m benchmarks`` lists; then the question
                         it answers, its full command and what it prints
``SMOKE``                the arguments ``--smoke`` adds: the tiny zoo at toy sizes, well under a minute
                         (``{tmp}`` in them is a fresh temporary folder)
``add_arguments(ap)``    its options, on an ``argparse.ArgumentParser``
``run(args)``            the benchmark; a non-zero int return is its exit status

What several benchmarks share is in ``benchmarks/lib.py``. Models and datasets come from the cache
``$FL_SIM_CACHE`` names (default ``~/.cache/fl-sim``), as for ``fl-sim`` itself.
"""

import importlib

# the smoke order
BENCHMARKS = ("startup", "compression", "scale", "cloud", "cost_curves", "hardware", "model_size", "regions",
              "user_data")


def load(name: str):
    """The benchmark module ``name``."""
    if name not in BENCHMARKS:
        raise KeyError(name)
    return importlib.import_module(f"benchmarks.{name}")


def description(name: str) -> str:
    """The first line of the benchmark's docstring, less its ``Title:`` when that is the name."""
    line = (load(name).__doc__ or "").strip().splitlines()[0]
    title, _, rest = line.partition(": ")
    return rest[:1].upper() + rest[1:] if rest and title.lower().replace(" ", "_") == name else line
