"""CPU time of the ``lookalike`` entry point before it does any work: ``--help``, ``<cmd> --help``, ``--version``.

Each command line runs ``--repeats`` times in a fresh interpreter (user + system CPU of the child, and the
heavy libraries it loaded); medians are printed side by side with another checkout when ``--against`` names
one (for example the release before the lazy imports):

    python benchmarks/cli_startup.py --against /tmp/lookalike-0.1:console.cli:main
    python benchmarks/cli_startup.py --quick
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
from pathlib import Path

import polars as pl
from common import write_and_show

REPO = Path(__file__).resolve().parents[1]
HERE = f"{REPO}:console.cli.main:main"
COMMAND_LINES = (["--help"], ["--version"], ["search", "--help"], ["ingest", "--help"], ["train", "--help"], ["info", "--help"])
HEAVY = ("torch", "timm", "lancedb", "sklearn", "faiss", "matplotlib")
# the child: the checkout first on sys.path, the entry point called as the console script calls it
CHILD = """
import sys, json, contextlib, io
repo, module, function, argv, heavy = sys.argv[1], sys.argv[2], sys.argv[3], json.loads(sys.argv[4]), json.loads(sys.argv[5])
sys.path.insert(0, repo)
entry = getattr(__import__(module, fromlist=[function]), function)
with contextlib.redirect_stdout(io.StringIO()):
    try:
        entry(argv)
    except SystemExit:
        pass
print(json.dumps(sorted(m for m in heavy if m in sys.modules)), file=sys.stderr)
"""


def cpu_seconds(target: str, argv: list[str]) -> tuple[float, list[str]]:
    """CPU seconds (user + system) of one run of ``argv`` against ``target`` (``repo:module:function``)."""
    repo, module, function = target.split(":")
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    done = subprocess.run([sys.executable, "-c", CHILD, repo, module, function, json.dumps(argv), json.dumps(HEAVY)],
                          capture_output=True, text=True, check=True, cwd=repo)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    loaded = json.loads(done.stderr.strip().splitlines()[-1])
    return (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime), loaded


def main(argv: list[str] | None = None) -> pl.DataFrame:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--against", help="another checkout, as REPO:MODULE:FUNCTION of its entry point")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "cli_startup.csv")
    parser.add_argument("--quick", action="store_true", help="two repeats, no CSV")
    args = parser.parse_args(argv)
    repeats = 2 if args.quick else args.repeats
    targets = {"this checkout": HERE, **({"against": args.against} if args.against else {})}
    rows = []
    for command in COMMAND_LINES:
        row: dict[str, object] = {"command": "lookalike " + " ".join(command)}
        for label, target in targets.items():
            runs = [cpu_seconds(target, command) for _ in range(repeats)]
            row[f"{label} cpu_s"] = round(statistics.median(seconds for seconds, _ in runs), 3)
            row[f"{label} heavy imports"] = ",".join(runs[-1][1]) or "-"
        if args.against:
            row["ratio"] = round(float(row["against cpu_s"]) / max(float(row["this checkout cpu_s"]), 1e-3), 1)
        rows.append(row)
        print(row, flush=True)
    return write_and_show(pl.DataFrame(rows), None if args.quick else args.out, 60)


if __name__ == "__main__":
    main()
