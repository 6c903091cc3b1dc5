"""A small UCUM parser: unit codes as units, not strings.

It reads the UCUM expression syntax (Schadow & McDonald, *The Unified Code for
Units of Measure*, version 2.1, §§1-7 and table "syntax rules"): prefixes,
the atoms the clinical catalog needs, products (``.``), quotients (``/``, also a
leading ``/``), integer exponents (``m2``, ``s-1``), integer factors (``1/min``,
``10*3``), parentheses and annotations in braces (``{beats}/min`` is ``/min``,
``mmol/L{whole blood}`` is ``mmol/L``). The result is a factor to coherent base
units, a dimension vector and, for the two temperature scales with an offset
(``Cel``, ``[degF]``), an offset; :func:`affine` turns two such units into the
``scale, offset`` map between them, so conversions follow from the parse, not from
a table of spellings.

Case. UCUM is case-sensitive in its c/s form and defines a separate
case-insensitive c/i form written in upper case (§4). A code with at least one
lower-case letter outside its annotations is read in the c/s form, any other code
in the c/i form. So ``mg/dL`` and ``MG/DL``, ``Cel`` and ``CEL``, ``mm[Hg]`` and
``MM[HG]``, ``mL`` and ``ML`` name the same unit, while ``mm[hg]`` and ``Mg/dL`` are
read as c/s (no atom ``[hg]``; ``Mg`` is the megagram) and do not become mm[Hg] or mg/dL.

Deliberate departures, all stricter than UCUM: ``eq`` (equivalents) gets its own
dimension instead of UCUM's ``1 mol``, and ``[IU]``, ``[pH]`` are arbitrary units,
commensurable only with themselves, because equating them with moles or enzyme
units depends on the analyte (the valence of Mg2+, the assay); the catalog states
those conversions per variable. Special units (``Cel``, ``[degF]``, ``[pH]``) may not
carry a prefix, an exponent or take part in a product. Atoms outside
:data:`ATOMS` are not known and the code does not parse.

Pure Python; :func:`parse` is cached per distinct code.

>>> affine(parse("ng/L"), parse("ng/mL"))
(0.001, 0.0)
>>> parse("{beats}/min").same_as(parse("1/min"))
True
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache

__all__ = ["ATOMS", "DIMENSIONS", "PREFIXES", "Unit", "UnitSyntaxError", "affine", "parse"]

DIMENSIONS = ("m", "g", "s", "mol", "K", "eq", "[IU]", "[pH]")
"""The base dimensions of a :class:`Unit`, in the order of :attr:`Unit.dims`."""

_ND = len(DIMENSIONS)


def _dim(**powers: int) -> tuple[int, ...]:
    names = {"length": 0, "mass": 1, "time": 2, "amount": 3, "temperature": 4, "eq": 5,
             "iu": 6, "ph": 7}
    out = [0] * _ND
    for name, power in powers.items():
        out[names[name]] = power
    return tuple(out)


PREFIXES: dict[str, tuple[str, float]] = {
    # c/s: (c/i, factor); UCUM table 1
    "Y": ("YA", 1e24), "Z": ("ZA", 1e21), "E": ("EX", 1e18), "P": ("PT", 1e15),
    "T": ("TR", 1e12), "G": ("GA", 1e9), "M": ("MA", 1e6), "k": ("K", 1e3), "h": ("H", 1e2),
    "da": ("DA", 1e1), "d": ("D", 1e-1), "c": ("C", 1e-2), "m": ("M", 1e-3),
    "u": ("U", 1e-6), "n": ("N", 1e-9), "p": ("P", 1e-12), "f": ("F", 1e-15),
    "a": ("A", 1e-18), "z": ("ZO", 1e-21), "y": ("YO", 1e-24),
}
"""UCUM prefixes: c/s code -> (c/i code, factor)."""

ATOMS: dict[str, tuple[str, float, tuple[int, ...], bool, bool]] = {
    # c/s: (c/i, factor to coherent base units, dims, metric (takes a prefix), special)
    "m": ("M", 1.0, _dim(length=1), True, False),
    "g": ("G", 1.0, _dim(mass=1), True, False),
    "s": ("S", 1.0, _dim(time=1), True, False),
    "mol": ("MOL", 1.0, _dim(amount=1), True, False),
    "K": ("K", 1.0, _dim(temperature=1), True, False),
    "L": ("L", 1e-3, _dim(length=3), True, False),
    "l": ("L", 1e-3, _dim(length=3), True, False),
    "min": ("MIN", 60.0, _dim(time=1), False, False),
    "h": ("HR", 3600.0, _dim(time=1), False, False),
    "d": ("D", 86400.0, _dim(time=1), False, False),
    "wk": ("WK", 604800.0, _dim(time=1), False, False),
    "a": ("ANN", 31557600.0, _dim(time=1), False, False),  # Julian year, 365.25 d
    "Pa": ("PAL", 1000.0, _dim(mass=1, length=-1, time=-2), True, False),  # N/m2 in g
    "m[Hg]": ("M[HG]", 133322.0 * 1000.0, _dim(mass=1, length=-1, time=-2), True, False),
    "kat": ("KAT", 1.0, _dim(amount=1, time=-1), True, False),
    "U": ("U", 1e-6 / 60.0, _dim(amount=1, time=-1), True, False),  # umol/min
    "eq": ("EQ", 1.0, _dim(eq=1), True, False),
    "[IU]": ("[IU]", 1.0, _dim(iu=1), True, False),
    "[iU]": ("[IU]", 1.0, _dim(iu=1), True, False),
    "%": ("%", 1e-2, _dim(), False, False),
    "[ppm]": ("[PPM]", 1e-6, _dim(), False, False),
    "10*": ("10*", 10.0, _dim(), False, False),
    "10^": ("10^", 10.0, _dim(), False, False),
    "Cel": ("CEL", 1.0, _dim(temperature=1), False, True),
    "[degF]": ("[DEGF]", 5.0 / 9.0, _dim(temperature=1), False, True),
    "[pH]": ("[PH]", 1.0, _dim(ph=1), False, True),
}
"""The atoms known: c/s code -> (c/i code, factor, dims, metric, special)."""

_OFFSETS = {"Cel": 273.15, "[degF]": 459.67 * 5.0 / 9.0}
"""Kelvin at zero of a special temperature unit (``K = value * factor + offset``)."""


class UnitSyntaxError(ValueError):
    """A unit code that is not a UCUM expression of known atoms."""


@dataclass(frozen=True, slots=True)
class Unit:
    """A parsed UCUM unit: ``value in base units = value * factor + offset``.

    Attributes
    ----------
    code : str
        The code as given.
    factor : float
        Factor to the coherent base units of :data:`DIMENSIONS` (gram, not kilogram).
    dims : tuple of int
        The power of each base dimension, in the order of :data:`DIMENSIONS`.
    offset : float
        Non-zero only for ``Cel`` and ``[degF]`` (to kelvin).
    """

    code: str
    factor: float
    dims: tuple[int, ...]
    offset: float = 0.0

    def same_as(self, other: Unit) -> bool:
        """Whether both name the same unit (same dimension, factor and offset)."""
        return (self.dims == other.dims and self.offset == other.offset
                and abs(self.factor - other.factor) <= 1e-12 * abs(other.factor))


def affine(source: Unit, target: Unit) -> tuple[float, float] | None:
    """Return ``(scale, offset)`` with ``target = source * scale + offset``, or None.

    Parameters
    ----------
    source, target : Unit

    Returns
    -------
    tuple of float or None
        None when the units are not commensurable (different dimensions).
    """
    if source.dims != target.dims:
        return None
    # UCUM factors are exact decimals: 15 significant digits drop the binary rounding noise
    scale = float(f"{source.factor / target.factor:.15g}")
    return scale, float(f"{(source.offset - target.offset) / target.factor:.15g}")


_ANNOTATION = re.compile(r"\{[!-z|~ ]*\}")
_EXPONENT = re.compile(r"[-+]?[0-9]+")
_FACTOR = re.compile(r"[0-9]+(?![*^0-9])")


class _Parser:
    """Recursive descent over the UCUM grammar (term, component, annotatable)."""

    def __init__(self, code: str, *, ci: bool) -> None:
        self.code, self.ci, self.pos = code, ci, 0

    def fail(self, what: str) -> UnitSyntaxError:
        return UnitSyntaxError(f"{self.code!r} is not a UCUM unit: {what}")

    def peek(self) -> str:
        return self.code[self.pos] if self.pos < len(self.code) else ""

    def term(self) -> tuple[float, list[int], bool]:
        factor, dims, special = 1.0, [0] * _ND, False
        op = "."
        if self.peek() == "/":
            op, self.pos = "/", self.pos + 1
        while True:
            f, d, sp = self.component()
            special = special or sp
            sign = 1 if op == "." else -1
            factor = factor * f if sign == 1 else factor / f
            dims = [a + sign * b for a, b in zip(dims, d, strict=True)]
            op = self.peek()
            if op not in (".", "/"):
                return factor, dims, special
            self.pos += 1

    def component(self) -> tuple[float, list[int], bool]:
        ch = self.peek()
        if ch == "(":
            self.pos += 1
            out = self.term()
            if self.peek() != ")":
                raise self.fail("unbalanced parenthesis")
            self.pos += 1
            self.annotation()
            return out
        if ch == "{":
            self.annotation()
            return 1.0, [0] * _ND, False
        digits = _FACTOR.match(self.code, self.pos)
        if digits:
            self.pos = digits.end()
            self.annotation()
            return float(digits.group()), [0] * _ND, False
        return self.annotatable()

    def annotation(self) -> None:
        if self.peek() == "{":
            m = _ANNOTATION.match(self.code, self.pos)
            if m is None:
                raise self.fail("unclosed or invalid annotation")
            self.pos = m.end()

    def symbol(self) -> str:
        start, code = self.pos, self.code
        if code.startswith(("10*", "10^"), start):
            self.pos += 3
            return code[start:self.pos]
        while self.pos < len(code):
            ch = code[self.pos]
            if ch == "[":
                end = code.find("]", self.pos)
                if end < 0:
                    raise self.fail("unclosed bracket")
                self.pos = end + 1
            elif ch in "./(){}+-" or ch.isdigit():
                break
            else:
                self.pos += 1
        return code[start:self.pos]

    def annotatable(self) -> tuple[float, list[int], bool]:
        text = self.symbol()
        if not text:
            raise self.fail(f"expected a unit at position {self.pos}")
        exponent = 1
        exp_m = _EXPONENT.match(self.code, self.pos)
        if exp_m:
            exponent = int(exp_m.group())
            self.pos = exp_m.end()
        factor, dims, special = self.simple(text)
        if special and exponent != 1:
            raise self.fail(f"special unit {text!r} cannot take an exponent")
        self.annotation()
        return factor ** exponent, [d * exponent for d in dims], special

    def simple(self, text: str) -> tuple[float, tuple[int, ...], bool]:
        atom = _ATOMS_CI.get(text) if self.ci else ATOMS.get(text)
        if atom is not None:
            return atom[1], atom[2], atom[4]
        prefixes = _PREFIXES_CI if self.ci else _PREFIXES_CS
        for plen in (2, 1):
            prefix, rest = text[:plen], text[plen:]
            if prefix in prefixes and rest:
                atom = _ATOMS_CI.get(rest) if self.ci else ATOMS.get(rest)
                if atom is not None and atom[3]:
                    return prefixes[prefix] * atom[1], atom[2], atom[4]
        raise self.fail(f"unknown unit {text!r}")


_ATOMS_CI = {v[0]: v for v in ATOMS.values()}
_PREFIXES_CI = {v[0]: v[1] for v in PREFIXES.values()}
_PREFIXES_CS = {k: v[1] for k, v in PREFIXES.items()}


@lru_cache(maxsize=4096)
def parse(code: str) -> Unit:
    """Parse a UCUM code (c/s form, or c/i form when it has no lower-case letter).

    Annotations do not decide the form: ``MG/DL{serum}`` is read in the c/i form.

    Parameters
    ----------
    code : str
        E.g. ``"mg/dL"``, ``"MG/DL"``, ``"{beats}/min"``, ``"10*3/uL"``, ``"[degF]"``.

    Returns
    -------
    Unit

    Raises
    ------
    UnitSyntaxError
        With what was expected, when the code is not a UCUM expression of known atoms.
    """
    if not code or code != code.strip():
        raise UnitSyntaxError(f"{code!r} is not a UCUM unit: empty or surrounded by spaces")
    p = _Parser(code, ci=not any(c.islower() for c in _ANNOTATION.sub("", code)))
    factor, dims, special = p.term()
    if p.pos != len(code):
        raise p.fail(f"unexpected {code[p.pos:]!r}")
    if special:
        name = _special_name(code, ci=p.ci)
        if name is None:
            raise p.fail("a special unit (Cel, [degF], [pH]) must stand alone")
        return Unit(code, factor, tuple(dims), _OFFSETS.get(name, 0.0))
    return Unit(code, factor, tuple(dims))


def _special_name(code: str, *, ci: bool) -> str | None:
    bare = _ANNOTATION.sub("", code)
    for name, atom in ATOMS.items():
        if atom[4] and bare == (atom[0] if ci else name):
            return name
    return None
