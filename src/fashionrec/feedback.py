"""A shopper's likes and dislikes kept per named session or user: INDEX/feedback.sqlite.

SQLite gives atomic writes (one transaction per change) and safe sharing between API workers. A
session name is only ever a value in a table, never part of a path; names are validated anyway, and
sizes are bounded so a client cannot grow the file without limit.
"""

from __future__ import annotations

import re
import sqlite3
import time
from collections.abc import Iterator, Sequence
from contextlib import closing, contextmanager
from dataclasses import dataclass, field
from pathlib import Path

FILE = "feedback.sqlite"
SESSION_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.@-]{0,63}")
MAX_EXAMPLES = 200  # liked and disliked items of one session together
MAX_SESSIONS = 10_000
SCHEMA = """
CREATE TABLE IF NOT EXISTS feedback (
    session TEXT NOT NULL,
    item TEXT NOT NULL,
    liked INTEGER NOT NULL CHECK (liked IN (0, 1)),
    at REAL NOT NULL,
    PRIMARY KEY (session, item)
)
"""


class FeedbackError(ValueError):
    """A session name or a set of examples that cannot be stored: says which and why."""


@dataclass(frozen=True)
class Feedback:
    """One session's examples, oldest first."""

    liked: list[str] = field(default_factory=list)
    disliked: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, list[str]]:
        return {"liked": self.liked, "disliked": self.disliked}


def check_session(name: str) -> str:
    """The name itself, or FeedbackError: 1 to 64 letters, digits, '_', '.', '@', '-', first a letter or digit."""
    if not isinstance(name, str) or not SESSION_NAME.fullmatch(name):
        raise FeedbackError(
            f"session name {str(name)[:80]!r} is not allowed: use 1 to 64 letters, digits, '_', '.', '@' or '-', "
            "starting with a letter or digit"
        )
    return name


class FeedbackStore:
    """Likes and dislikes per session in one SQLite file; each call opens its own connection (thread-safe)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        with self._connect() as db:
            db.execute(SCHEMA)

    @classmethod
    def for_index(cls, directory: str | Path) -> FeedbackStore:
        """The store beside an index: INDEX/feedback.sqlite."""
        return cls(Path(directory) / FILE)

    @contextmanager
    def _connect(self) -> Iterator[sqlite3.Connection]:
        """One transaction: committed on success, rolled back on any error."""
        with closing(sqlite3.connect(self.path, timeout=10.0)) as db, db:
            yield db

    def get(self, session: str) -> Feedback:
        """A session's examples; an unknown session has none."""
        with self._connect() as db:
            rows = db.execute(
                "SELECT item, liked FROM feedback WHERE session = ? ORDER BY at, rowid", (check_session(session),)
            ).fetchall()
        return Feedback([item for item, liked in rows if liked], [item for item, liked in rows if not liked])

    def put(self, session: str, liked: Sequence[str], disliked: Sequence[str]) -> Feedback:
        """Replace a session's examples as a whole (one transaction: readers see the old set or the new one)."""
        check_session(session)
        both = set(liked) & set(disliked)
        if both:
            raise FeedbackError(f"session {session!r}: item {sorted(both)[0]!r} is both liked and disliked")
        examples = [(item, 1) for item in dict.fromkeys(liked)] + [(item, 0) for item in dict.fromkeys(disliked)]
        self._check_size(session, len(examples))
        now = time.time()
        with self._connect() as db:
            self._check_room(db, session)
            db.execute("DELETE FROM feedback WHERE session = ?", (session,))
            db.executemany(
                "INSERT INTO feedback (session, item, liked, at) VALUES (?, ?, ?, ?)",
                [(session, item, like, now) for item, like in examples],
            )
        return self.get(session)

    def add(self, session: str, item: str, liked: bool) -> Feedback:
        """Like or dislike one more item (an earlier opinion of the same item is replaced)."""
        check_session(session)
        with self._connect() as db:
            self._check_room(db, session)
            count = db.execute("SELECT COUNT(*) FROM feedback WHERE session = ? AND item != ?", (session, item))
            self._check_size(session, count.fetchone()[0] + 1)
            db.execute(
                "INSERT OR REPLACE INTO feedback (session, item, liked, at) VALUES (?, ?, ?, ?)",
                (session, item, int(liked), time.time()),
            )
        return self.get(session)

    def delete(self, session: str) -> bool:
        """Forget a session; False if it had nothing stored."""
        with self._connect() as db:
            return db.execute("DELETE FROM feedback WHERE session = ?", (check_session(session),)).rowcount > 0

    @staticmethod
    def _check_size(session: str, count: int) -> None:
        if count > MAX_EXAMPLES:
            raise FeedbackError(f"session {session!r}: {count:,} examples, the limit is {MAX_EXAMPLES}")

    @staticmethod
    def _check_room(db: sqlite3.Connection, session: str) -> None:
        """Refuse a new session once MAX_SESSIONS exist (existing ones can still change)."""
        if db.execute("SELECT 1 FROM feedback WHERE session = ? LIMIT 1", (session,)).fetchone():
            return
        sessions = db.execute("SELECT COUNT(DISTINCT session) FROM feedback").fetchone()[0]
        if sessions >= MAX_SESSIONS:
            raise FeedbackError(f"too many sessions ({sessions:,}); delete some first (the limit is {MAX_SESSIONS:,})")
