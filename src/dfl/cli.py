"""`dfl`: parse, validate, call. Every command has --help; every user error is one line on
stderr and a non-zero exit, never a traceback: 2 for bad input (including a run directory
another process is training), 1 for a full disk or an unwritable directory, 3 for a diverged
run, 4 for a reproduction with failed experiments or a sweep with no completed trial, 130 after
Ctrl-C and 143 after SIGTERM (both wind down the same way: dfl/runtime/interrupts.py)."""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Callable
from pathlib import Path

from dfl.errors import CALLER, DflError, disk_full
from dfl.runtime.interrupts import (
    InterruptOnce,
    ReaderGone,
    SigtermAsInterrupt,
    deferred_interrupt,
    interrupted_exit_code,
    say,
)

COMMANDS: dict[str, Callable[[argparse.ArgumentParser], None]] = {}


def command(name: str, help: str) -> Callable:
    """Register `add_<name>_arguments(parser)`; the parser's default `run` does the work."""

    def add(fn: Callable[[argparse.ArgumentParser], None]) -> Callable:
        fn.help = help  # type: ignore[attr-defined]
        COMMANDS[name] = fn
        return fn

    return add


class Parser(argparse.ArgumentParser):
    """argparse exits 2 on bad arguments already; keep its message to one line."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {_with_guess(message)} (see {self.prog} --help)\n")


def _with_guess(message: str) -> str:
    """argparse's "invalid choice: 'trian' (choose from 'train', ...)" with the likely one
    first: "invalid choice: 'trian' (did you mean 'train'?)"."""
    import difflib
    import re

    said = re.fullmatch(r"(.*invalid choice: '([^']*)') \(choose from (.*)\)", message)
    if said is None:
        return message
    choices = [c.strip("'") for c in said[3].split(", ")]  # quoted up to Python 3.12.7, not since
    guess = difflib.get_close_matches(said[2], choices, n=1, cutoff=0.75)  # not gpu -> cpu
    return f"{said[1]} (did you mean '{guess[0]}'?)" if guess else message


def add_data_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--dataset",
        default=None,
        metavar="NAME",
        help="mnist (default), fashion-mnist, or an IDX directory",
    )
    p.add_argument(
        "--data-dir",
        default=None,
        metavar="DIR",
        help="a directory with the four IDX files, tried first",
    )


def whole_number(least: int) -> Callable[[str], int]:
    """argparse type: a whole number of at least `least` (a count of 0 or a seed of -1 would
    silently mean a default, or fail deep inside)."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"'{text}' is not a whole number") from None
        if value < least:
            raise argparse.ArgumentTypeError(f"must be at least {least}, not {value}")
        return value

    return parse


def add_override_argument(p: argparse.ArgumentParser, example: str = "optim.lr=3e-4") -> None:
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help=f"override a key: --set {example} (repeatable)",
    )


# ---------------------------------------------------------------------------------------------
# dfl train


@command("train", "train one model and write its run directory")
def add_train_arguments(p: argparse.ArgumentParser) -> None:
    p.usage = "dfl train [MODEL] [--config FILE] [--set KEY=VALUE ...] [options below]"
    p.add_argument(
        "model", nargs="?", metavar="MODEL", help="a registered model (see `dfl models`)"
    )
    p.add_argument("--config", metavar="FILE", help="a TOML file of config keys (see configs/)")
    add_override_argument(p)
    p.add_argument("--epochs", type=int, metavar="N", help="number of epochs")
    p.add_argument("--batch-size", type=int, metavar="N", help="training batch size")
    p.add_argument("--lr", type=float, help="learning rate (optim.lr)")
    p.add_argument(
        "--device",
        choices=["auto", "cpu", "cuda", "mps"],
        metavar="DEV",
        help="auto (default), cpu, cuda or mps",
    )
    p.add_argument(
        "--precision",
        choices=["auto", "fp32", "bf16", "fp16"],
        metavar="P",
        help="auto (default: bf16 for CNNs on CPUs with native bf16, else fp32), fp32, bf16 "
        "or fp16",
    )
    p.add_argument("--seed", type=int, metavar="N", help="seed for init, shuffling, augmentation")
    p.add_argument(
        "--seeds",
        type=_seed_list,
        metavar="LIST",
        help="seeds 0,1,2, each in --out/seedN, fused where it pays",
    )
    p.add_argument(
        "--fuse",
        choices=["auto", "on", "off"],
        default="auto",
        metavar="MODE",
        help="with --seeds: auto (default: where it pays), on or off",
    )
    p.add_argument("--threads", type=int, metavar="N", help="intra-op threads (default: torch's)")
    p.add_argument("--deterministic", action="store_true", help="deterministic algorithms")
    add_data_arguments(p)
    p.add_argument("--out", metavar="DIR", help="run directory (default: runs/train/MODEL-TIME)")
    p.add_argument(
        "--resume",
        action="store_true",
        help="continue the run in --out (or reuse it if finished)",
    )
    p.add_argument(
        "--print-config",
        action="store_true",
        help="print the resolved config as TOML; train nothing",
    )
    p.formatter_class = argparse.RawDescriptionHelpFormatter
    p.epilog = TRAIN_EXAMPLES
    p.set_defaults(run=run_train)


TRAIN_EXAMPLES = """examples:
  dfl train cnn_lab --epochs 2                   the lab's CNN, 2 epochs
  dfl train cnn_lab --epochs 1 --set data.train_subset=2000   a try in seconds
  dfl train autoencoder --set model_args.enc=64  the lab's AE, code size 64
  dfl train vit_lab --set model_args.heads=4     the notebook's ViT with 4 heads
  dfl train --config configs/models/cnn_writeup_fixed.toml    a config file
  dfl train mlp --print-config                   every key and model argument
  dfl train --config RUN/config.toml             repeat a run from its folder
  dfl train --out RUN --resume                   continue an interrupted run
`dfl models MODEL` lists a model's arguments."""


def _seed_list(text: str) -> list[int]:
    try:
        seeds = [int(part) for part in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"'{text}' is not a comma-separated list of seeds"
        ) from None
    if len(set(seeds)) != len(seeds):
        raise argparse.ArgumentTypeError(f"'{text}' names a seed twice")
    from dfl.config import MAX_SEED

    if wrong := [s for s in seeds if not 0 <= s <= MAX_SEED]:  # what `seed` takes
        raise argparse.ArgumentTypeError(f"a seed is 0 to {MAX_SEED}, not {wrong[0]}")
    return seeds


def _train_overrides(args: argparse.Namespace) -> dict:
    from dfl.config import UserKeys

    flags = {
        "model": ("MODEL", args.model),
        "epochs": ("--epochs", args.epochs),
        "batch_size": ("--batch-size", args.batch_size),
        "optim.lr": ("--lr", args.lr),
        "device": ("--device", args.device),
        "precision": ("--precision", args.precision),
        "seed": ("--seed", args.seed),
        "threads": ("--threads", args.threads),
        "data.dataset": ("--dataset", args.dataset),
        "data.data_dir": ("--data-dir", args.data_dir),
        "deterministic": ("--deterministic", True if args.deterministic else None),
    }
    keys = UserKeys()
    for key, (flag, value) in flags.items():
        if value is not None:
            shown = {"MODEL": f"the model argument '{value}'", "--deterministic": flag}
            keys.set(key, value, shown.get(flag, f"{flag} {value}"))
    keys.set_pairs(args.overrides)
    return keys.tree


def run_train(args: argparse.Namespace) -> int:
    from dfl.config import build_config, config_to_toml
    from dfl.models import with_model_defaults
    from dfl.training.run_dir import seed_runs

    config_file = args.config
    if args.resume and not args.out:  # else a new run would start under a fresh name
        raise DflError(
            "--resume continues the run in --out: name it (dfl train --out RUN --resume)"
        )
    if args.resume and config_file is None:
        # Resume with the run's own config (with --seeds, the first seed's: the seed is set
        # for each run below).
        own = Path(args.out) / (f"seed{args.seeds[0]}" if args.seeds else "") / "config.toml"
        if own.exists():
            config_file = own
            from dfl.config import read_toml

            saved = read_toml(own).get("model")
            if args.model is not None and saved is not None and args.model != saved:
                raise DflError(
                    f"{args.out} holds a {saved} run: leave out the model to resume it, or give "
                    "another --out"
                )
        elif args.model is None:
            seeds = seed_runs(own.parent) if own.parent.is_dir() else []
            if seeds and not args.seeds:
                raise DflError(
                    f"--resume: {own.parent} holds the runs of --seeds: give --seeds "
                    f"{','.join(map(str, seeds))} to resume them"
                )
            raise DflError(
                f"--resume: {own.parent} holds no run (no config.toml): check the path, or name "
                "a model or --config to start one there"
            )
    if config_file is None and args.model is None:
        raise DflError(
            "name a model (`dfl train cnn_lab`) or give --config FILE; "
            "`dfl models` lists the models"
        )
    overrides = _train_overrides(args)
    if args.seeds is not None and args.seed is not None:  # before --print-config shows one
        raise DflError("give --seed or --seeds, not both")
    cfg = build_config(config_file, overrides)
    if args.print_config:
        print(config_to_toml(with_model_defaults(cfg), show_unset=True))
        return 0
    with deferred_interrupt():  # imports: see dfl/runtime/interrupts.py
        from dfl.training.run import default_run_dir, fit, fit_group

    out = Path(args.out) if args.out else default_run_dir(cfg.model)
    log = say
    if args.seeds is None:
        run = fit(cfg, out, resume=args.resume, log=log)
        _print_result(run, run.run_dir)  # a pretrained run's: its fine-tuning phase's
        return 0
    cfgs = [cfg.model_copy(update={"seed": seed}) for seed in args.seeds]
    dirs = [out / f"seed{seed}" for seed in args.seeds]
    runs = fit_group(cfgs, dirs, fuse=args.fuse, resume=args.resume, log=log)
    for run in runs:
        _print_result(run, run.run_dir)
    from dfl.training.seeds import summary

    if line := summary(runs):
        print(line)
    return 0


def _print_result(result, out: Path) -> None:
    f = result.final
    n = f.get("epochs_run", 0)
    summary = [
        f"{k} {f[k]:.6g}"
        for k in ("test_accuracy", "test_loss", "val_accuracy", "val_loss")
        if f.get(k) is not None  # null: a NaN
    ]
    print(
        f"{result.status}: {'  '.join(summary)}  ({n} epoch{'' if n == 1 else 's'}, "
        f"{f.get('params', 0):,} parameters) -> {out}"
    )


# ---------------------------------------------------------------------------------------------
# dfl models, dfl data info


@command("models", "list the registered models, or describe one: `dfl models cnn_lab`")
def add_models_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", nargs="?", help="describe this model: what it is and its arguments")
    p.set_defaults(run=run_models)


def run_models(args: argparse.Namespace) -> int:
    import inspect
    import shutil
    import textwrap

    from dfl import models

    width = min(shutil.get_terminal_size().columns, 100)
    entries = [models.get(args.model)] if args.model else models.entries()
    name_width = max(len(e.name) for e in entries)
    for entry in entries:
        n = sum(p.numel() for p in models.create(entry.name).parameters())
        args_text = ", ".join(f"{k}={v}" for k, v in entry.defaults().items())
        print(f"{entry.name:<{name_width}}  {entry.objective}, {n:,} parameters by default")
        about = inspect.getdoc(entry.factory) if args.model else entry.summary
        for paragraph in (about or "").split("\n\n"):
            print(textwrap.fill(" ".join(paragraph.split()), width, initial_indent="  ",
                                subsequent_indent="  "))  # fmt: skip
        print(textwrap.fill(f"args: {args_text}", width, initial_indent="  ",
                            subsequent_indent="        "))  # fmt: skip
    if args.model:
        first = next(iter(entries[0].defaults()), "ARG")
        print(f"\nset one: dfl train {args.model} --set model_args.{first}=VALUE")
    return 0


@command("data", "inspect datasets: `dfl data info --dataset fashion-mnist`")
def add_data_command(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(
        dest="data_command", required=True, parser_class=Parser, metavar="SUBCOMMAND"
    )
    about = "source, path, sizes, class counts and checksum verdict"
    info = sub.add_parser("info", help=about, description=about)
    add_data_arguments(info)
    info.set_defaults(run=run_data_info)


def run_data_info(args: argparse.Namespace) -> int:
    from dfl.data import dataset_info, format_info

    print(format_info(dataset_info(args.dataset or "mnist", args.data_dir)))
    return 0


# ---------------------------------------------------------------------------------------------


# Modules that define the other commands with @command (the CLI layer: the library modules
# they call never import this one); they are imported only when the parser is built, so
# `import dfl` stays light.
COMMAND_MODULES: list[str] = [
    "dfl.commands.reproduce",
    "dfl.commands.conv",
    "dfl.commands.shapes",
    "dfl.commands.attention",
    "dfl.sweep.commands",
]


def build_parser() -> argparse.ArgumentParser:
    for module in COMMAND_MODULES:
        importlib.import_module(module)
    parser = Parser(
        prog="dfl",
        description="Deep feature learning on MNIST: train models, run sweeps, reproduce the lab.",
        epilog="Every command has --help. Example: dfl train cnn_lab --epochs 2. "
        "Environment: DFL_DATA_DIR (where datasets are cached), DFL_MALLOC_TUNING=0 (leave "
        "glibc's malloc as the system set it up; see the README's Speed section), "
        "DFL_SHARE_CORES=0 (a CPU run without --threads keeps one thread per core instead of "
        "sharing the cores with the other dfl trainings alive on the machine), DFL_FUSE=off "
        "(train every run alone where --fuse auto would train same-shape runs as one).",
    )
    from dfl import __version__

    parser.add_argument("--version", action="version", version=f"dfl {__version__}")
    sub = parser.add_subparsers(
        dest="command", required=True, parser_class=Parser, metavar="COMMAND"
    )
    for name, add in COMMANDS.items():
        add(sub.add_parser(name, help=add.help, description=add.help))
    return parser


def parser_before(
    parser: argparse.ArgumentParser, argv: list[str], token: str
) -> argparse.ArgumentParser:
    """The innermost (sub)command parser named in `argv` before `token`: `dfl --bogus models`
    is the top-level parser's unknown option, `dfl models --bogus` the models parser's."""
    at = len(argv) - 1 - argv[::-1].index(token)  # its last place: `dfl data info info`
    for word in argv[:at]:
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction) and word in action.choices:
                parser = action.choices[word]
    return parser


# Options that name a file or directory: an empty one would silently mean the default (or
# the current directory), so it is refused instead.
PATH_OPTIONS = ("out", "config", "storage", "dataset", "data_dir")
PATH_ARGUMENTS = ("run_dir", "spec")  # and the required ones, which have no default


def _check_paths(args: argparse.Namespace) -> None:
    for name in PATH_OPTIONS + PATH_ARGUMENTS:
        value = getattr(args, name, None)
        if isinstance(value, str) and not value.strip():
            if name in PATH_ARGUMENTS:
                raise DflError(f"{name.upper()} is empty; name one (see --help)")
            flag = "--" + name.replace("_", "-")
            raise DflError(f"{flag} is empty; give a path, or leave {flag} out for the default")


def _again(args: argparse.Namespace | None) -> str:
    """How the command goes on where it stopped: `dfl train` asks for --resume; reproduce,
    lab and sweep always continue."""
    command = getattr(args, "command", None)
    return "run the same command again" + (" with --resume" if command == "train" else "")


def main(argv: list[str] | None = None) -> int:
    caller = CALLER.set("cli")  # messages name options as flags (--out), not keywords (out=)
    try:
        return _main(argv)
    finally:
        CALLER.reset(caller)


def _main(argv: list[str] | None) -> int:
    args: argparse.Namespace | None = None
    with InterruptOnce(), SigtermAsInterrupt():
        try:
            # A Ctrl-C during the imports (the parser's, then torch) waits for them to finish,
            # then ends the command like any other. Torch comes after parsing: --help and a
            # mistyped flag do not wait for it.
            with deferred_interrupt():
                parser = build_parser()
            given = sys.argv[1:] if argv is None else list(argv)
            args, extra = parser.parse_known_args(given)
            if extra:  # said by the (sub)command's parser, whose --help lists its options
                parser_before(parser, given, extra[0]).error(
                    f"unrecognized arguments: {' '.join(extra)}"
                )
            _check_paths(args)
            with deferred_interrupt():
                from dfl.runtime import flushed_to_zero
            with flushed_to_zero():  # before torch starts its threads: they inherit it
                return args.run(args) or 0
        except DflError as e:
            told = disk_full(e) and "free some space" not in str(e)  # a checkpoint's, a sweep's
            how = f"; free some space and {_again(args)}" if told else ""
            print(f"dfl: error: {e}{how}", file=sys.stderr)
            return e.exit_code
        except BrokenPipeError:  # `dfl models | head`: the reader has what it wanted
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no flush error
            return 141  # as a shell reports a command ended by SIGPIPE
        except OSError as e:  # a full disk, an unwritable directory: say which file, lose nothing
            where = f" ({e.filename})" if e.filename else ""
            how = f"; free some space and {_again(args)}" if disk_full(e) else ""
            print(f"dfl: error: {e.strerror or e}{where}{how}", file=sys.stderr)
            return 1
        except ReaderGone:
            return 141  # as a shell reports a command ended by SIGPIPE; nobody reads a message
        except KeyboardInterrupt:
            print(f"dfl: interrupted; {_again(args)} to continue", file=sys.stderr)
            return interrupted_exit_code()


if __name__ == "__main__":
    sys.exit(main())
