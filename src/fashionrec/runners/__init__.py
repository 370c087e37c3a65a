"""Build runners: where the images of a build plan are decoded and embedded (the seam between a build and compute).

A runner takes the plan's items to embed and yields `Embedded` batches; `build.py` plans the work and
writes every batch through IndexStore in one transaction, so resuming, incremental rebuilds and the
index format are the same whatever the runner. `local` decodes in worker processes on this machine and
embeds in this process; `ray` decodes and embeds in Ray actors, on this machine or a cluster.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Protocol

from fashionrec.catalog import ImageSource
from fashionrec.encoders import Encoder
from fashionrec.runners.stages import Embedded, ToEmbed

RUNNERS = ("local", "ray")


class Runner(Protocol):
    name: str

    def describe(self) -> dict[str, object]:
        """What the manifest records about the build: the runner and its workers."""
        ...

    def run(self, work: Sequence[ToEmbed], source: ImageSource, encoder: Encoder) -> Iterator[Embedded]:
        """Embed `work` in batches, in any order; bad images come back as problems of their items."""
        ...


def make_runner(name: str, *, workers: int | None = None, ray_address: str | None = None) -> Runner:
    """The runner called `name`; Ray is imported only for the Ray runner."""
    if name == "local":
        if ray_address is not None:
            raise ValueError("a Ray address needs the ray runner (--runner ray)")
        from fashionrec.runners.local import LocalRunner

        return LocalRunner(workers)
    if name == "ray":
        try:
            from fashionrec.runners.ray import RayRunner
        except ModuleNotFoundError as error:
            if error.name is None or not error.name.startswith("ray"):
                raise
            raise ValueError("the ray runner needs Ray: pip install 'fashionrec[ray]'") from None
        return RayRunner(address=ray_address, actors=workers)
    raise ValueError(f"unknown runner {name!r}; choose from {', '.join(RUNNERS)}")
