"""Metadata filters, one syntax for every surface: `column=value`, repeatable.

The CLI (`--filter gender=Men`), the API (`?filter=gender=Men`) and the app all parse with `parse_filters`,
and every search resolves with `resolve_filters` (search.Snapshot does it): column names and values match
case-insensitively against what the index holds, and a name or value it does not hold is an error naming
the closest known ones, never a silent empty result. The API's first form, `column:value`, is still
accepted (deprecated).
"""

from __future__ import annotations

import difflib
from collections.abc import Collection, Iterable, Mapping, Sequence

Filters = Mapping[str, str | Sequence[str]]  # column -> the value, or any of the values
SEPARATORS = "=:"  # `=`; `:` is the API's deprecated first form
HINTS = 3  # closest known names offered when a filter names something the index does not hold


class FilterError(ValueError):
    """A filter that cannot be parsed, or that names a column or a value the index does not hold."""


def parse_filters(entries: Iterable[str]) -> dict[str, list[str]]:
    """`column=value` entries as {column: [values]}; several values of one column mean any of them.

    The entry is split at its first `=` or `:`, so a value may hold either (`name=Tee: Blue`).
    """
    filters: dict[str, list[str]] = {}
    for entry in entries:
        cut = min((at for at in map(entry.find, SEPARATORS) if at >= 0), default=-1)
        column, value = entry[:cut].strip(), entry[cut + 1 :].strip()
        if cut < 0 or not column:
            raise FilterError(f"filter {entry!r} is not COLUMN=VALUE (e.g. articleType=Tshirts)")
        filters.setdefault(column, []).append(value)
    return filters


def resolve_filters(filters: Filters, known: Mapping[str, Collection[str]]) -> dict[str, list[str]]:
    """The filters spelled as the index spells them: {column: [values]}, matched case-insensitively.

    `known` holds each column's values in the index. An unknown column or value raises FilterError with
    the closest known ones as a hint; a value held under several spellings (`Navy Blue`, `navy blue`)
    selects all of them.
    """
    resolved: dict[str, list[str]] = {}
    columns = _folded(known)
    for column, wanted in filters.items():
        names = columns.get(column.casefold())
        if names is None:
            raise FilterError(f"unknown filter column {column!r}{_hint(column, known)}; columns are {', '.join(known)}")
        name = column if column in names else names[0]
        values = _folded(known[name])
        for value in [wanted] if isinstance(wanted, str) else wanted:
            spellings = values.get(value.casefold())
            if spellings is None:
                raise FilterError(f"no item has {name}={value!r}{_hint(value, known[name])}")
            resolved.setdefault(name, []).extend(spellings)
    return resolved


def _folded(names: Iterable[str]) -> dict[str, list[str]]:
    folded: dict[str, list[str]] = {}
    for name in names:
        folded.setdefault(name.casefold(), []).append(name)
    return folded


def _hint(given: str, known: Collection[str]) -> str:
    """`; did you mean 'A', 'B'?` for the closest known names, or nothing when none is close."""
    by_folded = {name.casefold(): name for name in known}
    close = difflib.get_close_matches(given.casefold(), list(by_folded), n=HINTS, cutoff=0.6)
    return f"; did you mean {', '.join(repr(by_folded[c]) for c in close)}?" if close else ""
