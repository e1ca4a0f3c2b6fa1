"""The ``fedistill`` command line.

    fedistill distill --method dm --dataset mnist --data-root DIR --ipc 10 --iterations 200 --seed 0 --out FILE
    fedistill evaluate FILE --data-root DIR --epochs 300 --models 3 --json
    fedistill show FILE --out grid.png
    fedistill methods

Packages outside the library add subcommands through the ``fedistill.commands`` entry-point
group (``fedistill run`` from ``server``, ``fedistill audit`` from ``attacks``), so the library
itself never imports them. Bad input prints one line on stderr and exits with code 2.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Callable, Sequence
from importlib.metadata import entry_points
from pathlib import Path

from fedistill.config import parse_options
from fedistill.errors import FedistillError

log = logging.getLogger("fedistill")

EXIT_USAGE = 2


class UsageError(FedistillError):
    pass


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line, exit 2 (argparse would print usage)
        raise UsageError(f"{self.prog}: {message}")


def positive_int(text: str) -> int:
    """argparse type: an integer ≥ 1 (every fedistill command's counts)."""
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got '{text}'") from None
    if v < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {v}")
    return v


def _add_common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", default="cpu", help="torch device (cpu, cuda, cuda:1, …)")
    p.add_argument("--quiet", "-q", action="store_true", help="no progress bars, warnings only")


def _method_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("method options (only those the method takes may be given)")
    g.add_argument("--iterations", type=positive_int)
    g.add_argument("--init", choices=["real", "noise"])
    g.add_argument("--lr-img", type=float, dest="lr_img")
    g.add_argument("--batch-real", type=positive_int, dest="batch_real")
    g.add_argument("--dsa-strategy", dest="dsa_strategy")
    g.add_argument(
        "--soft-labels",
        action="store_true",
        default=None,
        dest="learn_labels",
        help="learn soft labels where the method allows",
    )
    g.add_argument("--rho", type=float, help="KIP-ρ: fraction of each image kept as fixed noise")
    g.add_argument("--epsilon", type=float, help="DP-PSG target ε")
    g.add_argument("--delta", type=float, help="DP-PSG δ")
    g.add_argument("--clip", type=float, help="DP-PSG per-sample clipping norm C")
    g.add_argument("--accountant", choices=["rdp", "prv"])
    g.add_argument(
        "--kernel",
        choices=["convnet", "nngp", "ntk"],
        help="KIP: the ConvNet's random-feature NNGP (default) or the FC NNGP/NTK",
    )
    g.add_argument(
        "--option",
        "-o",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="any other field of the method's config (JSON value), repeatable",
    )


METHOD_FLAGS = (
    "iterations",
    "init",
    "lr_img",
    "batch_real",
    "dsa_strategy",
    "learn_labels",
    "rho",
    "epsilon",
    "delta",
    "clip",
    "accountant",
    "kernel",
)


def _overrides(args: argparse.Namespace) -> dict:
    out = {k: getattr(args, k) for k in METHOD_FLAGS if getattr(args, k) is not None}
    out |= parse_options(args.option, "--option")
    return out


# --------------------------------------------------------------------------- commands


def cmd_distill(args: argparse.Namespace) -> int:
    from fedistill.data import load_dataset
    from fedistill.distill import distill, get_method

    method = get_method(args.method)  # fail on a bad name before loading any data
    config = method.make_config(**_overrides(args))
    real = load_dataset(args.dataset, args.data_root, train=True, download=args.download)
    syn = distill(
        args.method,
        real,
        args.ipc,
        config,
        seed=args.seed,
        device=args.device,
        progress=not args.quiet,
    )
    path = syn.save(args.out)
    print(
        f"wrote {path}: {len(syn)} images {tuple(syn.images.shape[1:])} by {args.method}"
        + _privacy_suffix(syn)
    )
    return 0


def _privacy_suffix(syn) -> str:
    """``", ε = … (δ = …)"`` for a private set, with its NOT-A-GUARANTEE mark where the noise
    is replayable from the seed; empty for a set without privacy facts."""
    from fedistill.privacy import privacy_summary

    text = privacy_summary(syn.privacy)
    return f", {text}" if text else ""


def cmd_evaluate(args: argparse.Namespace) -> int:
    from fedistill.data import load_dataset
    from fedistill.evaluate import EvalConfig, evaluate_set
    from fedistill.synthetic import SyntheticSet

    if args.geometry is not None and args.model != "convnet":
        raise UsageError(f"--geometry is a ConvNet option; the model is '{args.model}'")
    syn = SyntheticSet.load(args.file)
    test = load_dataset(syn.meta["dataset"], args.data_root, train=False, download=args.download)
    cfg = EvalConfig(
        model=args.model,
        epochs=args.epochs,
        num_models=args.models,
        dsa=not args.no_dsa,
        precision=args.precision,
        model_kwargs={} if args.geometry is None else {"geometry": args.geometry},
    )
    res = evaluate_set(
        syn, test, cfg, seed=args.seed, device=args.device, progress=not (args.quiet or args.json)
    )
    out = res.to_dict() | {
        "file": str(args.file),
        "method": syn.meta["method"],
        "ipc": syn.meta["ipc"],
        "dataset": syn.meta["dataset"],
    }
    if args.json:
        print(json.dumps(out))
    else:
        accs = ", ".join(f"{a:.4f}" for a in res.accuracies)
        print(
            f"{syn.meta['method']} ipc {syn.meta['ipc']} on {syn.meta['dataset']}: "
            f"{100 * res.mean:.2f} ± {100 * res.std:.2f} % ({args.models} × {args.model}, "
            f"{args.epochs} epochs; {accs})"
        )
    return 0


def cmd_show(args: argparse.Namespace) -> int:
    from fedistill.plots import save_grid
    from fedistill.synthetic import SyntheticSet

    syn = SyntheticSet.load(args.file)
    path = save_grid(syn, args.out)
    print(f"wrote {path}: {syn.meta['method']} ipc {syn.meta['ipc']}" + _privacy_suffix(syn))
    return 0


def cmd_methods(args: argparse.Namespace) -> int:
    from fedistill.distill import methods

    for name, m in methods().items():
        print(f"{name:8s} {m.summary}")
    return 0


# --------------------------------------------------------------------------- parser


def build_parser() -> argparse.ArgumentParser:
    from fedistill.models import DEFAULT_GEOMETRY, GEOMETRIES  # evaluate's choices
    from fedistill.trainer import PRECISIONS

    parser = _Parser(prog="fedistill", description="Federated learning by dataset distillation.")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    p = sub.add_parser("distill", help="distill a dataset into a synthetic set file")
    p.add_argument("--method", required=True)
    p.add_argument("--dataset", default="digits")
    p.add_argument("--data-root", default=None)
    p.add_argument("--download", action="store_true", help="download missing data (online)")
    p.add_argument("--ipc", type=positive_int, default=10, help="images per class")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", required=True, type=Path)
    _method_options(p)
    _add_common(p)
    p.set_defaults(func=cmd_distill)

    p = sub.add_parser("evaluate", help="train fresh models on a set, report test accuracy")
    p.add_argument("file", type=Path)
    p.add_argument("--data-root", default=None)
    p.add_argument("--download", action="store_true")
    p.add_argument("--epochs", type=positive_int, default=300)
    p.add_argument("--models", type=positive_int, default=3)
    p.add_argument("--model", default="convnet", choices=["convnet", "mlp", "lenet", "resnet18"])
    p.add_argument("--no-dsa", action="store_true", help="train without DSA augmentation")
    p.add_argument(
        "--geometry",
        choices=GEOMETRIES,
        help="ConvNet on 28-px images: the reference code's 32→16→8→4 maps or the compact "
        f"28→14→7→3 (default: {DEFAULT_GEOMETRY})",
    )
    p.add_argument(
        "--precision",
        choices=PRECISIONS,
        default="fp32",
        help="bf16: autocast, faster where the CPU has bf16 units, not equal to fp32",
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", action="store_true", help="print one JSON object")
    _add_common(p)
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("show", help="save an image grid of a set, a row per class")
    p.add_argument("file", type=Path)
    p.add_argument("--out", required=True, type=Path)
    _add_common(p)
    p.set_defaults(func=cmd_show)

    p = sub.add_parser("methods", help="list the distillation methods")
    _add_common(p)
    p.set_defaults(func=cmd_methods)

    for ep in entry_points(group="fedistill.commands"):
        try:
            ep.load()(sub)
        except Exception as exc:  # a broken plugin must not break the library's commands
            log.debug("plugin command %s unavailable: %s", ep.name, exc)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    def command() -> int:
        args = build_parser().parse_args(argv)
        logging.basicConfig(
            level=logging.WARNING if args.quiet else logging.INFO,
            format="%(levelname)s %(name)s: %(message)s",
        )
        return int(args.func(args) or 0)

    return guarded(command)


def guarded(command: Callable[[], int]) -> int:
    """Run a CLI ``command``; a usage, data or file error is one line on stderr and exit 2,
    never a traceback (shared by ``fedistill`` and ``python -m attacks``)."""
    try:
        return command()
    except FedistillError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except (FileNotFoundError, IsADirectoryError, PermissionError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
