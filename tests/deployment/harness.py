"""Start and stop a real Flower deployment (SuperLink + SuperNodes) on 127.0.0.1.

Every process is started here with ``subprocess.Popen`` in its own session (process group),
with its output in a log file, and stopped by PID: SIGTERM to the group, then SIGKILL after a
bounded wait. Flower's processes start helpers of their own (``flower-superexec`` in a detached
session, ``flwr-serverapp`` / ``flwr-clientapp`` under it), so before signalling a process the
harness records its whole descendant tree from ``/proc`` (pid plus start time, so a reused PID
is never touched) and ends whatever of that tree outlives the group signal.

Flower 1.42 facts this module relies on (read from the installed package):

- ``flower-superlink`` serves the Fleet, Control and Runtime (ServerAppIo) APIs on ONE HTTP
  address, ``--host``/``--port`` (default 127.0.0.1:8000); ``--insecure`` or the three
  ``--ssl-ca-certfile/--ssl-certfile/--ssl-keyfile`` flags. Runtime dependency install is on
  by default: ``FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION=1`` turns it off.
- ``flower-supernode --superlink HOST:PORT`` with ``--insecure`` or ``--root-certificates``,
  ``--node-config 'partition-id=0 num-partitions=3'`` and its own Runtime (ClientAppIo) HTTP
  API on ``--host``/``--port`` (default 9094: one free port per node).
- ``flwr run APP CONNECTION`` reads the connection (``address``, ``insecure`` or
  ``root-certificates``) from ``$FLWR_HOME/config.toml`` (``[superlink.<name>]``); the old
  ``[tool.flwr.federations]`` table in ``pyproject.toml`` is *migrated* by ``flwr run``, which
  comments it out in that pyproject.toml, so runs here always use a staged copy of the app.
- A SuperNode that dies without saying goodbye is declared offline after 2 missed heartbeats
  (interval 30 s): the SuperLink then answers its pending messages with an error reply
  (``NODE_UNAVAILABLE``, code 5) whose source is the SuperLink, not the node.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import ipaddress
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from server.staging import run_config_arg

HOST = "127.0.0.1"
VENV_BIN = Path(sys.executable).parent


class DeploymentError(RuntimeError):
    """A deployment step failed; the message carries the relevant log tail."""


# ------------------------------------------------------------------------------ processes
def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free right now (bind to port 0 and read it back)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


def _proc_stat(pid: int) -> tuple[int, str, int] | None:
    """(ppid, state, start time) of a live PID from /proc, or None when it is gone."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    rest = raw[raw.rindex(")") + 2 :].split()  # the command name may contain spaces
    return int(rest[1]), rest[0], int(rest[19])


def _descendants(root: int) -> set[tuple[int, int]]:
    """All live descendants of ``root`` as (pid, start time) pairs."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and (stat := _proc_stat(int(entry.name))):
            children.setdefault(stat[0], []).append(int(entry.name))
    found: set[tuple[int, int]] = set()
    todo = [root]
    while todo:
        for child in children.get(todo.pop(), []):
            if (stat := _proc_stat(child)) is not None:
                found.add((child, stat[2]))
                todo.append(child)
    return found


def _running(pid: int, start: int) -> bool:
    """True while this exact process (same PID and start time) runs; zombies count as ended."""
    stat = _proc_stat(pid)
    return stat is not None and stat[2] == start and stat[1] != "Z"


def tail(path: Path, lines: int = 40) -> str:
    """The last lines of a log file (empty when it does not exist)."""
    try:
        text = path.read_text(errors="replace")
    except FileNotFoundError:
        return ""
    return "\n".join(text.splitlines()[-lines:])


@dataclass
class Proc:
    """One started process: its name, Popen handle and log file."""

    name: str
    popen: subprocess.Popen
    log: Path
    start: int = 0

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def log_text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""


@dataclass
class ProcessSet:
    """Processes started by a test; ``stop_all`` ends every one of them and their trees."""

    log_dir: Path
    term_timeout: float = 10.0
    procs: list[Proc] = field(default_factory=list)
    seen: set[tuple[int, int]] = field(default_factory=set)

    def start(
        self, name: str, argv: list[str], env: Mapping[str, str], cwd: Path | None = None
    ) -> Proc:
        """Start ``argv`` in its own session with stdout+stderr going to ``<log_dir>/<name>.log``."""
        self.log_dir.mkdir(parents=True, exist_ok=True)
        log = self.log_dir / f"{name}.log"
        with log.open("ab") as out:
            popen = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                env=dict(env),
                cwd=cwd,
                start_new_session=True,
            )
        stat = _proc_stat(popen.pid)
        proc = Proc(name, popen, log, stat[2] if stat else 0)
        self.procs.append(proc)
        self.seen.add((proc.pid, proc.start))
        return proc

    def snapshot(self) -> None:
        """Record the current descendants of every started process."""
        for proc in self.procs:
            self.seen |= _descendants(proc.pid)

    def stop(self, proc: Proc, sig: int = signal.SIGTERM) -> None:
        """End ``proc``, its process group and its recorded descendants, in bounded time."""
        tree = _descendants(proc.pid)
        self.seen |= tree
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, sig)
        try:
            proc.popen.wait(timeout=self.term_timeout if sig != signal.SIGKILL else 5)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.popen.wait(timeout=5)
        # helpers in other sessions (Flower's detached flower-superexec) get a grace period to
        # notice their parent is gone, then SIGKILL
        deadline = time.monotonic() + (3.0 if sig != signal.SIGKILL else 0.0)
        while time.monotonic() < deadline and any(_running(*p) for p in tree):
            time.sleep(0.2)
        for pid, start in tree:
            if _running(pid, start):
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(pid, signal.SIGKILL)

    def kill(self, proc: Proc) -> None:
        """Simulate a crash: SIGKILL the process, its group and its tree at once."""
        self.stop(proc, signal.SIGKILL)

    def stop_all(self) -> None:
        """Stop every started process and everything it started, in bounded time: SIGTERM
        to every group at once, then SIGKILL to whatever of the recorded trees still runs."""
        self.snapshot()
        for proc in self.procs:
            if proc.alive():
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(proc.pid, signal.SIGTERM)
        for pid, _start in self.still_running():  # descendants in sessions of their own
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + self.term_timeout
        while time.monotonic() < deadline and self.still_running():
            for proc in self.procs:
                proc.popen.poll()  # reap our own children so they do not linger as zombies
            time.sleep(0.2)
        for proc in self.procs:
            if proc.alive():
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(proc.pid, signal.SIGKILL)
        for pid, _start in self.still_running():
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)
        for proc in self.procs:
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.popen.wait(timeout=5)
        deadline = time.monotonic() + 5  # SIGKILL is asynchronous
        while time.monotonic() < deadline and self.still_running():
            time.sleep(0.1)

    def still_running(self) -> list[tuple[int, int]]:
        """Recorded processes (started ones and their descendants) that still run."""
        return sorted(p for p in self.seen if _running(*p))


def wait_for_port(port: int, proc: Proc, timeout: float, host: str = HOST) -> None:
    """Wait until ``host:port`` accepts TCP connections; fail early when ``proc`` exits."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not proc.alive():
            raise DeploymentError(
                f"{proc.name} exited with {proc.popen.returncode} before listening on "
                f"{host}:{port}:\n{tail(proc.log)}"
            )
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.settimeout(0.5)
            if s.connect_ex((host, port)) == 0:
                return
        time.sleep(0.2)
    raise DeploymentError(f"{proc.name} not listening on {host}:{port} after {timeout:.0f} s")


def wait_listening(proc: Proc, port: int, timeout: float) -> None:
    """Wait until ``proc`` itself serves ``127.0.0.1:port``: its log says uvicorn runs there
    (a bare TCP connect could reach another process that took the port) and it accepts."""
    line = rf"Uvicorn running on https?://{re.escape(HOST)}:{port}\b"
    if not wait_for_log(proc, line, timeout):
        state = "exited" if not proc.alive() else f"not listening after {timeout:.0f} s"
        raise DeploymentError(f"{proc.name} {state} (port {port}):\n{tail(proc.log)}")
    wait_for_port(port, proc, timeout)


def wait_for_log(proc: Proc, pattern: str, timeout: float, count: int = 1) -> bool:
    """Wait until ``pattern`` (a regex) occurs ``count`` times in ``proc``'s log."""
    regex = re.compile(pattern)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if len(regex.findall(proc.log_text())) >= count:
            return True
        if not proc.alive():
            return False
        time.sleep(0.3)
    return False


# ------------------------------------------------------------------------------ environment
def flower_env(flwr_home: Path, extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """Environment for every Flower process: this venv first on PATH (Flower starts
    ``flower-superexec`` by name), a private ``FLWR_HOME``, no per-run dependency install,
    no telemetry, one thread per process (2-core CI)."""
    env = dict(os.environ)
    env.update(
        PATH=f"{VENV_BIN}{os.pathsep}{env.get('PATH', '')}",
        FLWR_HOME=str(flwr_home),
        FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION="1",
        FLWR_TELEMETRY_ENABLED="0",
        PYTHONUNBUFFERED="1",
        OMP_NUM_THREADS="1",
        MKL_NUM_THREADS="1",
    )
    env.update(extra or {})
    return env


def write_connection(
    flwr_home: Path,
    name: str,
    address: str,
    *,
    root_certificates: Path | None = None,
) -> None:
    """Write ``$FLWR_HOME/config.toml`` with one SuperLink connection named ``name``
    (insecure unless a root certificate is given)."""
    flwr_home.mkdir(parents=True, exist_ok=True)
    lines = ["[superlink]", f'default = "{name}"', "", f"[superlink.{name}]"]
    lines.append(f'address = "{address}"')
    if root_certificates is None:
        lines.append("insecure = true")
    else:
        lines.append(f"root-certificates = {json.dumps(str(root_certificates.resolve()))}")
    (flwr_home / "config.toml").write_text("\n".join(lines) + "\n")


# ------------------------------------------------------------------------------ TLS
@dataclass(frozen=True)
class TlsFiles:
    """PEM files: the CA certificate, and the server certificate and key it signed."""

    ca: Path
    cert: Path
    key: Path


def make_tls_certs(directory: Path, hosts: tuple[str, ...] = (HOST, "localhost")) -> TlsFiles:
    """Generate a throwaway CA and a server certificate for ``hosts`` (IPs and DNS names)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    directory.mkdir(parents=True, exist_ok=True)
    now = dt.datetime.now(dt.timezone.utc)
    valid = (now - dt.timedelta(minutes=5), now + dt.timedelta(days=1))

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "fedistill test CA")])
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(valid[0])
        .not_valid_after(valid[1])
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(
            x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )

    names: list[x509.GeneralName] = []
    for host in hosts:
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            names.append(x509.DNSName(host))
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hosts[0])]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(valid[0])
        .not_valid_after(valid[1])
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )

    files = TlsFiles(directory / "ca.crt", directory / "server.pem", directory / "server.key")
    files.ca.write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
    files.cert.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    files.key.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    files.key.chmod(0o600)
    return files


# ------------------------------------------------------------------------------ deployment
@dataclass
class Node:
    """A started SuperNode and the partition it serves."""

    proc: Proc
    partition_id: int
    port: int

    def node_id(self) -> int | None:
        """The node ID the SuperLink gave this SuperNode (read from its log)."""
        match = re.search(r"SuperNode ID: (\d+)", self.proc.log_text())
        return int(match.group(1)) if match else None


@dataclass
class Deployment:
    """A SuperLink and its SuperNodes on 127.0.0.1, plus the ``flwr`` CLI pointed at it.

    Use as a context manager: leaving the ``with`` block (normally or by an exception)
    stops every process. ``workdir`` holds FLWR_HOME, logs, certificates and the SuperLink's
    working directory (where a ServerApp writing relative paths puts its files).
    """

    workdir: Path
    tls: TlsFiles | None = None
    startup_timeout: float = 60.0
    connection: str = "fedistill-test"
    procs: ProcessSet = field(init=False)
    nodes: list[Node] = field(default_factory=list)
    link: Proc | None = None
    port: int = 0

    def __post_init__(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.procs = ProcessSet(self.workdir / "logs")
        self.flwr_home = self.workdir / "flwr-home"
        self.link_dir = self.workdir / "superlink"
        self.link_dir.mkdir(exist_ok=True)
        self.env = flower_env(self.flwr_home)

    @property
    def address(self) -> str:
        return f"{HOST}:{self.port}"

    def __enter__(self) -> Deployment:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self.procs.stop_all()

    # -- starting
    def _security_flags(self, role: str) -> list[str]:
        if self.tls is None:
            return ["--insecure"]
        if role == "link":
            return [
                "--ssl-ca-certfile",
                str(self.tls.ca),
                "--ssl-certfile",
                str(self.tls.cert),
                "--ssl-keyfile",
                str(self.tls.key),
            ]
        return ["--root-certificates", str(self.tls.ca)]

    def _start_on_free_port(
        self, name: str, argv_for: Callable[[int], list[str]], cwd: Path, attempts: int = 3
    ) -> tuple[Proc, int]:
        """Start a process that binds a port we picked; if another process took that port
        between our check and its bind, start it again on a new one."""
        for attempt in range(1, attempts + 1):
            port = free_port()
            proc = self.procs.start(name, argv_for(port), self.env, cwd=cwd)
            try:
                wait_listening(proc, port, self.startup_timeout)
                return proc, port
            except DeploymentError:
                if attempt == attempts or "address already in use" not in proc.log_text():
                    raise
                self.procs.stop(proc)
        raise AssertionError("unreachable")

    def start_superlink(self) -> Proc:
        """Start ``flower-superlink`` on a free port and wait until it listens."""

        def argv(port: int) -> list[str]:
            out = [str(VENV_BIN / "flower-superlink"), *self._security_flags("link")]
            out += ["--host", HOST, "--port", str(port)]
            return [*out, "--disable-runtime-dependency-installation"]

        self.link, self.port = self._start_on_free_port("superlink", argv, self.link_dir)
        write_connection(
            self.flwr_home,
            self.connection,
            self.address,
            root_certificates=self.tls.ca if self.tls else None,
        )
        return self.link

    def start_supernodes(self, num: int, num_partitions: int | None = None) -> list[Node]:
        """Start ``num`` SuperNodes, node i serving ``partition-id=i`` of ``num_partitions``,
        and wait until each has registered with the SuperLink."""
        if self.link is None:
            raise DeploymentError("start the SuperLink first")
        total = num_partitions or num
        argvs: dict[int, Callable[[int], list[str]]] = {}
        for i in range(len(self.nodes), len(self.nodes) + num):

            def argv(port: int, i: int = i) -> list[str]:
                out = [str(VENV_BIN / "flower-supernode"), *self._security_flags("node")]
                out += ["--superlink", self.address, "--host", HOST, "--port", str(port)]
                return [*out, "--node-config", f"partition-id={i} num-partitions={total}"]

            argvs[i] = argv
            (self.workdir / f"supernode-{i}").mkdir(exist_ok=True)
        # start them all at once, then wait; a node that lost its port to a race restarts
        new = []
        for i, argv in argvs.items():
            port = free_port()
            proc = self.procs.start(
                f"supernode-{i}", argv(port), self.env, self.workdir / f"supernode-{i}"
            )
            new.append(Node(proc, i, port))
        for k, node in enumerate(new):
            try:
                wait_listening(node.proc, node.port, self.startup_timeout)
            except DeploymentError:
                if "address already in use" not in node.proc.log_text():
                    raise
                self.procs.stop(node.proc)
                name, cwd = node.proc.name, self.workdir / f"supernode-{node.partition_id}"
                proc, port = self._start_on_free_port(name, argvs[node.partition_id], cwd)
                new[k] = Node(proc, node.partition_id, port)
        for node in new:
            if not wait_for_log(node.proc, r"SuperNode ID: \d+", self.startup_timeout):
                raise DeploymentError(
                    f"{node.proc.name} did not register with the SuperLink:\n{tail(node.proc.log)}"
                )
        self.nodes += new
        self.procs.snapshot()
        return new

    # -- the flwr CLI
    def flwr(self, *args: str, timeout: float = 120.0) -> subprocess.CompletedProcess:
        """Run the ``flwr`` CLI against this deployment (cwd: the workdir, never the repo)."""
        argv = [str(VENV_BIN / "flwr"), *args]
        res = subprocess.run(
            argv,
            cwd=self.workdir,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        if res.returncode != 0:
            raise DeploymentError(
                f"`flwr {' '.join(args)}` exited with {res.returncode}:\n{res.stdout}\n{res.stderr}"
            )
        return res

    def submit(self, app: Path, run_config: Mapping[str, Any] | None = None) -> int:
        """``flwr run APP CONNECTION --run-config ...``; returns the run ID."""
        args = ["run", str(app), self.connection, "--format", "json"]
        if run_config:
            args += ["--run-config", run_config_arg(run_config)]
        out = self.flwr(*args).stdout
        payload = json.loads(out[out.index("{") :])
        if not payload.get("success"):
            raise DeploymentError(f"flwr run failed: {out}")
        return int(payload["run-id"])

    def run_info(self, run_id: int) -> dict[str, Any]:
        """``flwr ls CONNECTION --run-id ID --format json``: the run's row."""
        out = self.flwr("ls", self.connection, "--run-id", str(run_id), "--format", "json").stdout
        return json.loads(out[out.index("{") :])["runs"][0]

    def wait_run(self, run_id: int, timeout: float, poll: float = 3.0) -> dict[str, Any]:
        """Poll until the run's status starts with ``finished``; returns its row."""
        deadline = time.monotonic() + timeout
        while True:
            info = self.run_info(run_id)
            self.procs.snapshot()
            if str(info.get("status", "")).startswith("finished"):
                return info
            if time.monotonic() > deadline:
                raise DeploymentError(
                    f"run {run_id} not finished after {timeout:.0f} s (status "
                    f"{info.get('status')}); SuperLink log:\n{tail(self.link.log) if self.link else ''}"
                )
            time.sleep(poll)

    def run_logs(self, run_id: int) -> str:
        """The run's ServerApp log as the SuperLink keeps it (``flwr log --show``)."""
        try:
            return self.flwr("log", str(run_id), self.connection, "--show", timeout=60).stdout
        except (DeploymentError, subprocess.TimeoutExpired) as err:
            return f"<no run log: {err}>"

    def describe(self) -> str:
        """Tails of every process log, for assertion messages."""
        return "\n".join(
            f"----- {p.name} (pid {p.pid}, alive={p.alive()})\n{tail(p.log, 25)}"
            for p in self.procs.procs
        )


@contextlib.contextmanager
def deployment(
    workdir: Path, num_nodes: int = 3, tls: TlsFiles | None = None
) -> Iterator[Deployment]:
    """A started SuperLink with ``num_nodes`` SuperNodes; everything ends on exit."""
    dep = Deployment(workdir, tls=tls)
    try:
        dep.start_superlink()
        dep.start_supernodes(num_nodes)
        yield dep
    finally:
        dep.close()
