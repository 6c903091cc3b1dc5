"""Inside a private network namespace: bring loopback up, run Orthanc, bridge it to a Unix socket.

Run by :class:`vigil.dicom_adapter.orthanc_local.LocalOrthanc` as
``unshare -n -- python -m vigil.dicom_adapter._netns_pacs ORTHANC CONFIG SOCKET LOG PIDFILE``.
Orthanc 1.10 listens on every interface with no bind-address option; in a namespace of its
own the only interface is loopback, so nothing outside this process tree can reach it. The
one way in is the Unix socket ``SOCKET`` (mode 0600, in the launcher's private directory),
forwarded byte for byte to ``127.0.0.1:<HttpPort>`` inside the namespace.

``python _netns_pacs.py --host-forward SOCKET`` (run by path, importing nothing of vigil) is
the host side as a process of its own (``LocalOrthanc(forwarder="process")``): it accepts on
``127.0.0.1:<ephemeral port>``, prints the port on one line, forwards each connection to
``SOCKET`` and exits on SIGTERM or when its launcher dies (``PR_SET_PDEATHSIG``).

SIGTERM or SIGINT stops Orthanc (SIGTERM, then SIGKILL after 15 s) and exits; so does
Orthanc exiting on its own. This process gets ``PR_SET_PDEATHSIG`` = SIGTERM (the
launcher killed, say a test run timed out: it stops Orthanc and exits) and Orthanc gets
SIGKILL as its own, so it cannot outlive this process even if this process is killed.
"""

from __future__ import annotations

import asyncio
import ctypes
import json
import os
import signal
import subprocess
import sys
from collections.abc import Awaitable
from pathlib import Path

_PR_SET_PDEATHSIG = 1
LAUNCHER_ENV = "VIGIL_PACS_LAUNCHER_PID"


def _die_with_parent(sig: int = signal.SIGKILL) -> None:
    ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, sig, 0, 0, 0)


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(1 << 16):
            writer.write(data)
            await writer.drain()
    except (ConnectionError, asyncio.CancelledError):
        pass
    finally:
        writer.close()


async def bridge(
    client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter,
    opening: Awaitable[tuple[asyncio.StreamReader, asyncio.StreamWriter]],
) -> None:
    """Forward one accepted connection to the one ``opening`` opens until either side closes.

    ``opening``: ``asyncio.open_connection(...)`` or ``asyncio.open_unix_connection(...)``;
    when it fails the accepted connection is closed.
    """
    try:
        reader, writer = await opening
    except OSError:
        client_writer.close()
        return
    await asyncio.gather(_pipe(client_reader, writer), _pipe(reader, client_writer))


async def _serve(orthanc: str, config: Path, sock: Path, log: Path, pidfile: Path) -> int:
    port = int(json.loads(config.read_text()).get("HttpPort", 8042))
    subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
    proc = await asyncio.create_subprocess_exec(
        orthanc, f"--logfile={log}", str(config),
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        preexec_fn=_die_with_parent)
    pidfile.write_text(str(proc.pid))
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    old = os.umask(0o177)
    try:
        server = await asyncio.start_unix_server(
            lambda r, w: bridge(r, w, asyncio.open_connection("127.0.0.1", port)), path=str(sock))
    finally:
        os.umask(old)
    exited = asyncio.ensure_future(proc.wait())
    stopped = asyncio.ensure_future(stop.wait())
    await asyncio.wait({exited, stopped}, return_when=asyncio.FIRST_COMPLETED)
    server.close()
    if proc.returncode is None:
        proc.terminate()
        try:
            await asyncio.wait_for(exited, 15)
        except TimeoutError:
            proc.kill()
            await exited
    stopped.cancel()
    sock.unlink(missing_ok=True)
    return 0 if stop.is_set() else 1


async def _host_forward(sock: Path) -> int:
    async def handle(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        await bridge(r, w, asyncio.open_unix_connection(str(sock)))

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    print(int(server.sockets[0].getsockname()[1]), flush=True)
    await stop.wait()
    server.close()
    return 0


def main(argv: list[str]) -> int:
    """Run the namespace side until told to stop; the exit code is 1 if Orthanc died first."""
    if argv[:1] == ["--host-forward"]:
        _die_with_parent(signal.SIGTERM)
        if str(os.getppid()) != os.environ.get(LAUNCHER_ENV, str(os.getppid())):
            return 1
        return asyncio.run(_host_forward(Path(argv[1])))
    orthanc, config, sock, log, pidfile = argv
    _die_with_parent(signal.SIGTERM)  # the launcher's process gone (killed): stop cleanly
    if str(os.getppid()) != os.environ.get(LAUNCHER_ENV, str(os.getppid())):
        return 1  # it died before the line above
    return asyncio.run(_serve(orthanc, Path(config), Path(sock), Path(log), Path(pidfile)))


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
