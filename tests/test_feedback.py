"""The durable likes store: kept across reopening, bounded, session names checked."""

from __future__ import annotations

from pathlib import Path

import pytest

from fashionrec.feedback import FILE, MAX_EXAMPLES, FeedbackError, FeedbackStore


def test_likes_are_kept_across_reopening(tmp_path: Path) -> None:
    store = FeedbackStore.for_index(tmp_path)
    store.put("ann", ["1", "2"], ["3"])
    store.add("ann", "4", liked=True)
    store.add("ann", "3", liked=True)  # changed her mind: no longer disliked
    store.put("bob", ["9"], [])
    again = FeedbackStore.for_index(tmp_path)
    assert (tmp_path / FILE).is_file()
    assert again.get("ann").to_dict() == {"liked": ["1", "2", "4", "3"], "disliked": []}
    assert again.get("bob").liked == ["9"] and again.get("nobody").liked == []
    assert again.delete("ann") and not again.delete("ann")
    assert again.get("ann").liked == [] and again.get("bob").liked == ["9"]


def test_put_replaces_the_whole_set(tmp_path: Path) -> None:
    store = FeedbackStore.for_index(tmp_path)
    store.put("ann", ["1", "2"], ["3"])
    assert store.put("ann", ["5"], []).to_dict() == {"liked": ["5"], "disliked": []}


@pytest.mark.parametrize("name", ["", "../etc/passwd", "a/b", ".hidden", "x" * 65, "semi;colon", "new\nline"])
def test_bad_session_names_are_refused(tmp_path: Path, name: str) -> None:
    store = FeedbackStore.for_index(tmp_path)
    with pytest.raises(FeedbackError, match="session name"):
        store.put(name, ["1"], [])
    with pytest.raises(FeedbackError, match="session name"):
        store.get(name)


def test_sizes_are_bounded(tmp_path: Path) -> None:
    store = FeedbackStore.for_index(tmp_path)
    with pytest.raises(FeedbackError, match=f"the limit is {MAX_EXAMPLES}"):
        store.put("ann", [str(n) for n in range(MAX_EXAMPLES + 1)], [])
    store.put("ann", [str(n) for n in range(MAX_EXAMPLES)], [])
    with pytest.raises(FeedbackError, match="limit"):
        store.add("ann", "one-more", liked=True)
    with pytest.raises(FeedbackError, match="both liked and disliked"):
        store.put("bob", ["1"], ["1"])
    assert len(store.get("ann").liked) == MAX_EXAMPLES and store.get("bob").liked == []
