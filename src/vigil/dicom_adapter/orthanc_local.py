"""A private Orthanc on this machine, for tests, the bench and the demo: reachable from here only.

Orthanc 1.10.1 (Debian) binds every interface and has no bind-address option
(``shared/research/imaging.md`` §3.2). :class:`LocalOrthanc` therefore runs it in a
network namespace of its own (``unshare -n``: only a loopback interface, nothing routed
in or out) with authentication on (a generated user and password), remote access off,
the DICOM port off and the DICOMweb plugin on, storing into a private directory. Two
forwarders bridge it to this process:

- inside the namespace, ``vigil.dicom_adapter._netns_pacs`` accepts on a Unix socket
  (mode 0600 in a 0700 directory: only this user can connect) and connects to
  Orthanc's ``127.0.0.1:8042``;
- here, a thread accepts on ``127.0.0.1:<ephemeral port>`` and connects to that socket
  (``forwarder="process"``: a process of its own does, so the forwarding's Python work
  does not share this process's interpreter lock: the bench, which measures this
  process, uses it; a PACS on another host has no forwarder in the runtime's process),

so a client talks plain ``http://127.0.0.1:<port>`` and nothing off the machine can
reach the PACS. A veth pair would need a routed address on the host side; the socket
keeps the host's interfaces untouched.

:meth:`LocalOrthanc.restart` stops Orthanc and starts it again on the same storage; the
URL (the host forwarder) stays the same across restarts. If the process that started it
dies without stopping it (killed, a timed-out test run), the namespace side stops Orthanc
and exits by itself (``PR_SET_PDEATHSIG``); start it from a thread that lives as long as
it should (the main thread), since the signal follows the starting thread.
"""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from types import TracebackType

import httpx

from vigil.core.errors import ConfigError
from vigil.dicom_adapter._netns_pacs import LAUNCHER_ENV

__all__ = ["ORTHANC_BINARY", "ORTHANC_DICOMWEB_PLUGIN", "LocalOrthanc", "local_orthanc_missing"]

ORTHANC_BINARY = "/usr/sbin/Orthanc"
ORTHANC_DICOMWEB_PLUGIN = "/usr/share/orthanc/plugins/libOrthancDicomWeb.so"
_START_TIMEOUT_S = 30.0
_STOP_TIMEOUT_S = 15.0


def local_orthanc_missing(binary: str = ORTHANC_BINARY,
                          plugin: str = ORTHANC_DICOMWEB_PLUGIN) -> str | None:
    """Why a private Orthanc cannot run here (None: it can)."""
    if not Path(binary).is_file():
        return f"Orthanc is not installed at {binary}; run `make setup` (as root) to install it"
    if not Path(plugin).exists():
        return f"the Orthanc DICOMweb plugin is not at {plugin}; install orthanc-dicomweb"
    if shutil.which("unshare") is None or shutil.which("ip") is None:
        return "the private PACS needs `unshare` (util-linux) and `ip` (iproute2)"
    return None


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


class _HostForwarder:
    """``127.0.0.1:<ephemeral>`` → a Unix socket, on an asyncio loop in a daemon thread."""

    def __init__(self, sock: Path) -> None:
        from vigil.dicom_adapter._netns_pacs import bridge

        self._sock = sock
        self._bridge = bridge
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, name="orthanc-forwarder", daemon=True)
        self.port = 0
        self._thread.start()
        self._ready.wait()

    async def _handle(self, r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        await self._bridge(r, w, asyncio.open_unix_connection(str(self._sock)))

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        server = self._loop.run_until_complete(
            asyncio.start_server(self._handle, "127.0.0.1", 0))
        self.port = int(server.sockets[0].getsockname()[1])
        self._ready.set()
        self._loop.run_forever()
        server.close()
        self._loop.run_until_complete(server.wait_closed())
        for task in asyncio.all_tasks(self._loop):
            task.cancel()
        self._loop.run_until_complete(asyncio.sleep(0))
        self._loop.close()

    def close(self) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)


class _ProcessForwarder:
    """The same forwarding in a child process (``_netns_pacs.py --host-forward``)."""

    def __init__(self, sock: Path) -> None:
        script = Path(__file__).with_name("_netns_pacs.py")
        self._proc = subprocess.Popen(
            [sys.executable, str(script), "--host-forward", str(sock)],
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
            env={**os.environ, LAUNCHER_ENV: str(os.getpid())})
        assert self._proc.stdout is not None
        line = self._proc.stdout.readline().strip()
        if not line.isdigit():
            self.close()
            raise ConfigError("the PACS forwarder process did not start")
        self.port = int(line)
        self.pid = self._proc.pid

    def close(self) -> None:
        if self._proc.poll() is None:
            self._proc.send_signal(signal.SIGTERM)
            try:
                self._proc.wait(10)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait(5)
        if self._proc.stdout is not None:
            self._proc.stdout.close()


class LocalOrthanc:
    """A private Orthanc (own storage, own network namespace, auth on); a context manager.

    Parameters
    ----------
    workdir : Path
        Private directory (made 0700) for the configuration, storage, log and socket.
    stable_age : int, optional
        Orthanc's ``StableAge`` in seconds: a study is announced ``StableStudy`` this long
        after its last instance arrived.
    username : str, optional
        The one registered user; the password is generated (:attr:`password`).
    binary, plugin : str, optional
        Where Debian installs Orthanc and its DICOMweb plugin.
    forwarder : {"thread", "process"}, optional
        Where the host side of the forwarding runs (module notes).

    Raises
    ------
    ConfigError
        From :meth:`start` when Orthanc cannot run here (:func:`local_orthanc_missing`)
        or does not answer within 30 s.
    """

    def __init__(self, workdir: Path, *, stable_age: int = 1, username: str = "vigil",
                 binary: str = ORTHANC_BINARY, plugin: str = ORTHANC_DICOMWEB_PLUGIN,
                 forwarder: str = "thread") -> None:
        if forwarder not in ("thread", "process"):
            raise ConfigError(f"expected forwarder 'thread' or 'process', got {forwarder!r}")
        self.forwarder = forwarder
        self.workdir = Path(workdir)
        self.stable_age = stable_age
        self.username = username
        self.password = secrets.token_urlsafe(18)
        self.binary = binary
        self.plugin = plugin
        self._proc: subprocess.Popen[bytes] | None = None
        self._forwarder: _HostForwarder | _ProcessForwarder | None = None
        self.orthanc_pid: int | None = None

    def __repr__(self) -> str:
        return f"LocalOrthanc(url={self.url if self._forwarder else None!r})"

    @property
    def url(self) -> str:
        """``http://127.0.0.1:<port>``: the forwarder in front of the private Orthanc."""
        if self._forwarder is None:
            raise ConfigError("the private Orthanc is not started; call start() first")
        return f"http://127.0.0.1:{self._forwarder.port}"

    @property
    def log(self) -> Path:
        """Orthanc's log file."""
        return self.workdir / "orthanc.log"

    @property
    def pids(self) -> tuple[int, ...]:
        """Process ids of the namespace supervisor and of Orthanc (for leak checks)."""
        forwarder = getattr(self._forwarder, "pid", None)
        return tuple(p for p in (self._proc.pid if self._proc else None, self.orthanc_pid,
                                 forwarder) if p is not None)

    def _write_config(self) -> Path:
        config = {
            "Name": "vigil-private-pacs",
            "StorageDirectory": str(self.workdir / "db"),
            "IndexDirectory": str(self.workdir / "db"),
            "Plugins": [self.plugin],
            "HttpPort": 8042,
            "DicomServerEnabled": False,
            "RemoteAccessAllowed": False,
            "AuthenticationEnabled": True,
            "RegisteredUsers": {self.username: self.password},
            "StableAge": self.stable_age,
            "SaveJobs": False,
            "HttpCompressionEnabled": False,
            "DicomWeb": {"Enable": True, "Root": "/dicom-web/", "EnableWado": False,
                         "Host": "127.0.0.1", "Ssl": False},
        }
        path = self.workdir / "orthanc.json"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as fh:
            json.dump(config, fh, indent=1)
        return path

    def start(self) -> LocalOrthanc:
        """Start Orthanc (and the forwarders) and wait until ``GET /system`` answers."""
        missing = local_orthanc_missing(self.binary, self.plugin)
        if missing:
            raise ConfigError(missing)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.workdir.chmod(0o700)
        sock = self.workdir / "orthanc.sock"
        sock.unlink(missing_ok=True)
        pidfile = self.workdir / "orthanc.pid"
        pidfile.unlink(missing_ok=True)
        config = self._write_config()
        unshare = ["unshare", "-n"] if os.geteuid() == 0 else ["unshare", "-r", "-n"]
        with (self.workdir / "netns.log").open("ab") as errors:
            self._proc = subprocess.Popen(
                [*unshare, "--", sys.executable, "-m", "vigil.dicom_adapter._netns_pacs",
                 self.binary, str(config), str(sock), str(self.log), str(pidfile)],
                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=errors,
                start_new_session=True, env={**os.environ, LAUNCHER_ENV: str(os.getpid())})
        if self._forwarder is None:
            self._forwarder = (_ProcessForwarder(sock) if self.forwarder == "process"
                               else _HostForwarder(sock))
        try:
            self._wait_ready(pidfile)
        except BaseException:
            self.stop()
            raise
        return self

    def _wait_ready(self, pidfile: Path) -> None:
        assert self._proc is not None
        deadline = time.monotonic() + _START_TIMEOUT_S
        auth = (self.username, self.password)
        with httpx.Client(timeout=2.0) as client:
            while True:
                if self.orthanc_pid is None and pidfile.is_file() and pidfile.read_text():
                    self.orthanc_pid = int(pidfile.read_text())
                if self._proc.poll() is not None:
                    tail = self.log.read_text(errors="replace")[-600:] if self.log.exists() else ""
                    raise ConfigError(
                        f"the private Orthanc exited at start (code {self._proc.returncode}); "
                        f"its log ends: {tail!r}")
                try:
                    if client.get(f"{self.url}/system", auth=auth).status_code == 200:
                        return
                except httpx.HTTPError:
                    pass
                if time.monotonic() > deadline:
                    raise ConfigError(f"the private Orthanc did not answer within "
                                      f"{_START_TIMEOUT_S:.0f} s; see {self.log}")
                time.sleep(0.05)

    def _stop_process(self) -> None:
        proc = self._proc
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(_STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)
        if self.orthanc_pid is not None:
            deadline = time.monotonic() + 5
            while _alive(self.orthanc_pid) and time.monotonic() < deadline:
                time.sleep(0.05)
            if _alive(self.orthanc_pid):
                os.kill(self.orthanc_pid, signal.SIGKILL)
        self._proc = None
        self.orthanc_pid = None

    def restart(self) -> None:
        """Stop Orthanc and start it again on the same storage and URL."""
        self._stop_process()
        self.start()

    def stop(self) -> None:
        """Stop Orthanc, its supervisor and the forwarder (idempotent)."""
        self._stop_process()
        if self._forwarder is not None:
            self._forwarder.close()
            self._forwarder = None

    def __enter__(self) -> LocalOrthanc:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()
