"""The attack matrix on the MNIST subset: experiments/audit.toml → experiments/results/attack_matrix.

    python experiments/attack_matrix.py                 # the README's matrix (~10 CPU-min)
    python experiments/attack_matrix.py --quick --out /tmp/attack_matrix    # reduced budgets
    python experiments/attack_matrix.py --config experiments/audit_quick.toml --out /tmp/aq

Writes report.json (after every cell), report.md (the table, its budgets and this command) and
plots/ (LiRA log-log ROC per pipeline, backdoor ASR / clean accuracy, poisoning drops). The same
run is ``fedistill audit --config experiments/audit.toml --out experiments/results/attack_matrix``.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from _bench import REPO, RESULTS, command_line

from attacks.cli import load_keep
from attacks.matrix import load_config, quick, run_matrix
from fedistill.errors import FedistillError


def render_only(out: Path) -> int:
    """report.md and the plots again from a finished report.json (the renderers changed, the
    measurements did not)."""
    from attacks.matrix import render_markdown, write_plots

    report = json.loads((out / "report.json").read_text())
    report["plots"] = write_plots(report, out / "plots")
    (out / "report.json").write_text(json.dumps(report, indent=1) + "\n")
    (out / "report.md").write_text(render_markdown(report))
    print(f"rewrote {out / 'report.md'} from {out / 'report.json'}")
    return 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", type=Path, default=REPO / "experiments" / "audit.toml")
    ap.add_argument("--out", type=Path, default=RESULTS / "attack_matrix")
    ap.add_argument("--quick", action="store_true", help="reduced budgets (a first try)")
    ap.add_argument("--data-root", default=None, help="override the config's data-root")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (config: 2)")
    ap.add_argument("--quiet", action="store_true", help="no progress bar")
    ap.add_argument(
        "--keep-from", type=Path, default=None, help="an earlier report.json: keep its cells"
    )
    ap.add_argument("--rerun", default="", help="with --keep-from: cell kinds to measure again")
    ap.add_argument(
        "--render",
        action="store_true",
        help="only rewrite report.md (and the plots) from OUT/report.json; measure nothing",
    )
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    if not args.quiet:
        logging.getLogger("attacks.matrix").setLevel(logging.INFO)
    if args.render:
        return render_only(args.out)
    command = command_line()
    print(command, flush=True)
    try:
        cfg = load_config(args.config)
        if args.data_root is not None:
            cfg.data_root = args.data_root
        if args.threads is not None:
            cfg.threads = args.threads
        if args.quick:
            cfg = quick(cfg)
        keep, rerun = load_keep(args.keep_from, args.rerun)
        report = run_matrix(
            cfg, args.out, command=command, progress=not args.quiet, keep=keep, rerun=rerun
        )
    except FedistillError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    cells = [c for row in report["cells"].values() for c in row.values()]
    failed = sum(c["status"] == "failed" for c in cells)
    print(
        f"wrote {args.out / 'report.md'} and report.json: {len(cells)} cells, {failed} failed, "
        f"{report['seconds'] / 60:.1f} min"
    )
    print(command)
    return 0


if __name__ == "__main__":
    sys.exit(main())
