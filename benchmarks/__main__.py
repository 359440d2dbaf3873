"""Benchmark runner: `python -m benchmarks [--quick] [--device cpu|cuda] [--ops ...]`.

Each bench_<name>.py module offers `run(device, quick, progress) -> record` and `markdown(record)`. A full run
writes benchmarks/results/<name>-<device>.json and rewrites the generated part of benchmarks/RESULTS.md from
every JSON file there. `--quick` (the default job's smoke run) measures less and writes only under --out
(runs/bench by default), leaving the recorded results alone.

Every figure comes with its spread over repeats, ratios from interleaved repeats (benchmarks/_timing.py). On
CPU the benchmarks run on one thread unless --threads says otherwise. The load average is read before and after
each benchmark; a loaded machine is warned about on stderr and recorded in the JSON and RESULTS.md.
"""
import argparse
import datetime
import json
import platform
import re
import sys
from pathlib import Path
from typing import List, Optional

import torch
from tqdm import tqdm

from benchmarks import (bench_integrators, bench_kale_loss, bench_mlp_potential, bench_peers, bench_samplers,
                        bench_train_step)
from benchmarks._timing import SPREAD_LEGEND, cell, load_warning, machine_load
from benchmarks.floors import copy_gbps

HERE = Path(__file__).resolve().parent
RESULTS_DIR = HERE / "results"
RESULTS_MD = HERE / "RESULTS.md"
BEGIN, END = "<!-- generated:begin -->", "<!-- generated:end -->"
BENCHES = {"kale_loss": bench_kale_loss, "integrators": bench_integrators, "mlp_potential": bench_mlp_potential,
           "samplers": bench_samplers, "train_step": bench_train_step}
# Opt-in: needs the optional dependencies of benchmarks/requirements-peers.txt (JAX, BlackJAX, NumPyro, ArviZ).
OPT_IN_BENCHES = {"peers": bench_peers}
ALL_BENCHES = {**BENCHES, **OPT_IN_BENCHES}


def environment(device: torch.device) -> dict:
    try:
        import triton
        triton_version = triton.__version__
    except ImportError:
        triton_version = None
    threads = torch.get_num_threads()
    if device.type == "cuda":
        device_name = torch.cuda.get_device_name(device)
    else:
        device_name = f"{platform.processor() or platform.machine()} CPU, {threads} thread{'s' * (threads > 1)}"
    return dict(device=device.type, device_name=device_name, threads=threads, torch=torch.__version__,
                triton=triton_version, cuda=torch.version.cuda, python=platform.python_version(),
                date=datetime.datetime.now().isoformat(timespec="seconds"), copy_gbps=copy_gbps(device))


def run_with_load(op: str, device: torch.device, quick: bool, threads: int, options: Optional[dict] = None) -> dict:
    """One benchmark's record, with the machine load before and after it and the warnings that follow; options:
    keyword arguments of that benchmark's run (the peers' target_names)."""
    before = machine_load()
    with tqdm(desc=op, file=sys.stderr) as progress:
        record = ALL_BENCHES[op].run(device, quick, progress, **(options or {}))
    after = machine_load()
    warnings = [w for w in (load_warning(before["load_average"], before["cpus"], threads, "before"),
                            load_warning(after["load_average"], after["cpus"], threads, "after")) if w]
    for warning in warnings:
        print(f"WARNING ({op}): {warning}", file=sys.stderr)
    record["load"] = dict(before=before, after=after, warnings=warnings)
    return record


def render(record: dict) -> str:
    env = record["env"]
    copy = f", copy bandwidth {cell(env['copy_gbps'])} GB/s (read + written)" if env["copy_gbps"] else ""
    module = ALL_BENCHES[record["op"]]
    # records written before the load was recorded (the peers table of 2026-11-25) carry their own load line
    load = record.get("load")
    load_line = "" if load is None else (
        f" Load average {load['before']['load_average']:.2f} before, {load['after']['load_average']:.2f} after, "
        f"on {load['before']['cpus']} CPUs." + "".join(f"\n\n**Warning: {w}.**" for w in load["warnings"]))
    return (f"### {module.TITLE}, {env['device_name']}\n\n"
            f"{env['date']}; torch {env['torch']}, triton {env['triton']}, CUDA {env['cuda']}, "
            f"Python {env['python']}{copy}.{load_line}\n\n{module.markdown(record)}\n")


def update_results_md() -> None:
    sections = [render(json.loads(p.read_text())) for p in sorted(RESULTS_DIR.glob("*.json"))]
    text = RESULTS_MD.read_text()
    generated = f"{BEGIN}\n\n" + "\n".join(sections) + f"\n{END}"
    RESULTS_MD.write_text(re.sub(f"{BEGIN}.*{END}", lambda _: generated, text, flags=re.S))


def main(argv: List[str] = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--ops", nargs="+", default=list(BENCHES), choices=list(ALL_BENCHES),
                        help=f"default: {' '.join(BENCHES)}; opt-in: {' '.join(OPT_IN_BENCHES)}")
    parser.add_argument("--quick", action="store_true", help="fewer sizes, short budgets, nothing recorded")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch CPU threads (default 1: CPU comparisons on one thread, less exposed to load; "
                             "other counts are recorded apart, in results/<op>-cpu-<n>threads.json)")
    parser.add_argument("--out", type=Path, default=Path("runs/bench"), help="where --quick writes its JSON")
    parser.add_argument("--targets", nargs="+", choices=list(bench_peers.targets.TARGETS),
                        help="peers only: these targets (recorded apart, in results/peers-<targets>-<device>.json)")
    args = parser.parse_args(argv)
    if args.threads < 1:
        parser.error(f"--threads must be a positive integer, got {args.threads}")
    if args.targets and args.ops != ["peers"]:
        parser.error(f"--targets selects the peers benchmark's targets: give it with --ops peers alone, not {args.ops}")
    device = torch.device(args.device)
    previous_threads = torch.get_num_threads()
    torch.set_num_threads(args.threads)
    try:
        env = environment(device)
        print(f"{env['device_name']}; {SPREAD_LEGEND}\n")
        for op in args.ops:
            options = dict(target_names=args.targets) if args.targets else {}
            record = run_with_load(op, device, args.quick, args.threads, options)
            record.update(op=op, env=env)
            out_dir = args.out if args.quick else RESULTS_DIR
            out_dir.mkdir(parents=True, exist_ok=True)
            # a subset of targets or another thread count never overwrites the full one-thread record
            threads = [f"{args.threads}threads"] if device.type == "cpu" and args.threads != 1 else []
            stem = "-".join([op, *(args.targets or []), device.type, *threads])
            (out_dir / f"{stem}.json").write_text(json.dumps(record, indent=1))
            print(render(record))
    finally:
        torch.set_num_threads(previous_threads)
    if not args.quick:
        update_results_md()
        print(f"recorded in {RESULTS_DIR} and {RESULTS_MD}")


if __name__ == "__main__":
    main()
