"""The one filter syntax (`column=value`) of every surface, resolved against a real index's values."""

from __future__ import annotations

from pathlib import Path

import pytest

from fashionrec.build import BuildReport
from fashionrec.filters import FilterError, parse_filters, resolve_filters
from fashionrec.search import Recommender


@pytest.fixture(scope="module")
def known(built_index: tuple[Path, BuildReport]) -> dict[str, list[str]]:
    """Each metadata column's values in the 300-product index."""
    snapshot = Recommender.open(built_index[0]).snapshot
    return {name: list(column.values) for name, column in snapshot.columns.items()}


def test_parse_splits_at_the_first_separator() -> None:
    entries = ["gender=Men", "articleType=Shirts", " articleType = Tshirts ", "productDisplayName=Tee: blue=navy"]
    assert parse_filters(entries) == {
        "gender": ["Men"],
        "articleType": ["Shirts", "Tshirts"],
        "productDisplayName": ["Tee: blue=navy"],
    }
    assert parse_filters(["gender:Men", "usage:a=b"]) == {"gender": ["Men"], "usage": ["a=b"]}  # the old API form
    for bad in ("gender", "=Men", ""):
        with pytest.raises(FilterError, match="is not COLUMN=VALUE"):
            parse_filters([bad])


def test_resolve_matches_any_case_and_spells_as_the_index(known: dict[str, list[str]]) -> None:
    resolved = resolve_filters(parse_filters(["GENDER=men", "articletype=tshirts", "gender=WOMEN"]), known)
    assert resolved == {"gender": ["Men", "Women"], "articleType": ["Tshirts"]}
    both = {**known, "baseColour": [*known["baseColour"], "navy blue"]}  # one value under two spellings
    assert sorted(resolve_filters({"baseColour": "NAVY BLUE"}, both)["baseColour"]) == ["Navy Blue", "navy blue"]


def test_unknown_names_and_values_say_what_is_close(known: dict[str, list[str]]) -> None:
    with pytest.raises(FilterError, match=r"no item has articleType='Tshirt'; did you mean 'Tshirts'"):
        resolve_filters({"articleType": "Tshirt"}, known)
    with pytest.raises(FilterError, match=r"unknown filter column 'colour'; did you mean 'baseColour'\?"):
        resolve_filters({"colour": "Red"}, known)
    with pytest.raises(FilterError, match=r"no item has gender='Robot'$"):  # nothing close: no hint
        resolve_filters({"gender": "Robot"}, known)


def test_every_search_resolves_its_filters(built_index: tuple[Path, BuildReport]) -> None:
    recommender = Recommender.open(built_index[0])
    item = recommender.items[0].id
    exact = recommender.similar_to_item(item, 5, {"gender": "Women"})
    assert exact and exact == recommender.similar_to_item(item, 5, {"gender": "women"})
    with pytest.raises(FilterError, match="did you mean 'Women'"):
        recommender.similar_to_item(item, 5, {"gender": "Wmen"})
