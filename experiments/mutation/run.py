"""Mutation testing of the modules where a silent bug costs most, with cosmic-ray.

    pip install cosmic-ray==8.7.0          # not a project dependency: this is slow and manual
    python experiments/mutation/run.py                      # all five modules (~1 h on 2 cores)
    python experiments/mutation/run.py validate metrics     # some of them
    python experiments/mutation/run.py --recheck validate   # re-run one module's survivors
                                                            # against the tests as they are now

cosmic-ray rewrites the source file in place, so everything runs in a fresh clone of this
repository's last commit (``--clone``, default /tmp/fedistill-mutation), never in the working
tree: commit the tests first. Each module has its config, ``experiments/mutation/<name>.toml``:
the module, the tests that exercise it (a plain pytest command, so the file also works with
``cosmic-ray exec`` directly, only slower), the per-mutant timeout, and ``[fedistill]``: the
functions mutated (``<module>`` for module-level constants; empty: all).

Which mutants (the same rules for every module, applied as a filter on the cosmic-ray
session, so the skipped ones are still listed as skipped in its database):

* comparison operators: the boundary and the negation only (``<`` → ``<=``, ``>=``; ``==`` →
  ``!=``; ``is`` → ``is not``; ``in`` → ``not in``), not all seven replacements of each;
* binary operators: one replacement each (``+`` ↔ ``-``, ``*`` ↔ ``/``, ``//`` → ``/``, ``%``
  → ``//``, ``**`` → ``*``, ``&`` ↔ ``|``, ``^`` → ``|``, shifts swapped), not all eleven;
* unary operators deleted (``not x`` → ``x``, ``-x`` → ``x``); ``not`` added to conditions;
  ``True``/``False`` and ``and``/``or`` swapped; numbers ± 1; ``break``/``continue`` swapped;
  ``for`` loops emptied;
* not mutated: type annotations (never evaluated: every module has ``from __future__ import
  annotations``), variable replacement/insertion and exception replacement (cosmic-ray's
  noisiest operators, mostly killed by any test at all), decorator removal.

Each test run goes through ``forkserver.py`` (a warm interpreter that forks a fresh pytest per
mutant), which is what makes an hour enough. Reports: ``experiments/results/mutation/<name>.txt``
(counts, and every survivor with file:line, operator and diff) and ``summary.json``.
"""

from __future__ import annotations

import argparse
import ast
import hashlib
import json
import os
import platform
import shlex
import shutil
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import tomllib

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
RESULTS = REPO / "experiments" / "results" / "mutation"
MODULES = ("synthetic", "validate", "metrics", "privacy", "psg")

CMP = {
    "Lt": ("LtE", "GtE"),
    "LtE": ("Lt", "Gt"),
    "Gt": ("GtE", "LtE"),
    "GtE": ("Gt", "Lt"),
    "Eq": ("NotEq",),
    "NotEq": ("Eq",),
    "Is": ("IsNot",),
    "IsNot": ("Is",),
    "In": ("NotIn",),
    "NotIn": ("In",),
}
BIN = {
    "Add": "Sub",
    "Sub": "Add",
    "Mul": "Div",
    "Div": "Mul",
    "FloorDiv": "Div",
    "Mod": "FloorDiv",
    "Pow": "Mul",
    "BitAnd": "BitOr",
    "BitOr": "BitAnd",
    "BitXor": "BitOr",
    "LShift": "RShift",
    "RShift": "LShift",
    "MatMult": "Mul",
}
SIMPLE = {
    "NumberReplacer",
    "AddNot",
    "ReplaceTrueWithFalse",
    "ReplaceFalseWithTrue",
    "ReplaceAndWithOr",
    "ReplaceOrWithAnd",
    "ReplaceBreakWithContinue",
    "ReplaceContinueWithBreak",
    "ZeroIterationForLoop",
}


def kept_operator(name: str) -> bool:
    op = name.split("/")[-1]
    if op in SIMPLE:
        return True
    parts = op.split("_")
    if parts[0] == "ReplaceComparisonOperator":
        return parts[2] in CMP.get(parts[1], ())
    if parts[0] == "ReplaceBinaryOperator":
        return BIN.get(parts[1]) == parts[2]
    if parts[0] == "ReplaceUnaryOperator":
        return parts[1] == "Delete"
    return False


def annotation_spans(source: str) -> list[tuple[tuple[int, int], tuple[int, int]]]:
    spans = []
    for node in ast.walk(ast.parse(source)):
        found = []
        if isinstance(node, ast.arg) and node.annotation is not None:
            found.append(node.annotation)
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and node.returns:
            found.append(node.returns)
        if isinstance(node, ast.AnnAssign):
            found.append(node.annotation)
        spans += [((a.lineno, a.col_offset), (a.end_lineno, a.end_col_offset)) for a in found]
    return spans


def operator_spans(source: str) -> list[tuple[tuple[int, int], tuple[int, int]]]:
    """Where the binary operators are: cosmic-ray also "replaces" the keyword-only marker
    ``*`` of a signature by ``/`` (positional-only), which is no arithmetic and only changes
    how arguments may be passed; binary-operator mutants outside these spans are skipped."""
    return [
        ((n.lineno, n.col_offset), (n.end_lineno, n.end_col_offset))
        for n in ast.walk(ast.parse(source))
        if isinstance(n, ast.BinOp | ast.AugAssign)
    ]


def apply_filter(session: Path, source: str, functions: list[str]) -> dict[str, int]:
    """Mark as skipped every pending mutant outside the policy above or outside ``functions``."""
    from cosmic_ray.work_db import WorkDB, use_db
    from cosmic_ray.work_item import WorkerOutcome, WorkResult

    spans = annotation_spans(source)
    ops = operator_spans(source)
    why_counts = {"operator": 0, "annotation": 0, "signature": 0, "function": 0}
    with use_db(str(session), WorkDB.Mode.open) as db:
        for item in list(db.pending_work_items):
            (m,) = item.mutations
            where = tuple(m.start_pos)
            why = None
            if not kept_operator(m.operator_name):
                why = "operator"
            elif any(a <= where < b for a, b in spans):
                why = "annotation"
            elif "BinaryOperator" in m.operator_name and not any(a <= where < b for a, b in ops):
                why = "signature"
            elif functions and (m.definition_name or "<module>") not in functions:
                why = "function"
            if why:
                why_counts[why] += 1
                db.set_result(
                    item.job_id,
                    WorkResult(output=f"filtered: {why}", worker_outcome=WorkerOutcome.SKIPPED),
                )
    return why_counts


def pytest_args(command: str, root: Path) -> list[str]:
    """The pytest arguments of a config's ``python -m pytest ...`` test command, less the test
    files that do not exist (yet) in ``root``."""
    words = shlex.split(command)
    if words[:3] != ["python", "-m", "pytest"]:
        raise SystemExit(f"test-command must start with 'python -m pytest': {command}")
    return [
        w for w in words[3:] if not w.startswith("tests/") or (root / w.split("::")[0]).exists()
    ]


def load_config(name: str) -> dict:
    with open(HERE / f"{name}.toml", "rb") as f:
        return tomllib.load(f)


def session_config(
    cfg: dict, client: str, alarm: int, workdir: Path, name: str, root: Path
) -> Path:
    """The config cosmic-ray runs: the module's, its test command sent to the fork server."""
    cr = cfg["cosmic-ray"]
    args = " ".join(shlex.quote(a) for a in pytest_args(cr["test-command"], root))
    lines = [
        "[cosmic-ray]",
        f"module-path = {json.dumps(cr['module-path'])}",
        f"timeout = {float(cr['timeout'])}",
        "excluded-modules = []",
        f"test-command = {json.dumps(f'{client} {alarm} {args}')}",
        "[cosmic-ray.distributor]",
        'name = "local"',
    ]
    path = workdir / f"{name}.session.toml"
    path.write_text("\n".join(lines) + "\n")
    return path


def outcomes(session: Path) -> list[dict]:
    con = sqlite3.connect(session)
    rows = con.execute(
        "SELECT s.job_id, s.operator_name, s.occurrence, s.start_pos_row, s.definition_name, "
        "r.worker_outcome, r.test_outcome, r.output, r.diff FROM mutation_specs s "
        "LEFT JOIN work_results r ON r.job_id = s.job_id ORDER BY s.start_pos_row, s.operator_name"
    ).fetchall()
    con.close()
    keys = ("job", "operator", "occurrence", "line", "function", "worker", "test", "output", "diff")
    return [dict(zip(keys, r, strict=True)) for r in rows]


def status_of(row: dict) -> str:
    if row["worker"] is None:
        return "pending"
    row = {k: (v.lower() if k in ("worker", "test") and v else v) for k, v in row.items()}
    if row["worker"] == "skipped":
        return "skipped"
    if row["worker"] != "normal":
        return "error"
    if row["test"] == "killed":
        return "timeout" if (row["output"] or "").strip() == "timeout" else "killed"
    return row["test"]  # survived / incompetent


def write_report(name: str, cfg: dict, session: Path, meta: dict) -> dict:
    rows = outcomes(session)
    counts: dict[str, int] = {}
    for r in rows:
        counts[status_of(r)] = counts.get(status_of(r), 0) + 1
    run = sum(v for k, v in counts.items() if k not in ("skipped", "pending"))
    module = cfg["cosmic-ray"]["module-path"]
    survivors = [r for r in rows if status_of(r) == "survived"]
    lines = [
        f"# cosmic-ray mutation report: {module}",
        f"command: {meta['command']}",
        f"tests: {cfg['cosmic-ray']['test-command']}",
        f"functions mutated: {', '.join(cfg.get('fedistill', {}).get('functions', [])) or 'all'}",
        f"commit: {meta['commit']}  module sha256: {meta['sha256'][:16]}",
        f"machine: {meta['machine']}; load before {meta['load_before']}, after "
        f"{meta.get('load_after', '?')}; {meta.get('seconds', 0):.0f} s for {run} mutants "
        f"(baseline test run {meta['baseline_seconds']:.1f} s)",
        *(
            [f"first run: {meta['first_run']}; this one re-ran its survivors only"]
            if "first_run" in meta
            else []
        ),
        "",
        f"generated {len(rows)}; filtered out {counts.get('skipped', 0)} "
        f"({meta.get('filtered', {})})",
        f"run {run}: killed {counts.get('killed', 0)}, timeout {counts.get('timeout', 0)}, "
        f"survived {counts.get('survived', 0)}, incompetent {counts.get('incompetent', 0)}, "
        f"error {counts.get('error', 0)}, pending {counts.get('pending', 0)}",
        f"mutation score (killed + timeout) / run: "
        f"{(counts.get('killed', 0) + counts.get('timeout', 0)) / max(run, 1):.1%}",
        "",
        f"## survivors ({len(survivors)})",
    ]
    for r in survivors:
        op = r["operator"].split("/")[-1]
        lines.append(
            f"- {module}:{r['line']} in {r['function'] or '<module>'}: {op} #{r['occurrence']}"
        )
        for d in (r["diff"] or "").splitlines():
            if d.startswith(("-", "+")) and not d.startswith(("---", "+++")):
                lines.append(f"    {d.strip()}")
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{name}.txt").write_text("\n".join(lines) + "\n")
    return {"module": module, "generated": len(rows), "run": run, **counts, **meta}


def load() -> str:
    return (
        Path("/proc/loadavg").read_text().split(" ")[0] if Path("/proc/loadavg").exists() else "?"
    )


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{cpu}, {os.cpu_count()} cores"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("modules", nargs="*", help=f"some of {', '.join(MODULES)} (default: all)")
    p.add_argument("--clone", default="/tmp/fedistill-mutation", help="scratch clone (replaced)")
    p.add_argument("--sessions", help="where the sessions live (default: beside the clone)")
    p.add_argument("--recheck", action="store_true", help="re-run the last survivors only")
    args = p.parse_args(argv)
    names = args.modules or list(MODULES)
    if set(names) - set(MODULES):
        p.error(f"unknown module(s) {sorted(set(names) - set(MODULES))}; choose from {MODULES}")

    clone = Path(args.clone)
    workdir = Path(args.sessions or clone.parent / (clone.name + "-sessions"))
    workdir.mkdir(parents=True, exist_ok=True)
    if clone.exists():
        shutil.rmtree(clone)
    subprocess.run(["git", "clone", "--quiet", str(REPO), str(clone)], check=True)
    shared = clone.parent / "shared"  # the mnist tests look for ../shared beside the checkout
    if not shared.exists() and (REPO.parent / "shared").exists():
        shared.symlink_to(REPO.parent / "shared")
    commit = subprocess.run(
        ["git", "rev-parse", "HEAD"], cwd=clone, capture_output=True, text=True, check=True
    ).stdout.strip()

    env = dict(os.environ, PYTHONPATH=str(clone), OMP_NUM_THREADS="1", MPLBACKEND="Agg")
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    sock = workdir / f"{clone.name}.sock"
    prime = ["fedistill.federated", "fedistill.distill.psg", "server.validate", "attacks.metrics"]
    prime.append("clients.client_app")
    server = subprocess.Popen(
        [sys.executable, str(HERE / "forkserver.py"), "serve", str(sock), *prime],
        cwd=clone,
        env=env,
    )
    summary_path = RESULTS / "summary.json"
    try:
        while not sock.exists():
            if server.poll() is not None:
                raise SystemExit("the fork server did not start")
            time.sleep(1)
        client = f"{sys.executable} {HERE / 'forkserver.py'} run {sock}"
        for name in names:
            result = run_module(name, clone, workdir, client, env, commit, args.recheck)
            # re-read: another run (other modules, another clone) may have written meanwhile
            summary = json.loads(summary_path.read_text()) if summary_path.exists() else {}
            summary[name] = result
            summary_path.write_text(json.dumps(summary, indent=2) + "\n")
    finally:
        subprocess.run([sys.executable, str(HERE / "forkserver.py"), "stop", str(sock)], env=env)
        server.wait(timeout=60)
    return 0


def run_module(
    name: str, clone: Path, workdir: Path, client: str, env: dict, commit: str, recheck: bool
) -> dict:
    cfg = load_config(name)
    cr = cfg["cosmic-ray"]
    module = clone / cr["module-path"]
    source = module.read_text()
    sha = hashlib.sha256(source.encode()).hexdigest()
    session = workdir / f"{name}.sqlite"
    side = workdir / f"{name}.json"
    alarm = int(float(cr["timeout"])) - 5  # the child's own limit, inside cosmic-ray's
    config = session_config(cfg, client, alarm, workdir, name, clone)
    argv = ["python", "experiments/mutation/run.py", *(["--recheck"] if recheck else []), name]
    meta = {
        "command": " ".join(argv),
        "commit": commit,
        "sha256": sha,
        "machine": machine(),
        "load_before": load(),
    }

    for _attempt in range(2):  # once more on a failure: a loaded machine has hiccups
        t0 = time.time()
        base = subprocess.run(shlex.split(f"{client} {alarm}") + pytest_args(cr["test-command"], clone),
                              cwd=clone, env=env)  # fmt: skip
        meta["baseline_seconds"] = time.time() - t0
        if base.returncode == 0:
            break
    if base.returncode != 0:
        raise SystemExit(f"{name}: the tests fail on the unmutated code (exit {base.returncode})")

    if recheck:
        old = json.loads(side.read_text())
        if old["sha256"] != sha:
            raise SystemExit(f"{name}: {cr['module-path']} changed since the session; run it anew")
        con = sqlite3.connect(session)
        con.execute(
            "DELETE FROM work_results WHERE test_outcome = 'SURVIVED' OR test_outcome = 'survived'"
        )
        con.commit()
        con.close()
        first = old.get("first_run") or old  # a recheck of a recheck keeps the first run's
        meta["first_run"] = {
            k: first.get(k) for k in ("seconds", "load_before", "load_after", "commit")
        }
        again = apply_filter(session, source, cfg.get("fedistill", {}).get("functions", []))
        meta["filtered"] = {k: old.get("filtered", {}).get(k, 0) + again.get(k, 0) for k in again}
    else:
        session.unlink(missing_ok=True)
        subprocess.run(["cosmic-ray", "init", str(config), str(session)], cwd=clone, env=env,
                       check=True)  # fmt: skip
        functions = cfg.get("fedistill", {}).get("functions", [])
        meta["filtered"] = apply_filter(session, source, functions)
    side.write_text(json.dumps(meta))
    t0 = time.time()
    subprocess.run(["cosmic-ray", "exec", str(config), str(session)], cwd=clone, env=env,
                   check=True)  # fmt: skip
    meta["seconds"] = time.time() - t0
    meta["load_after"] = load()
    side.write_text(json.dumps(meta))
    if module.read_text() != source:
        raise SystemExit(f"{name}: cosmic-ray left {module} mutated")
    return write_report(name, cfg, session, meta)


if __name__ == "__main__":
    sys.exit(main())
