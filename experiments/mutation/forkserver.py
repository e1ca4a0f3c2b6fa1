"""A warm pytest for mutation testing: one process imports the heavy third-party libraries once
(torch, flwr, numpy, scipy, matplotlib, hypothesis, pytest), then forks a fresh child per test
run. The child imports the project (``fedistill``, ``server``, ``attacks``, ``clients``, the
tests) from disk, so it sees the mutant cosmic-ray just wrote; the parent never imports them.

Each mutant then costs its tests' time, not the ~10 s of imports on a loaded 2-core machine.

    python forkserver.py serve SOCKET MODULES... # the warm parent: every third-party module that
                                            # importing MODULES loads (run.py starts/stops it)
    python forkserver.py run SOCKET TIMEOUT ARGS  # cosmic-ray's test command: pytest ARGS in a
                                                  # fresh child; exit status is pytest's, 3 on
                                                  # a timeout, 128 + N on signal N (all: killed)

The client imports nothing heavy; it stays a few tens of milliseconds.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import sys

WARM = ("numpy", "scipy.stats", "torch", "flwr.app", "matplotlib.pyplot", "hypothesis", "pytest")
PROJECT = ("fedistill", "server", "attacks", "clients", "tests", "experiments", "conftest")
_LIST = (
    "import importlib, sys\n"
    "for name in sys.argv[1:]:\n"
    "    importlib.import_module(name)\n"
    "print('\\n'.join(m for m in sys.modules if m.split('.')[0] not in {project!r}))\n"
)


def third_party(prime: list[str]) -> list[str]:
    """Every module outside the project that importing ``prime`` loads, in import order,
    found in a throwaway interpreter so this one never imports the project."""
    import subprocess

    code = _LIST.format(project=set(PROJECT))
    out = subprocess.run(
        [sys.executable, "-c", code, *WARM, *prime], capture_output=True, text=True, check=True
    )
    return out.stdout.split()


def serve(path: str, prime: list[str]) -> None:
    import importlib

    import matplotlib

    matplotlib.use("Agg")
    for name in third_party(prime):
        # a module that only imports as a side effect of another fails here: harmless
        with contextlib.suppress(Exception):
            importlib.import_module(name)
    from importlib.metadata import entry_points

    for plugin in entry_points(group="pytest11"):  # pytest's plugins (anyio's alone takes seconds)
        with contextlib.suppress(Exception):
            plugin.load()
    import gc

    gc.collect()
    gc.freeze()  # the warm heap is permanent: a child's gc (pytest collects at exit) skips it
    sys.dont_write_bytecode = True  # a mutant and the original may share an mtime second
    if os.path.exists(path):
        os.unlink(path)
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(path)
    server.listen(1)
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    while True:
        conn, _ = server.accept()
        with conn:
            request = json.loads(_read(conn))
            if request.get("stop"):
                break
            status = _run_child(request["args"], float(request["timeout"]), request["cwd"])
            with contextlib.suppress(OSError):  # the client was killed on cosmic-ray's timeout
                conn.sendall(json.dumps({"status": status}).encode() + b"\n")
    server.close()
    os.unlink(path)


def _run_child(args: list[str], timeout: float, cwd: str) -> int:
    pid = os.fork()
    if pid == 0:  # the child: a fresh pytest over the files as they are on disk now
        status = 1
        try:
            os.setsid()
            os.chdir(cwd)
            sys.path.insert(0, cwd)
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, 1)
            os.dup2(devnull, 2)
            signal.alarm(max(1, int(timeout)))
            import pytest

            status = int(pytest.main([*args, "--assert=plain", "-p", "no:unraisableexception"]))
        finally:
            os._exit(status)
    try:
        _, raw = os.waitpid(pid, 0)
    except BaseException:
        os.killpg(pid, signal.SIGKILL)
        raise
    with contextlib.suppress(OSError):  # what the tests started (a subprocess) goes too
        os.killpg(pid, signal.SIGKILL)
    if os.WIFSIGNALED(raw):  # the alarm: a timeout (3); another signal: 128 + its number
        return 3 if os.WTERMSIG(raw) == signal.SIGALRM else 128 + os.WTERMSIG(raw)
    return os.WEXITSTATUS(raw)


def _read(conn: socket.socket) -> bytes:
    chunks = []
    while not chunks or not chunks[-1].endswith(b"\n"):
        chunk = conn.recv(65536)
        if not chunk:
            break
        chunks.append(chunk)
    return b"".join(chunks)


def request(path: str, payload: dict) -> dict:
    client = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    client.connect(path)
    with client:
        client.sendall(json.dumps(payload).encode() + b"\n")
        raw = _read(client)
    return json.loads(raw) if raw else {}


def main(argv: list[str]) -> int:
    if len(argv) >= 2 and argv[0] == "serve":
        serve(argv[1], argv[2:])
        return 0
    if len(argv) >= 2 and argv[0] == "stop":
        request(argv[1], {"stop": True})
        return 0
    if len(argv) >= 3 and argv[0] == "run":
        reply = request(argv[1], {"args": argv[3:], "timeout": argv[2], "cwd": os.getcwd()})
        status = int(reply.get("status", 5))
        if status == 3:
            print("timeout")  # what cosmic-ray records for its own timeouts too
        return status
    print(
        "usage: forkserver.py serve SOCKET | stop SOCKET | run SOCKET TIMEOUT PYTEST-ARGS...",
        file=sys.stderr,
    )
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
