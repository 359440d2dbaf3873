"""The `kale-fast` command: train, sample, eval, report, bench.

  kale-fast train --config NAME_OR_FILE [--resume] [--<config key> value ...]   (NAME: a shipped config)
  torchrun --nproc-per-node N -m kale_fast.cli train ...   (data-parallel; rank 0 writes the run)
  kale-fast sample --run runs/NAME [--sampler mala] [--n 1000] [--steps 100] [--warmup 50] [--step-size 0.05]
  kale-fast eval --run runs/NAME [--feature-net inception.pth]
  kale-fast report runs/NAME-s0 runs/NAME-s1 ... [--out table.md]   (mean, sd, 95% t-interval over seeds)
  kale-fast bench [--quick] [...]          (from a source checkout: runs `python -m benchmarks`)

A user's mistake (a bad flag or value, a missing file, a run folder in use) ends as one line on stderr with exit code
2, with the closest flag, key or choice where one is near; `--debug` (or KALE_FAST_DEBUG=1) shows its traceback.
Anything else is a bug and keeps its traceback.
"""
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import List, Optional

import torch

import kale_fast
from kale_fast._io import DiskFullError
from kale_fast.cli_parser import UsageError, parse_command_line
from kale_fast.train.config import TrainConfig
from kale_fast.train.run_folder import RunFolderInUse


def _train(args) -> None:
    from kale_fast.train import evaluate, train
    from kale_fast.train.distributed import rank_and_size
    from kale_fast.train.loop import flow_keys_from_base_run

    overrides = {k.split(".", 1)[1]: v for k, v in vars(args).items() if k.startswith("config.")}
    config = TrainConfig.from_yaml(args.config, overrides)
    inherited = flow_keys_from_base_run(config)  # printed as the run will use them, not as the file says
    config = config.replace(**inherited)
    if not args.quiet and rank_and_size()[0] == 0:
        print(resolved_config(config, args.config, overrides, inherited, config.base_run_dir()))
    try:
        run_dir = train(config, resume=args.resume, progress=not args.quiet)
    except KeyboardInterrupt:
        raise _Interrupted(Path(config.run.out_dir) / config.run.name) from None
    rank, size = rank_and_size()
    if size > 1:  # under torchrun: rank 0 evaluates alone
        torch.distributed.destroy_process_group()
    if rank == 0:
        print(f"trained: {run_dir}")
        if not args.no_eval:
            _print_summary(evaluate(run_dir, progress=not args.quiet), run_dir, args.json)


def resolved_config(config: TrainConfig, path: Path, overrides: dict, inherited: Optional[dict] = None,
                    base_dir: Optional[Path] = None) -> str:
    """The config a run starts with, for people: every key that differs from its default (flags marked *, the
    flow keys `inherited` from the base run in base_dir marked +)."""
    defaults, inherited = TrainConfig().to_dict(), inherited or {}
    mark = lambda key: ("*" if key in overrides else "") + ("+" if key in inherited else "")  # noqa: E731
    keys = [f"{key}={value}{mark(key)}" for key, value in config.to_dict().items()
            if value != defaults[key] or key in overrides]
    origin = f"* from flags, + from the base run {base_dir}" if inherited else "* from flags"
    return textwrap.fill(f"config {path} ({origin}; other keys at their defaults): {' '.join(keys)}", 120,
                         subsequent_indent="  ", break_on_hyphens=False)


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
    from kale_fast.train.sampling import sample_run

    sample_run(args.run, args.sampler, args.n, args.steps, args.warmup, args.step_size, args.seed, args.device)


def _eval(args) -> None:
    from kale_fast.train import evaluate

    _print_summary(evaluate(args.run, args.device, progress=not args.quiet, feature_net=args.feature_net), args.run,
                   args.json)


def _print_summary(summary: dict, run_dir: Path, as_json: bool) -> None:
    """summary.json's contents (--json: stdout is then one JSON document), else the lines people read."""
    from kale_fast.train.eval_report import summary_text

    print(json.dumps(summary, indent=1) if as_json else summary_text(summary, run_dir))


def _report(args) -> None:
    from kale_fast._io import atomic_write_text
    from kale_fast.train.report import markdown_report, read_summaries

    table = markdown_report(read_summaries(args.runs), [str(run) for run in args.runs])
    print(table, end="")
    if args.out is not None:
        atomic_write_text(table, args.out)


_KALE_FAST_DIR = Path(kale_fast.__file__).resolve().parent
# Raised by kale_fast's own checks of what the user gave; from inside torch or numpy they are bugs of ours.
_CHECK_ERRORS = (ValueError, TypeError, ImportError, FloatingPointError, RunFolderInUse)
# About the user's files and folders (missing, existing, unreadable), wherever they are raised.
_FILE_ERRORS = (FileNotFoundError, FileExistsError, PermissionError, IsADirectoryError, NotADirectoryError,
                DiskFullError)


def _is_user_error(error: BaseException) -> bool:
    if isinstance(error, _FILE_ERRORS):
        return True
    if not isinstance(error, _CHECK_ERRORS) or error.__traceback__ is None:
        return False
    frame = error.__traceback__
    while frame.tb_next is not None:  # the frame that raised it
        frame = frame.tb_next
    return _KALE_FAST_DIR in Path(frame.tb_frame.f_code.co_filename).resolve().parents


def main(argv: Optional[List[str]] = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["bench"]:  # everything after `bench` belongs to the benchmark runner
        if not Path("benchmarks/__main__.py").is_file():
            print("kale-fast bench runs the benchmark suite of a source checkout: run it from the repository root",
                  file=sys.stderr)
            return 2
        return subprocess.call([sys.executable, "-m", "benchmarks", *argv[1:]])
    try:
        args = parse_command_line(argv)
    except UsageError as error:
        print(error, file=sys.stderr)
        return 2  # argparse's code for a usage error
    debug = args.debug or os.environ.get("KALE_FAST_DEBUG", "") not in ("", "0")
    try:
        {"train": _train, "sample": _sample, "eval": _eval, "report": _report}[args.command](args)
    except _Interrupted as interrupted:
        print(_resume_hint(argv, interrupted.args[0]), file=sys.stderr)
        return 130  # the shell's code for a SIGINT ending
    except Exception as error:
        if debug or not _is_user_error(error):
            raise
        message = " ".join(str(error).split())  # one line, whatever the message's own line breaks
        print(f"kale-fast {args.command}: error: {message} (--debug shows the traceback)", file=sys.stderr)
        return 2  # argparse's code for a usage error
    return 0


if __name__ == "__main__":
    sys.exit(main())
