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
import argparse
import dataclasses
import json
import re
import textwrap
import os
import subprocess
import sys
import typing
from pathlib import Path
from typing import List, Optional

import torch

import kale_fast
from kale_fast._io import DiskFullError
from kale_fast.data.tabular import parse_columns
from kale_fast._suggest import did_you_mean
from kale_fast.train.config import SAMPLERS, SECTIONS, SEED_LIMIT, TrainConfig, unavailable_device
from kale_fast.train.run_folder import RunFolderInUse


def _parse_bool(text: str) -> bool:
    lowered = text.lower()
    if lowered in ("true", "yes", "1"):
        return True
    if lowered in ("false", "no", "0"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")


def _flag_type(annotation):
    """argparse type of a config field; Optional fields also take 'none'."""
    args = typing.get_args(annotation)
    if typing.get_origin(annotation) is typing.Union and set(args) == {int, str}:  # latent_dim: 11 or auto
        return lambda text: int(text) if text.strip().lstrip("-").isdigit() else text
    if typing.get_origin(annotation) is typing.Union:
        inner = _flag_type(next(a for a in args if a is not type(None)))
        return lambda text: None if text.lower() == "none" else inner(text)
    if typing.get_origin(annotation) is list:
        return parse_columns
    return _parse_bool if annotation is bool else annotation


def _add_config_flags(parser: argparse.ArgumentParser) -> None:
    """One flag per config key, its help, default and choices read from the key's field itself; one group of flags
    per section of the config."""
    for section, cls in SECTIONS.items():
        hints = typing.get_type_hints(cls)
        group = parser.add_argument_group(f"config keys, {section} section (override the YAML file; default: the "
                                          f"YAML's value, else the one shown)")
        for field in dataclasses.fields(cls):
            annotation = hints[field.name]
            choices = field.metadata["choices"]
            inner = next(a for a in typing.get_args(annotation) if a is not type(None)) if typing.get_args(
                annotation) else annotation
            metavar = ("{" + ",".join(choices) + "}" if choices else "A,B,..." if typing.get_origin(inner) is list
                       else inner.__name__.upper())
            if type(None) in typing.get_args(annotation):
                metavar += "|none"
            elif str in typing.get_args(annotation):  # latent_dim
                metavar += "|auto"
            group.add_argument(f"--{field.name.replace('_', '-')}", dest=f"config.{field.name}",
                               default=argparse.SUPPRESS, type=_flag_type(annotation), choices=choices,
                               metavar=metavar, help=f"{field.metadata['help']} (default: {field.default})")


def _int_at_least(minimum: int):
    """argparse type: an int >= minimum, else a usage error naming the value."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer >= {minimum}, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"expected an integer >= {minimum}, got {value}")
        return value
    return parse


_positive_int = _int_at_least(1)


def _seed(text: str) -> int:
    """argparse type: a seed as `train` takes it (0 to 2^32 - 1), else a usage error naming the value."""
    value = _int_at_least(0)(text)
    if value > SEED_LIMIT:
        raise argparse.ArgumentTypeError(f"expected an integer from 0 to {SEED_LIMIT}, got {value}")
    return value


def _device(text: str) -> str:
    """argparse type: a torch device this machine has, else a usage error naming --device."""
    problem = unavailable_device(text)
    if problem:
        raise argparse.ArgumentTypeError(problem)
    return text


_DEBUG_HELP = "on an error, show its traceback (also: environment variable KALE_FAST_DEBUG=1)"


class _UsageError(Exception):
    """A command-line mistake, already worded as one line."""


class _Parser(argparse.ArgumentParser):
    """argparse, but a mistake is one line (no usage block) with the closest choice where one is near."""

    def error(self, message: str):
        choice = re.search(r"invalid choice: '([^']*)' \(choose from (.*)\)", message)
        if choice:
            message += did_you_mean(choice.group(1), re.findall(r"'([^']*)'", choice.group(2)))
        raise _UsageError(f"{self.prog}: error: {message} ({self.prog} --help lists every option)")


CONFIGS_DIR = Path(kale_fast.__file__).resolve().parent / "configs"  # the configs shipped with the package


def shipped_configs() -> List[str]:
    """The names of the configs shipped with the package (kale_fast/configs/<name>.yaml)."""
    return sorted(path.stem for path in CONFIGS_DIR.glob("*.yaml"))


def config_path(text: str) -> Path:
    """--config: a YAML file, else the name of a shipped config (toy_8gaussians, ...)."""
    path = Path(text)
    if path.is_file() or "/" in text or path.suffix in (".yaml", ".yml"):
        return path  # a file (a missing one is named by TrainConfig.from_yaml)
    shipped = CONFIGS_DIR / f"{text}.yaml"
    if shipped.is_file():
        return shipped
    names = shipped_configs()
    raise argparse.ArgumentTypeError(f"{text!r} is neither a config file nor a shipped config ({', '.join(names)})"
                                     f"{did_you_mean(path.stem, names)}")


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="kale-fast", description="Generalized Energy-Based Models trained with KALE")
    parser.add_argument("--version", action="version", version=f"%(prog)s {kale_fast.__version__}")
    parser.add_argument("--debug", action="store_true", help=_DEBUG_HELP)
    # --debug is also taken after the verb; SUPPRESS keeps the top-level value when it is not given there
    debug_after_verb = _Parser(add_help=False)
    debug_after_verb.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help=_DEBUG_HELP)
    commands = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    add_verb = lambda name, **kwargs: commands.add_parser(name, parents=[debug_after_verb], **kwargs)  # noqa: E731
    train = add_verb("train", help="train a GEBM (then evaluate it)")
    train.add_argument("--config", required=True, type=config_path, help="a YAML file of config keys, or the name "
                       f"of a shipped config: {', '.join(shipped_configs())}")
    train.add_argument("--resume", action="store_true", help="continue the run's checkpoint")
    train.add_argument("--no-eval", action="store_true", help="skip the evaluation after training")
    train.add_argument("--quiet", action="store_true", help="no progress bars")
    train.add_argument("--json", action="store_true", help="print the evaluation's summary.json instead of its "
                       "summary for people")
    _add_config_flags(train)
    sample = add_verb("sample", help="draw GEBM samples from a trained run")
    sample.add_argument("--run", required=True, type=Path)
    sample.add_argument("--sampler", choices=SAMPLERS, default=None, help="default: the run's config")
    sample.add_argument("--n", type=_positive_int, default=1000, help="number of samples (chains)")
    sample.add_argument("--steps", type=_positive_int, default=None, help="iterations kept (the chains' state after "
                        "the last one is the sample); default: the run's sampler_steps")
    sample.add_argument("--warmup", type=_int_at_least(0), default=None, help="warm-up iterations before them, "
                        "discarded (they adapt the step size and metric); default: steps // 2")
    sample.add_argument("--step-size", type=float, default=None, help="MALA, HMC: the initial step (adapted during "
                        "warm-up); ULA, kinetic Langevin: the fixed step (default: derived from the step MALA adapts "
                        "to during warm-up, see kale_fast.train.sampling)")
    sample.add_argument("--seed", type=_seed, default=0, help="seed of the chains and the base samples")
    sample.add_argument("--device", type=_device, default=None, help="default: the run's config")
    evaluate = add_verb("eval", help="evaluate a trained run (summary.json, plots)")
    evaluate.add_argument("--run", required=True, type=Path)
    evaluate.add_argument("--device", type=_device, default=None, help="default: the run's config")
    evaluate.add_argument("--feature-net", default=None, help="images: FID features from this file of weights "
                          "(Inception-v3's or DigitFeatures', a state dict or .safetensors) instead of the run's "
                          "config")
    evaluate.add_argument("--quiet", action="store_true", help="no progress lines")
    evaluate.add_argument("--json", action="store_true", help="print summary.json instead of the summary for people")
    commands.add_parser("bench", help="run the benchmark suite (source checkout only)", add_help=False)
    _add_report_parser(add_verb)
    return parser


def _add_report_parser(add_verb) -> None:
    report = add_verb("report", help="mean, sd and 95%% t-interval over seeds of runs' summary.json")
    report.add_argument("runs", nargs="+", type=Path, help="run folders, one per seed (runs/NAME-s0 runs/NAME-s1 ...)")
    report.add_argument("--out", type=Path, default=None, help="also write the Markdown table to this file")


def _train(args) -> None:
    from kale_fast.train import evaluate, train
    from kale_fast.train.distributed import rank_and_size

    overrides = {k.split(".", 1)[1]: v for k, v in vars(args).items() if k.startswith("config.")}
    config = TrainConfig.from_yaml(args.config, overrides)
    if not args.quiet and rank_and_size()[0] == 0:
        print(resolved_config(config, args.config, overrides))
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


def resolved_config(config: TrainConfig, path: Path, overrides: dict) -> str:
    """The config a run starts with, for people: every key that differs from its default (flags marked *)."""
    defaults = TrainConfig().to_dict()
    keys = [f"{key}={value}{'*' if key in overrides else ''}" for key, value in config.to_dict().items()
            if value != defaults[key] or key in overrides]
    return textwrap.fill(f"config {path} (* from flags; other keys at their defaults): {' '.join(keys)}", 120,
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


def _parse(argv: List[str]) -> argparse.Namespace:
    """The parsed command line; an unknown flag is a _UsageError naming the verb's closest flag."""
    parser = _parser()
    args, unknown = parser.parse_known_args(argv)
    if unknown:
        verbs = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices
        verb = verbs[args.command]
        flags = [flag for action in verb._actions for flag in action.option_strings]
        first = next((item for item in unknown if item.startswith("-")), unknown[0])
        raise _UsageError(f"{verb.prog}: error: unrecognized argument{'s' if len(unknown) > 1 else ''} "
                          f"{' '.join(unknown)}{did_you_mean(first.split('=')[0], flags)} ({verb.prog} --help lists "
                          f"every option)")
    return args


def main(argv: Optional[List[str]] = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["bench"]:  # everything after `bench` belongs to the benchmark runner
        if not Path("benchmarks/__main__.py").is_file():
            print("kale-fast bench runs the benchmark suite of a source checkout: run it from the repository root",
                  file=sys.stderr)
            return 2
        return subprocess.call([sys.executable, "-m", "benchmarks", *argv[1:]])
    try:
        args = _parse(argv)
    except _UsageError as error:
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
