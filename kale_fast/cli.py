"""The `kale-fast` command: train, sample, eval, bench.

  kale-fast train --config configs/X.yaml [--resume] [--<config key> value ...]
  torchrun --nproc-per-node N -m kale_fast.cli train ...   (data-parallel; rank 0 writes the run)
  kale-fast sample --run runs/NAME [--sampler mala] [--n 1000] [--steps 100] [--step-size 0.05]
  kale-fast eval --run runs/NAME [--feature-net inception.pth]
  kale-fast bench [--quick] [...]          (from a source checkout: runs `python -m benchmarks`)
"""
import argparse
import dataclasses
import json
import subprocess
import sys
import typing
from pathlib import Path
from typing import List, Optional

import torch

import kale_fast
from kale_fast.train.config import SAMPLERS, TrainConfig


def _parse_bool(text: str) -> bool:
    lowered = text.lower()
    if lowered in ("true", "yes", "1"):
        return True
    if lowered in ("false", "no", "0"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")


def _parse_columns(text: str) -> list:
    """`columns` on the command line: comma-separated; an item of digits is a 0-based index, others are names."""
    return [int(item) if item.strip().isdigit() else item.strip() for item in text.split(",")]


def _flag_type(annotation):
    """argparse type of a config field; Optional fields also take 'none'."""
    args = typing.get_args(annotation)
    if typing.get_origin(annotation) is typing.Union:
        inner = _flag_type(next(a for a in args if a is not type(None)))
        return lambda text: None if text.lower() == "none" else inner(text)
    if typing.get_origin(annotation) is list:
        return _parse_columns
    return _parse_bool if annotation is bool else annotation


def _add_config_flags(parser: argparse.ArgumentParser) -> None:
    """One flag per config key, its help, default and choices read from the TrainConfig field itself."""
    hints = typing.get_type_hints(TrainConfig)
    group = parser.add_argument_group("config keys (override the YAML file; default: the YAML's value, else the "
                                      "one shown)")
    for field in dataclasses.fields(TrainConfig):
        annotation = hints[field.name]
        choices = field.metadata["choices"]
        inner = next(a for a in typing.get_args(annotation) if a is not type(None)) if typing.get_args(
            annotation) else annotation
        metavar = ("{" + ",".join(choices) + "}" if choices else "A,B,..." if typing.get_origin(inner) is list
                   else inner.__name__.upper())
        if inner is not annotation:
            metavar += "|none"
        group.add_argument(f"--{field.name.replace('_', '-')}", dest=f"config.{field.name}", default=argparse.SUPPRESS,
                           type=_flag_type(annotation), choices=choices, metavar=metavar,
                           help=f"{field.metadata['help']} (default: {field.default})")


def _positive_int(text: str) -> int:
    """argparse type: an int >= 1, else a usage error naming the value."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {value}")
    return value


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="kale-fast", description="Generalized Energy-Based Models trained with KALE")
    parser.add_argument("--version", action="version", version=f"%(prog)s {kale_fast.__version__}")
    commands = parser.add_subparsers(dest="command", required=True)
    train = commands.add_parser("train", help="train a GEBM (then evaluate it)")
    train.add_argument("--config", required=True, type=Path, help="YAML file of config keys (configs/*.yaml)")
    train.add_argument("--resume", action="store_true", help="continue the run's checkpoint")
    train.add_argument("--no-eval", action="store_true", help="skip the evaluation after training")
    train.add_argument("--quiet", action="store_true", help="no progress bars")
    _add_config_flags(train)
    sample = commands.add_parser("sample", help="draw GEBM samples from a trained run")
    sample.add_argument("--run", required=True, type=Path)
    sample.add_argument("--sampler", choices=SAMPLERS, default=None, help="default: the run's config")
    sample.add_argument("--n", type=_positive_int, default=1000, help="number of samples (chains)")
    sample.add_argument("--steps", type=_positive_int, default=None, help="default: the run's sampler_steps")
    sample.add_argument("--step-size", type=float, default=None)
    sample.add_argument("--seed", type=int, default=0)
    sample.add_argument("--device", default=None)
    evaluate = commands.add_parser("eval", help="evaluate a trained run (summary.json, plots)")
    evaluate.add_argument("--run", required=True, type=Path)
    evaluate.add_argument("--device", default=None)
    evaluate.add_argument("--feature-net", default=None, help="images: FID features from this file (Inception-v3 "
                          "weights, .pt2 or TorchScript) instead of the run's config")
    commands.add_parser("bench", help="run the benchmark suite (source checkout only)", add_help=False)
    return parser


def _train(args) -> None:
    from kale_fast.train import evaluate, train
    from kale_fast.train.distributed import rank_and_size

    overrides = {k.split(".", 1)[1]: v for k, v in vars(args).items() if k.startswith("config.")}
    config = TrainConfig.from_yaml(args.config, overrides)
    try:
        run_dir = train(config, resume=args.resume, progress=not args.quiet)
    except KeyboardInterrupt:
        raise _Interrupted(Path(config.out_dir) / config.name) from None
    rank, size = rank_and_size()
    if size > 1:  # under torchrun: rank 0 evaluates alone
        torch.distributed.destroy_process_group()
    if rank == 0:
        print(f"trained: {run_dir}")
        if not args.no_eval:
            print(json.dumps(evaluate(run_dir, progress=not args.quiet), indent=1))


class _Interrupted(Exception):
    """Ctrl-C during training, with the run folder (args[0])."""


def _resume_hint(argv: List[str], run_dir: Path) -> str:
    """The one line printed after Ctrl-C: how to go on."""
    from kale_fast.train.run_folder import CHECKPOINT

    if not (run_dir / CHECKPOINT).exists():
        return f"interrupted before the first checkpoint of {run_dir}; the same command starts the run over"
    command = " ".join(["kale-fast", *(a for a in argv if a != "--resume"), "--resume"])
    return f"interrupted: {run_dir / CHECKPOINT} keeps the last checkpoint; continue with: {command}"


def _sample(args) -> None:
    from kale_fast.train.loop import load_run, make_sampler
    from kale_fast.train.plots import image_grid, scatter_samples

    config, gebm, _, _ = load_run(args.run, args.device)
    changes = {k: v for k, v in dict(sampler=args.sampler, sampler_steps=args.steps, step_size=args.step_size).items()
               if v is not None}
    config = dataclasses.replace(config, **changes)
    generator = torch.Generator(device=config.device).manual_seed(args.seed)
    samples, result = gebm.sample(args.n, make_sampler(config), config.sampler_steps,
                                  warmup=config.sampler_steps // 2, generator=generator, progress=True)
    out = Path(args.run) / f"samples-{config.sampler}.pt"
    torch.save(dict(samples=samples.cpu(), z=result.z.cpu(), accept_rate=result.accept_rate.cpu()), out)
    base_samples = gebm.base_sample(args.n)
    if samples.dim() == 4:  # images (N, C, H, W): grids, not a scatter of two pixels
        image_grid(samples, out.with_suffix(".png"), title=f"GEBM samples ({config.sampler})")
        image_grid(base_samples, out.with_name(f"{out.stem}-base.png"), title="base samples")
    else:
        scatter_samples({f"GEBM samples ({config.sampler})": samples, "base samples": base_samples},
                        out.with_suffix(".png"))
    print(f"{args.n} samples ({config.sampler}, {config.sampler_steps} steps, acceptance "
          f"{result.accept_rate.mean().item():.3f}) written to {out}")


def _eval(args) -> None:
    from kale_fast.train import evaluate

    print(json.dumps(evaluate(args.run, args.device, feature_net=args.feature_net), indent=1))


def main(argv: Optional[List[str]] = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["bench"]:  # everything after `bench` belongs to the benchmark runner
        if not Path("benchmarks/__main__.py").is_file():
            print("kale-fast bench runs the benchmark suite of a source checkout: run it from the repository root",
                  file=sys.stderr)
            return 2
        return subprocess.call([sys.executable, "-m", "benchmarks", *argv[1:]])
    args = _parser().parse_args(argv)
    try:
        {"train": _train, "sample": _sample, "eval": _eval}[args.command](args)
    except _Interrupted as interrupted:
        print(_resume_hint(argv, interrupted.args[0]), file=sys.stderr)
        return 130  # the shell's code for a SIGINT ending
    return 0


if __name__ == "__main__":
    sys.exit(main())
