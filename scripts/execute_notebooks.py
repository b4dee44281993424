"""Execute the book's notebooks in parallel into the build's jupyter-cache.

    python scripts/execute_notebooks.py [--cache _build/.jupyter_cache] [--timeout 300] NB...

jupyter-book executes the notebooks of a build one after another. This script runs the
ones whose code changed since they were last cached, as many at a time as there are CPU
cores, each in its own folder (as the build does: ``run_in_temp: false``). The build then
finds them in the cache and only renders them. A notebook that fails is not cached: the
build executes it again and reports the error with its traceback. Exit status 0 either
way; the build is what fails.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time

from jupyter_cache import get_cache
from jupyter_cache.executors import load_executor


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("notebooks", nargs="+")
    parser.add_argument("--cache", default="_build/.jupyter_cache")
    parser.add_argument("--timeout", type=int, default=300, help="seconds per cell")
    args = parser.parse_args(argv)

    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    logger = logging.getLogger("execute_notebooks")
    cache = get_cache(args.cache)
    records = [cache.add_nb_to_project(path) for path in args.notebooks]
    todo = cache.list_unexecuted(filter_pks=[r.pk for r in records])
    print(f"{len(todo)} of {len(records)} notebooks to execute "
          f"({len(records) - len(todo)} cached)", flush=True)
    if not todo:
        return 0
    start = time.perf_counter()
    executor = load_executor("local-parallel", cache=cache, logger=logger)
    result = executor.run_and_cache(filter_pks=[r.pk for r in todo], timeout=args.timeout,
                                    allow_errors=False)
    print(f"executed {len(result.succeeded)} in {time.perf_counter() - start:.0f} s; "
          f"failed (the build reruns and reports them): "
          f"{sorted(result.excepted + result.errored)}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
