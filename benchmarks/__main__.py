"""Benchmark runner: `python -m benchmarks [--quick] [--device cpu|cuda] [--ops ...]`.

Each bench_<name>.py module offers `run(device, quick, progress) -> record` and `markdown(record)`. A full run
writes benchmarks/results/<name>-<device>.json and rewrites the generated part of benchmarks/RESULTS.md from
every JSON file there. `--quick` (the default job's smoke run) measures less and writes only under --out
(runs/bench by default), leaving the recorded results alone.
"""
import argparse
import datetime
import json
import platform
import re
from pathlib import Path
from typing import List

import torch
from tqdm import tqdm

from benchmarks import bench_integrators, bench_kale_loss, bench_peers, bench_samplers, bench_train_step
from benchmarks._timing import copy_bandwidth_gbps

HERE = Path(__file__).resolve().parent
RESULTS_DIR = HERE / "results"
RESULTS_MD = HERE / "RESULTS.md"
BEGIN, END = "<!-- generated:begin -->", "<!-- generated:end -->"
BENCHES = {"kale_loss": bench_kale_loss, "integrators": bench_integrators, "samplers": bench_samplers,
           "train_step": bench_train_step}
# Opt-in: needs the optional dependencies of benchmarks/requirements-peers.txt (JAX, BlackJAX, NumPyro, ArviZ).
OPT_IN_BENCHES = {"peers": bench_peers}
ALL_BENCHES = {**BENCHES, **OPT_IN_BENCHES}


def environment(device: torch.device) -> dict:
    try:
        import triton
        triton_version = triton.__version__
    except ImportError:
        triton_version = None
    if device.type == "cuda":
        device_name = torch.cuda.get_device_name(device)
    else:
        device_name = f"{platform.processor() or platform.machine()} CPU, {torch.get_num_threads()} threads"
    return dict(device=device.type, device_name=device_name, torch=torch.__version__, triton=triton_version,
                cuda=torch.version.cuda, python=platform.python_version(),
                date=datetime.date.today().isoformat(), copy_gbps=copy_bandwidth_gbps(device))


def render(record: dict) -> str:
    env = record["env"]
    copy = f", copy bandwidth {env['copy_gbps']:.0f} GB/s" if env["copy_gbps"] else ""
    module = ALL_BENCHES[record["op"]]
    return (f"### {module.TITLE}, {env['device_name']}\n\n"
            f"{env['date']}; torch {env['torch']}, triton {env['triton']}, CUDA {env['cuda']}, "
            f"Python {env['python']}{copy}. Medians after warm-up.\n\n{module.markdown(record)}\n")


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
    parser.add_argument("--out", type=Path, default=Path("runs/bench"), help="where --quick writes its JSON")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    env = environment(device)
    for op in args.ops:
        with tqdm(desc=f"{op} on {env['device_name']}") as progress:
            record = ALL_BENCHES[op].run(device, args.quick, progress)
        record.update(op=op, env=env)
        out_dir = args.out if args.quick else RESULTS_DIR
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / f"{op}-{device.type}.json").write_text(json.dumps(record, indent=1))
        print(render(record))
    if not args.quick:
        update_results_md()
        print(f"recorded in {RESULTS_DIR} and {RESULTS_MD}")


if __name__ == "__main__":
    main()
