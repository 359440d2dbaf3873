"""The `kale-fast` command line: its verbs and flags (one per config key for `train`, grouped by the config's
sections, typed and described from the keys' own fields), the shipped configs `--config` names, and a parser whose
mistakes are one line with the closest flag or choice (UsageError). kale_fast/cli.py runs what it parses."""
import argparse
import dataclasses
import re
import typing
from pathlib import Path
from typing import List

import kale_fast
from kale_fast._suggest import did_you_mean
from kale_fast.data.tabular import parse_columns
from kale_fast.train.config import SAMPLERS, SECTIONS, SEED_LIMIT, unavailable_device
from kale_fast.train.config.keys import SIZE_LIMITS


def _parse_bool(text: str) -> bool:
    lowered = text.lower()
    if lowered in ("true", "yes", "1"):
        return True
    if lowered in ("false", "no", "0"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")


def _flag_type(annotation):
    """argparse type of a config key; Optional keys also take 'none'. A value that does not parse is a usage error
    naming what was expected (argparse names a type by its __name__)."""
    args = typing.get_args(annotation)
    if typing.get_origin(annotation) is typing.Union and set(args) == {int, str}:  # latent_dim: 11 or auto
        return lambda text: int(text) if text.strip().lstrip("-").isdigit() else text
    if typing.get_origin(annotation) is typing.Union:
        inner = _flag_type(next(a for a in args if a is not type(None)))

        def optional(text: str):
            return None if text.lower() == "none" else inner(text)
        optional.__name__ = f"{inner.__name__} (or none)"
        return optional
    if typing.get_origin(annotation) is list:
        return _columns
    return _parse_bool if annotation is bool else annotation


def _columns(text: str):
    """--columns: parse_columns' own message (what is wrong with the list) as the usage error."""
    try:
        return parse_columns(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


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


def _int_in(minimum: int, maximum: int):
    """argparse type: an int from minimum to maximum, else a usage error naming the value."""
    def parse(text: str) -> int:
        value = _int_at_least(minimum)(text)
        if value > maximum:
            raise argparse.ArgumentTypeError(f"expected an integer from {minimum} to {maximum}, got {value}")
        return value
    return parse


_positive_int = _int_at_least(1)


_seed = _int_in(0, SEED_LIMIT)  # a seed as `train` takes it


def _device(text: str) -> str:
    """argparse type: a torch device this machine has, else a usage error naming --device."""
    problem = unavailable_device(text)
    if problem:
        raise argparse.ArgumentTypeError(problem)
    return text


_DEBUG_HELP = "on an error, show its traceback (also: environment variable KALE_FAST_DEBUG=1)"


class UsageError(Exception):
    """A command-line mistake, already worded as one line."""


class _Parser(argparse.ArgumentParser):
    """argparse, but a mistake is one line (no usage block) with the closest choice where one is near."""

    def error(self, message: str):
        choice = re.search(r"invalid choice: '([^']*)' \(choose from (.*)\)", message)
        if choice:
            message += did_you_mean(choice.group(1), re.findall(r"'([^']*)'", choice.group(2)))
        raise UsageError(f"{self.prog}: error: {message} ({self.prog} --help lists every option)")


CONFIGS_DIR = Path(kale_fast.__file__).resolve().parent / "configs"  # the configs shipped with the package


def shipped_configs() -> List[str]:
    """The names of the configs shipped with the package (kale_fast/configs/<name>.yaml)."""
    return sorted(path.stem for path in CONFIGS_DIR.glob("*.yaml"))


def config_path(text: str) -> Path:
    """--config: a YAML file, else the name of a shipped config (toy_8gaussians, ...)."""
    path = Path(text)
    if not path.is_file() and path.suffix in (".yaml", ".yml") and (CONFIGS_DIR / f"{path.stem}.yaml").is_file():
        # the docs' `--config configs/NAME.yaml`, typed outside the repository
        raise argparse.ArgumentTypeError(f"config file {text} not found; the shipped config of that name is "
                                         f"`--config {path.stem}` (found from any folder)")
    if path.is_file() or "/" in text or path.suffix in (".yaml", ".yml"):
        return path  # a file (a missing one is named by TrainConfig.from_yaml)
    shipped = CONFIGS_DIR / f"{text}.yaml"
    if shipped.is_file():
        return shipped
    names = shipped_configs()
    raise argparse.ArgumentTypeError(f"{text!r} is neither a config file nor a shipped config ({', '.join(names)})"
                                     f"{did_you_mean(path.stem, names)}")


def command_parser() -> argparse.ArgumentParser:
    """The `kale-fast` command's parser: its verbs and their flags, a flag per config key for `train`."""
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
    sample.add_argument("--n", type=_int_in(1, SIZE_LIMITS["n_eval"]), default=1000,
                        help="number of samples (chains)")
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


def parse_command_line(argv: List[str]) -> argparse.Namespace:
    """The parsed command line; an unknown flag is a UsageError naming the verb's closest flag."""
    parser = command_parser()
    args, unknown = parser.parse_known_args(argv)
    if unknown:
        verbs = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices
        verb = verbs[args.command]
        flags = [flag for action in verb._actions for flag in action.option_strings]
        first = next((item for item in unknown if item.startswith("-")), unknown[0])
        raise UsageError(f"{verb.prog}: error: unrecognized argument{'s' if len(unknown) > 1 else ''} "
                          f"{' '.join(unknown)}{did_you_mean(first.split('=')[0], flags)} ({verb.prog} --help lists "
                          f"every option)")
    return args
