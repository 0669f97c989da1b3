"""Phone candidates checked against libphonenumber's numbering plans (the ``[phones]`` extra).

Opt-in (``PIIDetector(phone_regions=[...])``). The fast scan in :mod:`.phones` proposes and
shape-checks candidates; each candidate it accepts must then also be a valid number as
written: either
international (``+``, ``00``/``011``), valid for the country its calling code names, or
national, valid in one of the configured regions *with* the trunk prefix that region requires
(``(333) 123 4567`` is no number in the US, whose area codes exclude 333, nor in Great Britain,
where a national number is dialled with its ``0``). ``phonenumbers`` is imported only when a
detector is built with regions.

Measured on the shared sample, many numbers other than phones are valid in *some* region
(``(333) 123 4567`` is an Italian mobile, ``555-555-555`` a Polish number), so the check only
pays for an app that serves a few regions and accepts missing numbers written for others.

NANP numbers written in the well-known fictional forms (area code or exchange ``555``, the
``123-456-7890`` example) are kept whatever the plan says: someone typing them means a phone.
"""

from __future__ import annotations

import importlib.util
import re
from collections.abc import Callable, Iterable
from functools import lru_cache
from typing import Any

__all__ = ["available", "region_validator"]


# "+", "(+", and the exit codes "00" (most countries) and "011" (the NANP).
_INTERNATIONAL = re.compile(r"\(?\+|011(?=[ .-]?[1-9])|00(?=[ .-]?[1-9])")
# Grouped NANP numbers (3-3-4) whose area code or exchange is 555, or 123-456-7890, with an
# extension or not.
_NANP_FICTIONAL = re.compile(
    r"(?:\+?1[ .-]?)?\(?(?:555\)?[ .-]?\d{3}|\d{3}\)?[ .-]?555|123\)?[ .-]?456)[ .-]\d{4}"
    r"(?:[ \u00a0]?(?:x|ext\.?|extension|#)[ \u00a0]?\d{1,6})?",
    re.IGNORECASE,
)


@lru_cache(maxsize=1)
def available() -> bool:
    """Whether ``phonenumbers`` can be imported (it is not imported by this test)."""
    return importlib.util.find_spec("phonenumbers") is not None


def region_validator(regions: Iterable[str]) -> Callable[[str], bool]:
    """``valid(candidate) -> bool`` for the given ISO 3166 regions (``phonenumbers`` needed).

    The region names are checked now; the metadata of each region is loaded on first use.
    """
    wanted = tuple(dict.fromkeys(r.upper() for r in regions))
    if not wanted:
        raise ValueError("phone_regions: name at least one region")
    unknown = [r for r in wanted if r not in _library().SUPPORTED_REGIONS]
    if unknown:
        raise ValueError(f"phone_regions: unknown regions: {', '.join(unknown)}")
    return _Validator(wanted)


def _library() -> Any:
    import phonenumbers  # the [phones] extra: imported on first use only

    return phonenumbers


class _Validator:
    __slots__ = ("_lib", "_prefix_present", "_regions")

    def __init__(self, regions: tuple[str, ...]) -> None:
        self._regions = regions
        self._lib: Any = None
        self._prefix_present: Callable[[Any], bool] = bool

    def __call__(self, candidate: str) -> bool:
        if _NANP_FICTIONAL.fullmatch(candidate):
            return True
        lib = self._lib
        if lib is None:
            from phonenumbers.phonenumbermatcher import _is_national_prefix_present_if_required

            lib = self._lib = _library()
            self._prefix_present = _is_national_prefix_present_if_required
        regions: tuple[str | None, ...] = self._regions
        exit_code = _INTERNATIONAL.match(candidate)
        if exit_code is not None:
            # Checked for the country its calling code names, whatever the regions.
            candidate = "+" + candidate[exit_code.end() :].lstrip("+")
            regions = (None,)
        for region in regions:
            try:
                number = lib.parse(candidate, region, keep_raw_input=True)
            except lib.NumberParseException:
                continue
            if lib.is_valid_number(number) and self._prefix_present(number):
                return True
        return False
