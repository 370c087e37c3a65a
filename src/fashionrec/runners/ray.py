"""The Ray runner: Ray Data feeds the plan's images to a pool of actors that decode and embed them.

The driver (this process) reads the images and sends their bytes: a worker on another node cannot
read this machine's paths. Actors build their encoder once, from the index's encoder spec (the same
weights must be on every node: `encoder_for_index` refuses others), and decode, colour and embed
whole batches. Results stream back to the driver, which writes them through IndexStore in committed
batches, so a killed Ray build resumes and a rerun embeds only what changed, as a local build does.

`ray.init(address=...)` joins a cluster (`auto`, or `ray://head:10001`); without an address a local
Ray instance is started with every core and shut down at the end. A Ray the caller already started
is used as it is and left running.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np

from fashionrec.catalog import ImageSource, Item, Problem
from fashionrec.colour import COLOUR_DIM
from fashionrec.encoders import Encoder, encoder_for_index
from fashionrec.images import ImageError
from fashionrec.runners.stages import COMMIT_EVERY, Decoder, Embedded, ToEmbed, content_hash, problem_of

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")  # before Ray is imported: no usage reports, no token file
os.environ.setdefault("RAY_AUTH_MODE", "disabled")

import ray  # noqa: E402
import ray.data  # noqa: E402

log = logging.getLogger(__name__)

PARTITION_BYTES = 256 * 2**20  # image bytes the driver reads and ships per Ray dataset: bounds its memory
ACTOR_BATCH = 64  # images per actor call: the encoder's own batch
LOCAL_START_TRIES = 3  # starts of a local Ray before its start-up time-out is reported
ACTOR_CPUS = 0.5  # fractional: whole-CPU actors on a small machine starve Ray Data's other tasks and hang


class EmbedActor:
    """One Ray actor: its encoder is built once, in the constructor, from the index's encoder spec."""

    def __init__(self, spec: dict[str, object], backend: str, threads: int) -> None:
        self.encoder = encoder_for_index(spec, backend=backend, threads=threads)
        self.decoder = Decoder(self.encoder.spec.size, self.encoder.spec.fit)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Decode and embed a batch of images; a bad image's row carries its problem and zero vectors."""
        count = len(batch["id"])
        errors = np.full(count, "", dtype=object)
        pixels, colours, good = [], [], []
        for row, (item_id, name, data) in enumerate(zip(batch["id"], batch["name"], batch["data"], strict=True)):
            try:
                square, colour = self.decoder(bytes(data), str(name))
            except ImageError as error:
                errors[row] = problem_of(str(item_id), str(name), error).message
                continue
            pixels.append(square)
            colours.append(colour)
            good.append(row)
        vectors = np.zeros((count, self.encoder.dim), np.float32)
        colour_rows = np.zeros((count, COLOUR_DIM), np.float32)
        if good:
            vectors[good] = self.encoder.embed_pixels(np.stack(pixels))
            colour_rows[good] = np.stack(colours)
        return {"id": batch["id"], "digest": batch["digest"], "vector": vectors, "colour": colour_rows, "error": errors}


@dataclass
class RayRunner:
    """Decoding and embedding in `actors` Ray actors (default: one per CPU of the cluster, or per GPU)."""

    address: str | None = None
    actors: int | None = None
    name: str = "ray"

    def describe(self) -> dict[str, object]:
        return {"runner": self.name, "address": self.address, "actors": self.actors}

    def run(self, work: Sequence[ToEmbed], source: ImageSource, encoder: Encoder) -> Iterator[Embedded]:
        """Embed `work` in batches as the actors finish them; unreadable and bad images come back as problems."""
        by_id = {entry.item.id: entry.item for entry in work}
        with ray_session(self.address):
            resources = ray.cluster_resources()
            gpus = int(resources.get("GPU", 0))
            actors = self.actors or gpus or max(1, int(resources.get("CPU", 1)))
            for rows, problems in _partitions(work, source):
                if problems:
                    yield Embedded.failed(problems, encoder.dim)
                if not rows:
                    continue
                dataset = ray.data.from_items(rows).map_batches(
                    EmbedActor,
                    fn_constructor_kwargs={"spec": encoder.spec.to_dict(), "backend": encoder.backend, "threads": 1},
                    batch_size=ACTOR_BATCH,
                    batch_format="numpy",
                    compute=ray.data.ActorPoolStrategy(size=actors),
                    num_cpus=1 if gpus else ACTOR_CPUS,
                    num_gpus=1 if gpus else 0,
                )
                for batch in dataset.iter_batches(batch_size=COMMIT_EVERY, batch_format="numpy"):
                    yield _embedded(batch, by_id)


@contextmanager
def ray_session(address: str | None) -> Iterator[None]:
    """Ray for one build: joined or started here and shut down at the end, or the caller's, left running."""
    ray.data.DataContext.get_current().enable_progress_bars = False  # the build's own bar shows rate and ETA
    logging.getLogger("ray.data").setLevel(logging.ERROR)  # not a line per dataset in the middle of that bar
    if ray.is_initialized():
        yield
        return
    if address:
        ray.init(address=address, logging_level="WARNING")
    else:
        _start_local_ray()
    try:
        yield
    finally:
        ray.shutdown()


def _start_local_ray() -> None:
    """A local Ray with every core, started again when its node misses Ray's fixed 30 s start-up window:
    on cores busy with other work the raylet can register late, and a second start then succeeds."""
    for attempt in range(1, LOCAL_START_TRIES + 1):
        try:
            ray.init(num_cpus=os.cpu_count(), include_dashboard=False, logging_level="WARNING")
            return
        except Exception as error:  # Ray raises a bare Exception for this
            if "timed out during startup" not in str(error) or attempt == LOCAL_START_TRIES:
                raise
            log.warning(
                "a local Ray did not start in time (try %d of %d); starting it again", attempt, LOCAL_START_TRIES
            )
            ray.shutdown()


Rows = list[dict[str, object]]


def _partitions(work: Sequence[ToEmbed], source: ImageSource) -> Iterator[tuple[Rows, list[Problem]]]:
    """The work as rows with image bytes, read on the driver PARTITION_BYTES at a time; unreadable ones as problems."""
    rows: Rows = []
    problems: list[Problem] = []
    size = 0
    for entry in work:
        try:
            data = source.read(entry.item.image)
        except (ImageError, OSError) as error:
            problems.append(problem_of(entry.item.id, entry.item.image, error))
            continue
        rows.append({"id": entry.item.id, "name": entry.item.image, "digest": content_hash(data), "data": data})
        size += len(data)
        if size >= PARTITION_BYTES:
            yield rows, problems
            rows, problems, size = [], [], 0
    yield rows, problems


def _embedded(batch: dict[str, np.ndarray], by_id: dict[str, Item]) -> Embedded:
    """An actor's output rows as an Embedded batch: failed rows become their items' problems."""
    good = batch["error"] == ""
    problems = [
        Problem(str(item_id), str(message))
        for item_id, message in zip(batch["id"][~good], batch["error"][~good], strict=True)
    ]
    return Embedded(
        [by_id[str(item_id)] for item_id in batch["id"][good]],
        [str(digest) for digest in batch["digest"][good]],
        np.ascontiguousarray(batch["vector"][good], dtype=np.float32),
        np.ascontiguousarray(batch["colour"][good], dtype=np.float32),
        problems,
    )
