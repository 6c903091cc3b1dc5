"""What every command shares: JSON output, error reporting, logging to stderr."""

from __future__ import annotations

import json
import logging
import math
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

import typer
from rich.console import Console
from rich.table import Table

from vigil.core.errors import VigilError

__all__ = [
    "DATA_HELP",
    "err_console",
    "fail_on_vigil_error",
    "guarded",
    "print_json",
    "print_table",
    "setup_logging",
]

err_console = Console(stderr=True)
DATA_HELP = "PhysioNet parquet file, or 'sample' for the bundled sample (env VIGIL_DATA)."
T = TypeVar("T")


def _clean(obj: Any) -> Any:
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {str(k): _clean(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_clean(v) for v in obj]
    if hasattr(obj, "item") and callable(obj.item):  # numpy scalars
        return _clean(obj.item())
    return obj


def print_json(obj: Any) -> None:
    """Print one JSON object on stdout (NaN and infinities become null)."""
    sys.stdout.write(json.dumps(_clean(obj), indent=2, sort_keys=False) + "\n")
    sys.stdout.flush()


def print_table(table: Table) -> None:
    """Print a rich table on stdout."""
    Console(width=110).print(table)


def setup_logging(verbose: bool = False) -> None:
    """Send logs to stderr, once."""
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
        force=True,
    )


@contextmanager
def fail_on_vigil_error() -> Iterator[None]:
    """Turn a :class:`VigilError` into a one-line message on stderr and exit code 2.

    So is an ``OSError`` that reaches a command (a path that is a file, a directory
    that cannot be created, a full disk, a port in use): an operator's environment,
    not a bug, so one line naming the file rather than a traceback.
    """
    try:
        yield
    except VigilError as exc:
        _fail(str(exc))
    except OSError as exc:
        where = f": {exc.filename}" if exc.filename else ""
        _fail(f"{exc.strerror or exc}{where}; check the path, its permissions and free space")


def _fail(message: str) -> None:
    err_console.print(f"[bold red]error:[/] {message}", highlight=False, soft_wrap=True)
    raise typer.Exit(code=2) from None


def guarded(fn: Callable[..., T]) -> Callable[..., T]:
    """Wrap a command in :func:`fail_on_vigil_error`, keeping its signature for typer."""
    import functools

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> T:
        with fail_on_vigil_error():
            return fn(*args, **kwargs)

    return wrapper
