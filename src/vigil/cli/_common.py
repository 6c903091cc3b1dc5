"""What every command shares: JSON output, error reporting, logging to stderr."""

from __future__ import annotations

import json
import logging
import math
import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from vigil.core.errors import DataError, VigilError

if TYPE_CHECKING:
    import pandas as pd

__all__ = [
    "DATA_HELP",
    "err_console",
    "fail_on_vigil_error",
    "guarded",
    "print_json",
    "print_table",
    "read_table",
    "setup_logging",
    "styled",
    "warn",
]

err_console = Console(stderr=True, markup=False)
"""Messages to stderr. Markup is off: an error naming a TOML section (``[fhir]``) or a
path with brackets prints as written; the two styled prefixes pass ``markup=True`` and
escape what they interpolate (:func:`styled`)."""
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


def styled(prefix: str, message: str) -> str:
    """Return ``message`` after a rich-markup ``prefix`` (``"[bold red]error:[/]"``), escaped.

    Print it with ``err_console.print(..., markup=True)``.
    """
    return f"{prefix} {escape(message)}"


def warn(message: str) -> None:
    """Print ``message`` to stderr after a yellow ``warning:`` (the message as written)."""
    err_console.print(styled("[yellow]warning:[/]", message), markup=True)


def _fail(message: str) -> None:
    err_console.print(styled("[bold red]error:[/]", message), markup=True, highlight=False,
                      soft_wrap=True)
    raise typer.Exit(code=2) from None


def guarded(fn: Callable[..., T]) -> Callable[..., T]:
    """Wrap a command in :func:`fail_on_vigil_error`, keeping its signature for typer."""
    import functools

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> T:
        with fail_on_vigil_error():
            return fn(*args, **kwargs)

    return wrapper


def read_table(
    path: Path,
    option: str,
    *,
    what: str,
    columns: Sequence[str | tuple[str, ...]] = (),
    csv: bool = False,
) -> pd.DataFrame:
    """Read a table a user named on the command line, or raise a one-line error.

    Parameters
    ----------
    path : Path
        A parquet file; with ``csv``, a ``.parquet`` file or else a CSV file.
    option : str
        The option that named it (``"--scores"``), for the message.
    what : str
        What the file should be (``"a predictions parquet file"``).
    columns : sequence of str or tuple of str, optional
        Columns it must have; a tuple is satisfied by any one of its names (``("ICULOS",
        "iculos")``).
    csv : bool, optional
        Read a file whose suffix is not ``.parquet`` as CSV.

    Returns
    -------
    DataFrame

    Raises
    ------
    DataError
        If ``path`` is missing, a directory (e.g. a model package), not a readable table of
        that format, or lacks a required column. The message says what was expected and
        what came, on one line; it names the file, never its content.
    """
    import pandas as pd
    import pyarrow as pa

    names = ", ".join(c if isinstance(c, str) else " or ".join(c) for c in columns)
    expected = f"expected {option} to be {what}" + (f" with columns {names}" if names else "")
    if path.is_dir():
        raise DataError(f"{expected}, got a directory: {path.name}", source=str(path))
    if not path.exists():
        raise DataError(f"{expected}, found nothing at {path}", source=str(path))
    try:
        if csv and path.suffix.lower() != ".parquet":
            frame = pd.read_csv(path)
        else:
            frame = pd.read_parquet(path)
    except (OSError, ValueError, pa.ArrowException) as exc:
        # pandas' ParserError and EmptyDataError, and UnicodeDecodeError, are ValueErrors
        raise DataError(f"{expected}, got {path.name}: {type(exc).__name__}",
                        source=str(path)) from exc
    missing = [c if isinstance(c, str) else " or ".join(c) for c in columns
               if not any(name in frame.columns for name in ((c,) if isinstance(c, str) else c))]
    if missing:
        raise DataError(f"{expected}, got {path.name} without {', '.join(missing)}",
                        source=str(path))
    return frame
