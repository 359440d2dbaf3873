"""Benchmark runner: `python -m benchmarks [--quick] [--device cpu|cuda]`.

A full run writes benchmarks/results/<op>-<device>.json and rewrites the generated part of
benchmarks/RESULTS.md from every JSON file there. `--quick` (the default job's smoke run) measures a few
sizes and writes only under --out (runs/bench by default), leaving the recorded results alone.
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

from benchmarks import bench_kale_loss
from benchmarks._timing import copy_bandwidth_gbps

HERE = Path(__file__).resolve().parent
RESULTS_DIR = HERE / "results"
RESULTS_MD = HERE / "RESULTS.md"
BEGIN, END = "<!-- generated:begin -->", "<!-- generated:end -->"
BENCHES = {"kale_loss": bench_kale_loss}


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


def markdown_table(record: dict) -> str:
    """One row per size: each implementation's median, the best fused one's speedups, bandwidth and memory."""
    rows = record["rows"]
    impls = list(dict.fromkeys(r["impl"] for r in rows))
    fused = [i for i in impls if i.startswith("fused:")]
    header = ["N", *[f"{i} ms" for i in impls], "eager / fused", "compiled / fused", "fused GB/s"]
    if record["env"]["copy_gbps"]:
        header.append("% of copy")
    header.append("fused peak extra MiB")
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for n in sorted({r["n"] for r in rows}):
        by_impl = {r["impl"]: r for r in rows if r["n"] == n}
        best = min((by_impl[i] for i in fused if i in by_impl), key=lambda r: r["median_ms"])
        cells = [f"2^{n.bit_length() - 1}", *[f"{by_impl[i]['median_ms']:.4f}" if i in by_impl else "" for i in impls]]
        cells += [f"{by_impl['eager']['median_ms'] / best['median_ms']:.2f}x",
                  f"{by_impl['compiled']['median_ms'] / best['median_ms']:.2f}x" if "compiled" in by_impl else "",
                  f"{best['gbps']:.1f}"]
        if record["env"]["copy_gbps"]:
            cells.append(f"{100 * best['gbps'] / record['env']['copy_gbps']:.0f}%")
        peak = best["peak_extra_mib"]
        cells.append("n/a (CPU)" if peak is None else f"{peak:.2f}")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def render(record: dict) -> str:
    env = record["env"]
    copy = f", copy bandwidth {env['copy_gbps']:.0f} GB/s" if env["copy_gbps"] else ""
    return (f"### {record['op']} forward + backward, {record['dtype']}, {env['device_name']}\n\n"
            f"{env['date']}; torch {env['torch']}, triton {env['triton']}, CUDA {env['cuda']}, "
            f"Python {env['python']}{copy}. Medians after warm-up.\n\n{markdown_table(record)}\n")


def update_results_md() -> None:
    sections = [render(json.loads(p.read_text())) for p in sorted(RESULTS_DIR.glob("*.json"))]
    text = RESULTS_MD.read_text()
    generated = f"{BEGIN}\n\n" + "\n".join(sections) + f"\n{END}"
    RESULTS_MD.write_text(re.sub(f"{BEGIN}.*{END}", lambda _: generated, text, flags=re.S))


def main(argv: List[str] = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--ops", nargs="+", default=list(BENCHES), choices=list(BENCHES))
    parser.add_argument("--quick", action="store_true", help="a few sizes, short budgets, nothing recorded")
    parser.add_argument("--sizes", type=int, nargs="+", help="log2 of the sizes (default 10 12 ... 26)")
    parser.add_argument("--out", type=Path, default=Path("runs/bench"), help="where --quick writes its JSON")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    exponents = args.sizes or ([10, 14, 20] if args.quick else list(range(10, 27, 2)))
    sizes = [2**e for e in exponents]
    env = environment(device)
    for op in args.ops:
        bench = BENCHES[op]
        total = len(sizes) * len(bench.implementations(device))
        with tqdm(total=total, desc=f"{op} on {env['device_name']}") as progress:
            rows = bench.measure(sizes, device, budget_s=0.2 if args.quick else 1.0, progress=progress)
        record = dict(op=op, dtype="float32", env=env, rows=rows)
        out_dir = args.out if args.quick else RESULTS_DIR
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / f"{op}-{device.type}.json").write_text(json.dumps(record, indent=1))
        print(render(record))
    if not args.quick:
        update_results_md()
        print(f"recorded in {RESULTS_DIR} and {RESULTS_MD}")


if __name__ == "__main__":
    main()
