"""``python -m bench``: run aiengine's benchmarks and print the results table.

``python -m bench`` runs all ten; ``python -m bench relay console`` runs
some, ``python -m bench peers`` the comparisons with redis-server, mosquitto,
nginx and paho-mqtt, ``python -m bench baselines`` the other five; ``--quick`` makes
every run smaller.  A full run writes the table to ``bench/results.md`` and
into ``bench/README.md``.  See ``bench/README.md`` for what each benchmark
measures.
"""

from __future__ import annotations

import argparse
import datetime
import json
import pstats
import re
import sys
import tempfile
import time
import traceback
from pathlib import Path

from bench import bridge, console, httpvia, latency, ping, pubsub, relay, scale, storm, web
from bench.harness import (ROOT, BenchError, Row, Settings, describeTree, exportCommit,
                           machine, raiseFileLimit, removeTree)

#: aiengine against baselines of its own (raw Twisted programs, reconnectionTimeout)
BASELINES = [module.NAME for module in (relay, console, scale, web, storm)]
#: aiengine against the servers users would deploy instead (redis-server,
#: mosquitto, nginx; installed with apt when missing), and its MQTT bridge
#: against a direct paho-mqtt pair through mosquitto
PEERS = [module.NAME for module in (pubsub, latency, ping, httpvia, bridge)]
#: ``python -m bench`` without names: all of them (about 4 minutes on 2 cores)
DEFAULT = BASELINES + PEERS
GROUPS = {"baselines": BASELINES, "peers": PEERS}
BENCHMARKS = {module.NAME: module for module in (relay, console, scale, web, storm,
                                                 pubsub, latency, ping, httpvia,
                                                 bridge)}
HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results.md"
README = HERE / "README.md"
START_MARK = "<!-- results:start -->"
END_MARK = "<!-- results:end -->"
#: lines of each profile listing
PROFILE_LINES = 15


def formatValue(value, unit) -> str:
    """A figure with its unit, for the table."""
    if value is None:
        return "-"
    if unit in ("s",):
        return f"{value:.2f} s"
    if unit == "ms":
        return f"{value:.1f} ms"
    if unit == "us":
        return f"{value:,.0f} us"
    if unit == "KiB":
        return f"{value:.1f} KiB"
    if unit.endswith("/s"):
        return f"{value:,.0f} {unit}"
    return f"{value:,.0f} {unit}".strip()


def verdict(row: Row) -> str:
    """PASS, FAIL, info, SKIP or ERROR."""
    if row.error:
        return "ERROR"
    if row.skipped:
        return "SKIP"
    if row.passed is None:
        return "info"
    return "PASS" if row.passed else "FAIL"


def table(rows) -> str:
    """The results as a Markdown table, then its notes and errors."""
    header = ("benchmark", "measure", "aiengine", "baseline", "ratio", "target", "result")
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    notes = []
    for row in rows:
        ratio = "-" if row.ratio is None else f"{row.ratio:.2f}"
        cells = (row.benchmark, row.measure, formatValue(row.aiengine, row.unit),
                 formatValue(row.baseline, row.unit), ratio, row.target, verdict(row))
        lines.append("| " + " | ".join(cells) + " |")
        if row.error:
            notes.append(f"- {row.benchmark}: error: {row.error}")
        elif row.skipped:
            notes.append(f"- {row.benchmark}, {row.measure}: skipped: {row.skipped}")
        elif row.note:
            notes.append(f"- {row.benchmark}, {row.measure}: {row.note}")
    return "\n".join(lines + ([""] + notes if notes else []))


def machineLine(info, started) -> str:
    """Date and machine of a run, one line."""
    load = f", load {info['load']:.2f} at start" if info.get("load") is not None else ""
    return (f"{started:%Y-%m-%d %H:%M} UTC; aiengine {info['aiengine']}; "
            f"{info['nproc']} CPUs ({info['platform']}), "
            f"Python {info['python']}, Twisted {info['twisted']}, lxml {info['lxml']}"
            f"{load}")


def save(text: str, info, started, seconds) -> None:
    """Write results.md and the results block of README.md."""
    block = (f"Latest full run: {machineLine(info, started)}; "
             f"took {seconds:.0f} s.\n\n{text}\n")
    RESULTS.write_text("# aiengine benchmark results\n\n" + block)
    if README.exists():
        readme = README.read_text()
        pattern = re.compile(re.escape(START_MARK) + ".*?" + re.escape(END_MARK), re.S)
        if pattern.search(readme):
            readme = pattern.sub(lambda m: f"{START_MARK}\n{block}{END_MARK}", readme)
            README.write_text(readme)


def runBenchmark(module, settings) -> list:
    """A benchmark's rows, or one error row when it could not finish."""
    try:
        return module.run(settings)
    except BenchError as e:
        return [Row(module.NAME, "-", error=str(e))]
    except Exception as e:
        traceback.print_exc()
        return [Row(module.NAME, "-", error=f"{type(e).__name__}: {e}")]


#: frames that only dispatch (twistd start-up, the reactor loop, log context):
#: they top every cumulative listing and say nothing about where time goes
_DISPATCH = re.compile(
    r"twisted/(scripts|application)/|twisted/python/(log|context)\.py$"
    r"|twisted/internet/(base|posixbase|epollreactor|pollreactor|selectreactor)\.py$"
    r"|/cProfile\.py$|/runpy\.py$|/bin/twistd$")


def _where(key, prefixes=()) -> str:
    filename, line, function = key
    if filename == "~":
        return function
    for prefix in sorted({str(ROOT), *map(str, prefixes), *sys.path}, key=len,
                         reverse=True):
        if prefix and filename.startswith(prefix.rstrip("/") + "/"):
            filename = filename[len(prefix.rstrip("/")) + 1:]
            break
    return f"{filename}:{line} {function}"


def profileReport(path: Path, tree: Path = ROOT) -> str:
    """The top functions of a cProfile file: by cumulative time (without the
    start-up and reactor frames that only dispatch) and by own time."""
    stats = pstats.Stats(str(path)).stats
    total = sum(tt for _, _, tt, _, _ in stats.values())
    lines = [f"{total:.2f} s of profiled time"]
    for title, order, skip in (
            ("cumulative (reactor and start-up frames left out)", 3, True),
            ("own time", 2, False)):
        lines += ["", f"-- top {PROFILE_LINES} by {title} --",
                  f"{'cumulative':>10} {'own':>8} {'calls':>9}  function"]
        chosen = []
        for key, entry in sorted(stats.items(), key=lambda item: -item[1][order]):
            if skip and (_DISPATCH.search(key[0]) or key[2] == "<module>"
                         or key[2] == "<built-in method builtins.exec>"):
                continue
            chosen.append((key, entry))
            if len(chosen) == PROFILE_LINES:
                break
        for key, (_, calls, own, cumulative, _) in chosen:
            where = _where(key, (tree,))
            lines.append(f"{cumulative:10.3f} {own:8.3f} {calls:9d}  {where}")
    return "\n".join(lines)


def profile(module, settings) -> None:
    """Run a benchmark's daemon under cProfile once and print the top functions."""
    path = settings.workdir / f"{module.NAME}.prof"
    print(f"\n## profile of the daemon: {module.NAME}\n", flush=True)
    try:
        module.profile(settings, path)
    except Exception as e:
        print(f"(profiled run failed: {e})")
    if path.exists():
        print(profileReport(path, settings.tree))
        print(f"(statistics in {path})")


def parseArguments(argv):
    parser = argparse.ArgumentParser(
        prog="python -m bench", description="Run aiengine's benchmarks.")
    parser.add_argument("benchmarks", nargs="*", metavar="BENCHMARK",
                        help=f"which to run: {', '.join(BENCHMARKS)}, or a group: "
                             f"baselines ({', '.join(BASELINES)}), peers "
                             f"({', '.join(PEERS)}); default: all")
    parser.add_argument("--quick", action="store_true",
                        help="smaller runs and fewer repetitions (about a minute)")
    parser.add_argument("--reps", type=int, help="repetitions of each measurement")
    parser.add_argument("--profile", action="store_true",
                        help="profile the daemon of each benchmark that misses a target")
    parser.add_argument("--profile-all", action="store_true",
                        help="profile the daemon of every benchmark run")
    parser.add_argument("--commit", metavar="REV",
                        help="measure aiengine as of this git revision (extracted with "
                             "git archive) instead of the working tree")
    parser.add_argument("--keep", action="store_true",
                        help="keep the work directory (media.xml files, logs)")
    parser.add_argument("--json", metavar="FILE", help="also write every figure as JSON")
    args = parser.parse_args(argv)
    unknown = [name for name in args.benchmarks
               if name not in BENCHMARKS and name not in GROUPS]
    if unknown:
        parser.error(f"unknown benchmark {', '.join(unknown)}; "
                     f"choose from {', '.join(BENCHMARKS)} or {', '.join(GROUPS)}")
    return args


def chosen(names) -> list:
    """The benchmarks named, groups expanded, each once; the default set for none."""
    out = []
    for name in names or DEFAULT:
        for one in GROUPS.get(name, [name]):
            if one not in out:
                out.append(one)
    return out


def main(argv=None) -> int:
    """Run, print the table, save it after a full run; 1 if a benchmark failed to run."""
    args = parseArguments(sys.argv[1:] if argv is None else argv)
    names = chosen(args.benchmarks)
    raiseFileLimit()
    workdir = Path(tempfile.mkdtemp(prefix="aiengine-bench-"))
    settings = Settings(quick=args.quick, reps=args.reps, workdir=workdir)
    commit = None
    if args.commit:
        settings.tree = workdir / "tree"
        try:
            commit = exportCommit(args.commit, settings.tree)
        except BenchError as e:
            print(f"python -m bench: {e}", file=sys.stderr)
            return 2
    info = machine()
    info["aiengine"] = describeTree(settings.tree, commit)
    started = datetime.datetime.now(datetime.timezone.utc)
    began = time.monotonic()
    print(f"aiengine benchmarks{' (quick)' if args.quick else ''}: "
          f"{machineLine(info, started)}", file=sys.stderr, flush=True)
    rows = []
    try:
        for name in names:
            print(f"{name} ...", file=sys.stderr, flush=True)
            t0 = time.monotonic()
            rows.extend(runBenchmark(BENCHMARKS[name], settings))
            print(f"{name}: {time.monotonic() - t0:.0f} s", file=sys.stderr, flush=True)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
    seconds = time.monotonic() - began
    text = table(rows)
    print()
    print(text)
    print(f"\n({seconds:.0f} s; work directory {workdir})")
    errors = any(row.error for row in rows)
    if names == DEFAULT and not args.quick and len(
            {row.benchmark for row in rows}) == len(DEFAULT):
        save(text, info, started, seconds)
        print(f"(written to {RESULTS} and {README})")
    if args.json:
        Path(args.json).write_text(json.dumps(
            {"machine": info, "started": started.isoformat(), "seconds": seconds,
             "quick": args.quick, "rows": [row.__dict__ for row in rows]},
            indent=2, default=str))
    for name in names:
        missed = any(row.passed is False for row in rows if row.benchmark == name)
        if args.profile_all or (args.profile and missed):
            profile(BENCHMARKS[name], settings)
    if errors or args.keep or args.profile or args.profile_all:
        print(f"(kept {workdir})")
    else:
        removeTree(workdir)
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
