"""``python -m bench [--device cpu|cuda] [--quick] [--only ROW] [--out bench/out/results.json]``.

Runs the rows in order (prefix reuse last), prints one table and writes the rows as JSON.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import subprocess
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path

import torch

from bench import fisher, memory, prefix_reuse, pruning, sweep_overhead, threads_under_load, trial_speed
from bench.common import REPO, REPORTED, Row, Settings, default_data_root, ray_env, unavailable

# row module -> its run(settings); explicit, in the order they run (prefix reuse last)
ROWS: dict[str, Callable[..., list[Row]]] = {
    "trial_speed": trial_speed.run,
    "fisher": fisher.run,
    "threads_under_load": threads_under_load.run,
    "sweep_overhead": sweep_overhead.run,
    "memory": memory.run,
    "pruning": pruning.run,  # the longest: 24-trial sweeps with and without --prune (~1 h in full mode)
    "prefix_reuse": prefix_reuse.run,
}
RAY_ROWS = ("sweep_overhead", "memory", "pruning", "prefix_reuse")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[0])
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu", help="where everything runs (default: cpu)")
    parser.add_argument("--quick", action="store_true", help="smoke mode: subsampled, well under a minute")
    parser.add_argument("--only", action="append", choices=list(ROWS), metavar="ROW",
                        help=f"run only this row (repeatable): {', '.join(ROWS)}")
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "out" / "results.json", help="JSON output")
    parser.add_argument("--data-root", type=Path, default=None,
                        help="MNIST in torchvision's layout (default: $SWEEP_DATA_ROOT, else ../shared/data)")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads of the timed runs (default: 1, "
                        "what a sweep trial with --cpus-per-trial 1 gets)")
    parser.add_argument("--keep", action="store_true", help="keep the temporary studies under bench/out/work")
    parser.add_argument("--no-all-cores", dest="all_cores", action="store_false",
                        help="skip the trial rows' extra runs with torch on every core (a machine shared with other "
                             "jobs; the threads_under_load row runs on every core regardless)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        print("--device cuda: no CUDA device is visible to torch here", file=sys.stderr)
        return 2
    data_root = (args.data_root or default_data_root()).resolve()
    settings = Settings(device=args.device, quick=args.quick, data_root=data_root, threads=args.threads, keep=args.keep,
                        all_cores=args.all_cores)
    torch.set_num_threads(settings.threads)
    os.environ.setdefault("SWEEP_DATA_ROOT", str(settings.data_root))
    selected = args.only or list(ROWS)
    meta = _meta(settings)
    started = time.perf_counter()
    # torch imports its compiler stack (torch._dynamo, ~2 s) at the first optimizer: once per process, not timed
    torch.optim.Adam([torch.zeros(1, requires_grad=True)])

    shared_ray = settings.quick and any(name in RAY_ROWS for name in selected)
    if shared_ray:  # the smoke mode pays Ray's start-up once for all three Ray rows
        import ray

        ray_env()
        ray.init(address="local", num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False,
                 configure_logging=True, logging_level="ERROR")
    rows: list[Row] = []
    try:
        for name in selected:
            print(f"[bench] {name} ...", file=sys.stderr, flush=True)
            row_started = time.perf_counter()
            try:
                rows.extend(ROWS[name](settings))
            except Exception as err:  # one broken row must not hide the others
                traceback.print_exc()
                rows.append(unavailable(name, "", "", "", "==", 0.0, "", f"{type(err).__name__}: {err}", "error"))
            print(f"[bench] {name} done in {time.perf_counter() - row_started:.1f}s", file=sys.stderr, flush=True)
    finally:
        if shared_ray:
            import ray

            ray.shutdown()
    meta.update(seconds=time.perf_counter() - started, load_average_end=list(os.getloadavg()))
    print(format_table(rows))
    write_json(args.out, {"meta": meta, "rows": [row.to_json() for row in rows]})
    print(f"\nwritten: {args.out}")
    return 0


def _meta(settings: Settings) -> dict:
    import ray

    try:
        sha = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True,
                             timeout=5).stdout.strip()
        dirty = bool(subprocess.run(["git", "status", "--porcelain", "sweep"], cwd=REPO, capture_output=True,
                                    text=True, timeout=5).stdout.strip())
    except (OSError, subprocess.SubprocessError):
        sha, dirty = "", False
    return {"date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"), "git": sha, "sweep_dirty": dirty,
            "device": settings.device, "quick": settings.quick, "threads": settings.threads,
            "cpu": platform.processor() or platform.machine(), "cpus": os.cpu_count(),
            "cuda": torch.cuda.get_device_name(0) if settings.device == "cuda" else None,
            "torch": torch.__version__, "ray": ray.__version__, "python": platform.python_version(),
            "load_average_start": list(os.getloadavg()), "command": " ".join(["python -m bench", *sys.argv[1:]])}


def _num(value: float | None, unit: str = "") -> str:
    if value is None:
        return "-"
    if unit == "s":
        return f"{value:.2f} s" if value < 100 else f"{value:.0f} s"
    if unit in ("MB", "trials/min", "%"):
        return f"{value:.1f} {unit}"
    return f"{value:.3g}{(' ' + unit) if unit else ''}"


def _ratio(row: Row) -> str:
    if row.ratio is None:
        return "-"
    if row.ratio_label == "share lost":
        return f"{row.ratio:.1%} lost"
    if row.ratio_label == "share of the wall time":
        return f"{row.ratio:.1%} of wall"
    if row.ratio_label == "max relative error":
        return f"{row.ratio:.2g}"
    if "points" in row.ratio_label:
        return f"{row.ratio:.2f} pts"
    if row.ratio_label == "stds apart":  # the pruning row's choice: a gap in the choice's std over seeds
        return f"{row.ratio:.2f} std"
    digits = 3
    while digits < 7 and _rounds_across(row.ratio, float(f"{row.ratio:.{digits}g}"), row.target_value):
        digits += 1  # 1.7996 must not print as 1.8 next to a target of 1.8 and a FAIL
    return f"{row.ratio:.{digits}g}x"


def _rounds_across(value: float, shown: float, target: float) -> bool:
    """Whether ``shown`` sits on another side of ``target`` than ``value`` (equal counts as a side: 1.1503
    must not print as 1.15 beside a target of <= 1.15 and a FAIL)."""
    return (value > target) - (value < target) != (shown > target) - (shown < target)


def format_table(rows: list[Row]) -> str:
    header = ("row", "ours", "reference", "ratio", "target", "pass")
    lines = []
    for row in rows:
        target = row.target
        if row.checked is not None:
            target = f"{target} (got {row.checked:.3g})"
        verdict = {True: "PASS", False: "FAIL", None: row.status.upper()}[row.passed]
        if row.target_op == REPORTED and row.status == "ok":
            verdict = "REPORTED"
        lines.append((row.row, _num(row.ours, row.unit), _num(row.reference, row.unit), _ratio(row), target, verdict))
    widths = [max(len(str(cells[i])) for cells in [header, *lines]) for i in range(len(header))]
    out = [" | ".join(str(c).ljust(w) for c, w in zip(header, widths)),
           "-|-".join("-" * w for w in widths)]
    out += [" | ".join(str(c).ljust(w) for c, w in zip(cells, widths)) for cells in lines]
    return "\n".join(out)


def write_json(path: Path, data: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(data, indent=2, default=float, allow_nan=True))
    os.replace(tmp, path)


if __name__ == "__main__":
    sys.exit(main())
