"""Starting and stopping Flower's processes the way vigil deploys them.

Every process runs in its own process group (so :meth:`Process.stop` also
ends the SuperExec and app processes it spawned) with this environment:

- ``FLWR_TELEMETRY_ENABLED=0`` and ``FLWR_DISABLE_UPDATE_CHECK=1``: nothing
  is sent to flower.ai;
- ``FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION=1`` (and the SuperLink's
  ``--disable-runtime-dependency-installation``): the apps run on the
  installed ``vigil``; nothing is fetched at run time;
- ``FLWR_SUPEREXEC_TASK_POLL_INTERVAL=0.2``: the SuperExec looks for a message
  to start a ClientApp for every 0.2 s, not every 1 s (one message per tree level);
- ``FLWR_HOME`` inside the process's own working directory.

The coordinator runs the SuperLink (:func:`start_superlink`): TLS with the
server certificate, SuperNode authentication on, state persisted in
``WORK/superlink.db`` (``--database``). A hospital runs a SuperNode
(:func:`start_supernode`) that dials the SuperLink (outbound only) with the
CA certificate and its private key. The operator registers each site's
public key (:func:`register_site`) and submits runs (:func:`submit_run`) with
the ``flwr`` command through the connection :func:`cli_home` writes.
"""

from __future__ import annotations

import json
import os
import signal
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vigil.core.errors import ConfigError, VigilError
from vigil.federation.flower.sitedata import SITE_DIR_KEY

__all__ = [
    "CONNECTION",
    "DEFAULT_PORT",
    "FLOWER_ENV",
    "Coordinator",
    "Process",
    "SiteNode",
    "cli_home",
    "flower_env",
    "list_nodes",
    "register_site",
    "start_superlink",
    "start_supernode",
    "stop_run",
    "submit_run",
    "wait_ready",
]

DEFAULT_PORT = 9092
"""The SuperLink's one HTTPS port (Fleet, Control and Runtime APIs)."""
CONNECTION = "vigil"
"""Name of the SuperLink connection in the ``flwr`` command's configuration."""
FLOWER_ENV = {
    "FLWR_TELEMETRY_ENABLED": "0",
    "FLWR_DISABLE_UPDATE_CHECK": "1",
    "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",
    # the SuperExec looks for a message to start an app for every 1 s by default; each
    # tree level is a message, so this wait adds up (docs/flower.md, "Trees over Flower")
    "FLWR_SUPEREXEC_TASK_POLL_INTERVAL": "0.2",
}


def flower_env(home: str | Path, base: dict[str, str] | None = None) -> dict[str, str]:
    """Return a Flower process's environment: ``base`` (default: this one's) and FLOWER_ENV.

    This Python's scripts directory goes first on ``PATH``: the SuperLink and
    SuperNode start ``flower-superexec`` by name.
    """
    env = dict(os.environ if base is None else base)
    env.update(FLOWER_ENV)
    env["FLWR_HOME"] = str(Path(home).resolve())
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    env.setdefault("PYTHONUNBUFFERED", "1")
    return env


def _descendants(pid: int) -> list[int]:
    """Every live descendant of ``pid`` (Linux ``/proc``), including detached sessions."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            text = stat.read_text()
        except OSError:
            continue
        ppid = int(text[text.rindex(")") + 2:].split()[1])
        children.setdefault(ppid, []).append(int(stat.parent.name))
    out: list[int] = []
    stack = list(children.get(pid, []))
    while stack:
        child = stack.pop()
        out.append(child)
        stack.extend(children.get(child, []))
    return out


def _bin(name: str) -> str:
    """Return a console script of this Python environment (``flwr``, ...)."""
    path = Path(sys.executable).parent / name
    if not path.is_file():
        raise ConfigError(f"expected Flower's {name} beside {sys.executable}; install "
                          "vigil[train] (it pins flwr)", key="flwr")
    return str(path)


class Process:
    """A Flower process in its own process group, with its log file.

    Parameters
    ----------
    name : str
    popen : subprocess.Popen
    log_path : Path
    """

    def __init__(self, name: str, popen: subprocess.Popen[bytes], log_path: Path) -> None:
        self.name = name
        self.popen = popen
        self.log_path = log_path

    def __repr__(self) -> str:
        return f"Process({self.name!r}, pid={self.pid}, alive={self.alive})"

    @property
    def pid(self) -> int:
        """The process id (also its process group id)."""
        return self.popen.pid

    @property
    def alive(self) -> bool:
        """Whether the process is still running."""
        return self.popen.poll() is None

    def log_text(self) -> str:
        """Return the process's log so far."""
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def kill(self) -> None:
        """SIGKILL the process and everything it started (a crash, as a test needs it)."""
        tree = _descendants(self.pid)
        self._signal([self.pid, *tree], signal.SIGKILL)
        self.popen.wait()

    def stop(self, *, timeout: float = 15.0) -> int:
        """SIGTERM the process and everything it started, wait, then SIGKILL what is left.

        Flower starts its SuperExec in a session of its own, so the process
        group alone would miss it: the whole tree of descendants is signalled.

        Returns
        -------
        int
            The exit code.
        """
        tree = _descendants(self.pid)
        self._signal([self.pid, *tree], signal.SIGTERM)
        deadline = time.monotonic() + timeout
        try:
            self.popen.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            pass
        tree += _descendants(self.pid)
        while time.monotonic() < deadline and any(_alive(p) for p in tree):
            time.sleep(0.1)
        self._signal([self.pid, *tree], signal.SIGKILL)
        return self.popen.wait()

    def _signal(self, pids: list[int], sig: signal.Signals) -> None:
        for pid in pids:
            for send in (os.killpg, os.kill):
                try:
                    send(pid, sig)
                except (ProcessLookupError, PermissionError):
                    pass


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return state[state.rindex(")") + 2] != "Z"

    def __enter__(self) -> Process:
        return self

    def __exit__(self, *_: object) -> None:
        self.stop()


def _spawn(name: str, cmd: Sequence[str], *, home: Path, log_path: Path,
           cwd: Path | None = None) -> Process:
    home.mkdir(parents=True, exist_ok=True)
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("ab") as fh:
        popen = subprocess.Popen(
            list(cmd), stdout=fh, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            env=flower_env(home), cwd=cwd, start_new_session=True,
        )
    return Process(name, popen, log_path)


@dataclass(frozen=True)
class Coordinator:
    """The coordinator's SuperLink.

    Parameters
    ----------
    work_dir : Path
        State database, logs, the ``flwr`` configuration, runs.
    ca_cert, server_cert, server_key : Path
        PEM files (``vigil federation certs``).
    host : str, optional
        Interface to listen on: ``0.0.0.0`` for remote hospitals.
    port : int, optional
    public_host : str or None, optional
        Name the operator's ``flwr`` command dials (default: ``host``, or
        ``127.0.0.1`` when listening on all interfaces).
    """

    work_dir: Path
    ca_cert: Path
    server_cert: Path
    server_key: Path
    host: str = "127.0.0.1"
    port: int = DEFAULT_PORT
    public_host: str | None = None

    @classmethod
    def from_certs(cls, work_dir: str | Path, certs_dir: str | Path, **options: Any) -> Coordinator:
        """Use ``ca.crt``, ``server.crt`` and ``server.key`` of ``certs_dir``.

        Raises
        ------
        ConfigError
            If one of them is missing.
        """
        certs = Path(certs_dir)
        files = [certs / n for n in ("ca.crt", "server.crt", "server.key")]
        missing = [f.name for f in files if not f.is_file()]
        if missing:
            raise ConfigError(f"expected {', '.join(missing)} in {certs}; make them with "
                              "`vigil federation certs`", key="certs")
        return cls(Path(work_dir).resolve(), *(f.resolve() for f in files), **options)

    @property
    def address(self) -> str:
        """``host:port`` the operator's ``flwr`` command dials."""
        host = self.public_host or ("127.0.0.1" if self.host in ("0.0.0.0", "::") else self.host)
        return f"{host}:{self.port}"

    @property
    def database(self) -> Path:
        """The SuperLink's persisted state."""
        return self.work_dir / "superlink.db"

    def command(self) -> list[str]:
        """Return the ``flower-superlink`` command line."""
        return [
            _bin("flower-superlink"),
            "--ssl-ca-certfile", str(self.ca_cert),
            "--ssl-certfile", str(self.server_cert),
            "--ssl-keyfile", str(self.server_key),
            "--enable-supernode-auth",
            "--database", str(self.database),
            "--disable-runtime-dependency-installation",
            "--host", self.host, "--port", str(self.port),
        ]


def wait_ready(address: str, ca_cert: str | Path, *, timeout: float = 60.0,
               process: Process | None = None) -> None:
    """Wait until the SuperLink at ``address`` answers ``GET /health`` over TLS.

    Raises
    ------
    VigilError
        If it does not within ``timeout`` seconds, or ``process`` exited.
    """
    context = ssl.create_default_context(cafile=str(ca_cert))
    url = f"https://{address}/health"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process is not None and not process.alive:
            raise VigilError(f"the SuperLink exited with code {process.popen.returncode}; "
                             f"see {process.log_path}")
        try:
            with urllib.request.urlopen(url, context=context, timeout=2) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.25)
    raise VigilError(f"the SuperLink at {address} did not become ready within {timeout:.0f} s")


def start_superlink(coordinator: Coordinator, *, ready_timeout: float = 60.0) -> Process:
    """Start the SuperLink and wait until it is ready.

    Returns
    -------
    Process
        Log in ``WORK/superlink.log``. Stop it with :meth:`Process.stop`.
    """
    work = coordinator.work_dir
    work.mkdir(parents=True, exist_ok=True)
    proc = _spawn("superlink", coordinator.command(), home=work / "superlink-home",
                  log_path=work / "superlink.log")
    try:
        wait_ready(coordinator.address, coordinator.ca_cert, timeout=ready_timeout, process=proc)
    except BaseException:
        proc.stop()
        raise
    return proc


def cli_home(coordinator: Coordinator) -> Path:
    """Write the ``flwr`` configuration (connection :data:`CONNECTION`); return its home."""
    home = coordinator.work_dir / "flwr-cli"
    home.mkdir(parents=True, exist_ok=True)
    (home / "config.toml").write_text(
        "[superlink]\n"
        f'default = "{CONNECTION}"\n\n'
        f"[superlink.{CONNECTION}]\n"
        f'address = "{coordinator.address}"\n'
        f"root-certificates = {json.dumps(str(coordinator.ca_cert))}\n"
    )
    return home


def _flwr(coordinator: Coordinator, *args: str, timeout: float = 120.0) -> dict[str, Any]:
    home = cli_home(coordinator)
    done = subprocess.run(
        [_bin("flwr"), *args, CONNECTION, "--format", "json"], capture_output=True,
        env=flower_env(home), timeout=timeout, check=False, stdin=subprocess.DEVNULL,
    )
    try:
        body: dict[str, Any] = json.loads(done.stdout)
    except ValueError:
        raise VigilError(f"`flwr {args[0]} {args[1]}` failed (exit {done.returncode}): "
                         f"{done.stderr.decode(errors='replace')[-500:]}") from None
    return body


def register_site(coordinator: Coordinator, public_key: str | Path, *, name: str) -> int | None:
    """Register a site's public key at the SuperLink (``flwr supernode register``).

    Returns
    -------
    int or None
        The node id; None if this key was registered before.

    Raises
    ------
    VigilError
        If the SuperLink refuses the key for another reason.
    """
    body = _flwr(coordinator, "supernode", "register", str(Path(public_key).resolve()),
                 "--name", name)
    if body.get("success"):
        return int(body["node-id"])
    message = str(body.get("error-message", body))
    if "already in use" in message:
        return None
    raise VigilError(f"could not register the key of site {name}: {message.strip()}")


def list_nodes(coordinator: Coordinator) -> list[dict[str, Any]]:
    """Return the SuperLink's registered nodes and their status (``flwr supernode list``)."""
    body = _flwr(coordinator, "supernode", "list")
    if not body.get("success"):
        raise VigilError(f"could not list the SuperNodes: {body.get('error-message', body)}")
    return list(body.get("nodes", []))


def submit_run(coordinator: Coordinator, app_dir: str | Path, *, log_path: Path) -> Process:
    """Submit the app in ``app_dir`` as a run and stream its log (``flwr run --stream``).

    Returns
    -------
    Process
        Exits when the run ends.
    """
    home = cli_home(coordinator)
    return _spawn("flwr-run", [_bin("flwr"), "run", str(Path(app_dir).resolve()), CONNECTION,
                               "--stream"], home=home, log_path=log_path)


def stop_run(coordinator: Coordinator, run_id: int) -> None:
    """Stop a run at the SuperLink (``flwr stop``); a run that already ended is left as is."""
    _flwr(coordinator, "stop", str(run_id))


@dataclass(frozen=True)
class SiteNode:
    """A hospital's SuperNode.

    Parameters
    ----------
    site_dir : Path
        The prepared site (``vigil federation site``); logs go there too.
    superlink : str
        ``host:port`` of the coordinator's SuperLink.
    ca_cert : Path
        The CA that signed the SuperLink's certificate.
    private_key : Path
        The site's authentication key (its public half registered at the coordinator).
    port : int, optional
        Local port of the SuperNode's runtime API (unique per SuperNode on one machine).
    """

    site_dir: Path
    superlink: str
    ca_cert: Path
    private_key: Path
    port: int = 9094

    def command(self) -> list[str]:
        """Return the ``flower-supernode`` command line."""
        site_dir = json.dumps(str(Path(self.site_dir).resolve()))
        return [
            _bin("flower-supernode"),
            "--superlink", self.superlink,
            "--root-certificates", str(Path(self.ca_cert).resolve()),
            "--auth-supernode-private-key", str(Path(self.private_key).resolve()),
            "--port", str(self.port),
            "--node-config", f"{SITE_DIR_KEY}={site_dir}",
        ]


def start_supernode(node: SiteNode) -> Process:
    """Start a site's SuperNode (log in ``SITE_DIR/supernode.log``).

    It keeps retrying to reach the SuperLink; a key the SuperLink does not
    know makes it exit (Flower exit code 305, "Failed to activate SuperNode").
    """
    site_dir = Path(node.site_dir)
    return _spawn("supernode", node.command(), home=site_dir / "supernode-home",
                  log_path=site_dir / "supernode.log")
