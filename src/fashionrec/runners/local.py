"""The local runner: worker processes read and decode images, the main process embeds full batches.

Spawned processes re-import the caller's `__main__` script; when that script would start the build
again (no `if __name__ == "__main__":` guard, as a pasted snippet has none), worker threads decode
instead: slower for small images (the GIL), but a library call works as the user wrote it.
Each worker is built from one `DecodeWorker` (its whole state: the image source and the decoder),
handed to the process when it starts, so tasks stay small and nothing lives in module globals.
"""

from __future__ import annotations

import ast
import multiprocessing
import os
import queue
import signal
import sys
import threading
import traceback
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from fashionrec.catalog import ImageSource, Problem
from fashionrec.encoders import Encoder
from fashionrec.images import ImageError
from fashionrec.runners.stages import COMMIT_EVERY, Decoder, Embedded, ToEmbed, content_hash, problem_of

CHUNK = 16  # images per message to a worker: fewer, larger messages
MAX_IN_FLIGHT = 4 * COMMIT_EVERY  # images handed out ahead of the model: bounds the decoded pixels in memory
POLL_SECONDS = 1.0  # how often a waiting main process checks that its workers are alive

Task = tuple[int, str, str]  # position in the work list, item id, image name
Decoded = tuple[int, str, "np.ndarray | None", "np.ndarray | None", "Problem | None"]


class WorkerFailed(RuntimeError):
    """A decoding worker hit an unexpected error (not a bad image, which is the item's problem)."""


@dataclass(frozen=True)
class DecodeWorker:
    """Reads, hashes and decodes images of one source for one encoder: the whole state of a worker."""

    source: ImageSource
    decoder: Decoder

    def decode(self, task: Task) -> Decoded:
        """(position, hash, pixels, colour, None) of one image, or (position, hash, None, None, its problem)."""
        position, item_id, name = task
        try:
            data = self.source.read(name)
        except (ImageError, OSError) as error:
            return position, "", None, None, problem_of(item_id, name, error)
        try:
            pixels, colour = self.decoder(data, name)
        except ImageError as error:
            return position, content_hash(data), None, None, problem_of(item_id, name, error)
        return position, content_hash(data), pixels, colour, None

    def serve(self, inbox: queue.Queue, outbox: queue.Queue, parent_alive: Callable[[], bool] | None = None) -> None:
        """Decode chunks of tasks from `inbox` into `outbox` until a None arrives, or the main process is gone."""
        while True:
            try:
                chunk = inbox.get(timeout=POLL_SECONDS)
            except queue.Empty:
                if parent_alive is None or parent_alive():  # a thread's parent is this process: alive
                    continue
                return
            if chunk is None:
                return
            try:
                outbox.put([self.decode(task) for task in chunk])
            except Exception:  # a bug, not a bad image: the main process stops the build with its traceback
                outbox.put(WorkerFailed(traceback.format_exc()))
                return

    def serve_process(self, inbox: queue.Queue, outbox: queue.Queue) -> None:
        """`serve` in a worker process: Ctrl-C reaches the whole process group, and the main process stops it.
        A main process killed alone (`kill -9 PID`) sends no None: the worker sees its parent gone and exits
        (it holds the inbox's writing end too, so it would never see the pipe close)."""
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        parent = multiprocessing.parent_process()
        self.serve(inbox, outbox, parent.is_alive if parent is not None else None)
        if parent is not None and not parent.is_alive():
            outbox.cancel_join_thread()  # nobody reads the results any more: exit without flushing them


@dataclass
class LocalRunner:
    """Decoding in `workers` processes (threads when processes cannot be spawned; inline with 0),
    the model in this process on batches of COMMIT_EVERY images."""

    workers: int | None = None
    name: str = "local"

    @property
    def worker_count(self) -> int:
        return min(os.cpu_count() or 1, 4) if self.workers is None else self.workers

    def describe(self) -> dict[str, object]:
        return {"runner": self.name, "workers": self.worker_count}

    def run(
        self, work: Sequence[ToEmbed], source: ImageSource, encoder: Encoder, decoder: Decoder | None = None
    ) -> Iterator[Embedded]:
        """Embed `work` in batches; bad images come back as problems of their items.

        `decoder` turns each image into the model's pixels in the workers: the encoder's own fitting by
        default, or another picture of it (training's shopper-like views, views.ViewDecoder)."""
        worker = DecodeWorker(source, decoder or Decoder(encoder.spec.size, encoder.spec.fit))
        tasks = [(position, entry.item.id, entry.item.image) for position, entry in enumerate(work)]
        positions: list[int] = []
        digests: list[str] = []
        pixels: list[np.ndarray] = []
        colours: list[np.ndarray] = []
        problems: list[Problem] = []
        for position, digest, square, colour, problem in _decoded(tasks, worker, self.worker_count):
            if problem is not None:
                problems.append(problem)
            else:
                positions.append(position)
                digests.append(digest)
                pixels.append(square)  # type: ignore[arg-type]
                colours.append(colour)  # type: ignore[arg-type]
            if len(positions) + len(problems) >= COMMIT_EVERY:
                yield _batch(work, positions, digests, pixels, colours, problems, encoder)
                positions, digests, pixels, colours, problems = [], [], [], [], []
        if positions or problems:
            yield _batch(work, positions, digests, pixels, colours, problems, encoder)


def _batch(
    work: Sequence[ToEmbed],
    positions: list[int],
    digests: list[str],
    pixels: list[np.ndarray],
    colours: list[np.ndarray],
    problems: list[Problem],
    encoder: Encoder,
) -> Embedded:
    """Run the model on one batch of decoded images."""
    if not positions:
        return Embedded.failed(problems, encoder.dim)
    return Embedded(
        [work[p].item for p in positions],
        digests,
        encoder.embed_pixels(np.stack(pixels)),
        np.stack(colours),
        problems,
    )


def _decoded(tasks: list[Task], worker: DecodeWorker, workers: int) -> Iterator[Decoded]:
    """Decode tasks inline (workers=0), in worker processes, or in threads when processes cannot be spawned."""
    if workers == 0 or len(tasks) <= CHUNK:  # a few images: starting workers would take longer
        yield from map(worker.decode, tasks)
        return
    yield from _in_parallel(tasks, worker, workers, processes=spawn_is_safe())


def _in_parallel(tasks: list[Task], worker: DecodeWorker, workers: int, *, processes: bool) -> Iterator[Decoded]:
    """Decode in `workers` processes or threads, each running `worker`, in whatever order they finish.

    At most MAX_IN_FLIGHT images are handed out ahead of the consumer: decoded pixels would otherwise
    pile up in memory whenever decoding outpaces the model. On Ctrl-C or an error the processes are
    stopped at once (threads finish their chunk), so the build stops at once.
    """
    running: list[multiprocessing.Process] | list[threading.Thread]
    done = threading.Event()
    outbox: queue.Queue = queue.Queue()  # results, in this process: read by the consumer
    if processes:  # spawn, not fork: this process holds model threads
        context = multiprocessing.get_context("spawn")
        inbox, pipe = context.Queue(), context.Queue()
        running = [
            context.Process(target=worker.serve_process, args=(inbox, pipe), daemon=True) for _ in range(workers)
        ]
        # Results (1 MB a chunk) are moved off the pipe while the model runs, as ProcessPoolExecutor does:
        # workers never wait on a full pipe, and the consumer finds them ready.
        threading.Thread(target=_drain, args=(pipe, outbox, done), daemon=True, name="fashionrec-results").start()
    else:
        inbox = queue.Queue()
        running = [
            threading.Thread(target=worker.serve, args=(inbox, outbox), daemon=True, name="fashionrec-decode")
            for _ in range(workers)
        ]
    for runner in running:
        runner.start()
    chunks = (tasks[start : start + CHUNK] for start in range(0, len(tasks), CHUNK))
    in_flight = 0
    finished = False
    try:
        for chunk in chunks:
            inbox.put(chunk)
            in_flight += 1
            if in_flight * CHUNK >= MAX_IN_FLIGHT:
                break
        while in_flight:
            results = _next_results(outbox, running)
            in_flight -= 1
            if (chunk := next(chunks, None)) is not None:
                inbox.put(chunk)
                in_flight += 1
            yield from results
        finished = True
    finally:
        done.set()
        _stop(running, inbox, finished)


def _drain(pipe: queue.Queue, outbox: queue.Queue, done: threading.Event) -> None:
    """Move results from the worker processes' pipe into `outbox` until `done`."""
    while not done.is_set():
        try:
            outbox.put(pipe.get(timeout=POLL_SECONDS))
        except queue.Empty:
            continue
        except (OSError, EOFError, ValueError):  # the pipe closed under us: the build is stopping
            return


def _next_results(outbox: queue.Queue, running: Sequence[multiprocessing.Process | threading.Thread]) -> list[Decoded]:
    """The next chunk of results; WorkerFailed if a worker failed or died (killed for memory, say)."""
    while True:
        try:
            results = outbox.get(timeout=POLL_SECONDS)
        except queue.Empty:
            dead = [r for r in running if not r.is_alive()]
            if dead:
                code = getattr(dead[0], "exitcode", None)
                raise WorkerFailed(f"a decoding worker stopped unexpectedly (exit code {code})") from None
            continue
        if isinstance(results, WorkerFailed):
            raise results
        return results


def _stop(running: Sequence[multiprocessing.Process | threading.Thread], inbox: queue.Queue, finished: bool) -> None:
    """Stop the workers: politely when all work is done; if not, processes at once and threads after their chunk."""
    if not finished and processes_in(running):
        for process in running:
            process.terminate()  # type: ignore[union-attr]
        inbox.cancel_join_thread()  # type: ignore[attr-defined]  # unread chunks must not hold up our exit
    else:
        while not finished:  # what no thread has taken yet is not needed any more
            try:
                inbox.get_nowait()
            except queue.Empty:
                break
        for _ in running:
            inbox.put(None)
    for runner in running:
        runner.join()


def processes_in(running: Sequence[multiprocessing.Process | threading.Thread]) -> bool:
    return any(isinstance(runner, multiprocessing.process.BaseProcess) for runner in running)


def spawn_is_safe() -> bool:
    """Whether spawned workers can start: they re-import the `__main__` script, which must not build again.

    True when there is no script (a REPL, a notebook, `python -c`) or when the build was called from
    inside the script's `if __name__ == "__main__":` block (as the CLI is); False otherwise.
    """
    main = sys.modules.get("__main__")
    path = getattr(main, "__file__", None)
    if main is None or path is None:
        return True
    frame = sys._getframe()
    while frame is not None and not (frame.f_code.co_name == "<module>" and frame.f_globals is vars(main)):
        frame = frame.f_back
    if frame is None:  # called from another thread while the script may still be running: assume not safe
        return False
    try:
        tree = ast.parse(Path(path).read_bytes())
    except (OSError, SyntaxError, ValueError):
        return False
    guard = ast.parse('__name__ == "__main__"', mode="eval").body
    return any(
        isinstance(node, ast.If)
        and ast.dump(node.test) == ast.dump(guard)
        and node.lineno <= frame.f_lineno <= (node.end_lineno or node.lineno)
        for node in tree.body
    )
