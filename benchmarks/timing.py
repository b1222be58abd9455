"""Small helpers shared by the benchmark scripts: best-of-N timing and writing a report."""

from __future__ import annotations

import os
import time


def best_time(fn, repeat: int = 3) -> float:
    """The shortest wall time of ``repeat`` calls of ``fn`` (seconds): the least disturbed run."""
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def write_report(lines, path: str) -> str:
    """Print the report and write it to ``path`` (folders created); returns its text."""
    text = "\n".join(lines) + "\n"
    print(text)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w") as fh:
        fh.write(text)
    return text


def target_lines(targets, title: str = "Target") -> list:
    """A report's target table, from (target, measured, met) rows: markdown lines."""
    lines = ["", f"## {title}", "", "| target | measured | |", "|---|---|---|"]
    lines += [f"| {target} | {measured} | {'met' if ok else '**not met**'} |" for target, measured, ok in targets]
    return lines
