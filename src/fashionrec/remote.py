"""Images by URL: a catalog's http(s) image URLs, fetched into the index folder before a build reads them.

`fetch_images` downloads every URL of a catalog that is not cached yet, concurrently, into
`INDEX/images/<sha256 of the URL>`, and returns the catalog with a `CachedSource`: the runners, the
planner and the search then read URLs from that cache exactly as they read files, so resuming,
incremental rebuilds and the problems list work as for local images. Nothing fetches at search time.

- Each try has a time limit (from the request to the last byte); time-outs, connection errors, 5xx
  and 429 answers are tried again after a growing pause; 404 and other 4xx answers are not.
- A body over the size limit is refused: from Content-Length, and while streaming (it may lie or
  be absent). An answer that says it is text (an HTML error page) is refused.
- Redirects are followed by hand, at most MAX_REDIRECTS, and only to http(s) URLs.
- Each image is written whole (temp file + rename): a fetch killed with `kill -9` leaves no half
  image under a cached name, and the rerun fetches only what is missing (`refetch` fetches all again).
- A URL that cannot be fetched is a problem of its items (by id, with the reason), never of the catalog.

Security: a URL is data from outside. Only http(s) is fetched, also after a redirect (never file:,
which would read a local file), and cached files are named by the hash alone. Private and loopback
addresses are allowed (shops run internal image servers, and the tests a loopback one): a catalog
from someone you do not trust can make the builder request any address this machine reaches.
"""

from __future__ import annotations

import hashlib
import os
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path
from urllib.parse import urljoin, urlsplit

import httpx
from tqdm import tqdm

from fashionrec.catalog import URL_SCHEMES, Catalog, ImageSource, is_url
from fashionrec.images import MAX_BYTES, ImageError, read_regular_file
from fashionrec.index import check_directory, make_dir, write_bytes_atomic

URL_CACHE = "images"  # INDEX/images/<sha256 of the URL>
MAX_REDIRECTS = 5
MAX_RETRY_AFTER = 30.0  # seconds: a server's Retry-After is honoured up to this
NOT_IMAGES = ("text/", "application/json", "application/xml", "application/xhtml+xml")  # error pages
HEADERS = {"Accept": "image/*", "Accept-Encoding": "identity", "User-Agent": "fashionrec"}


@dataclass(frozen=True)
class FetchSettings:
    """How image URLs are fetched (`fashionrec index --fetch-*`)."""

    concurrency: int = 16  # requests at once
    timeout: float = 10.0  # seconds one try may take, from the request to the last byte
    retries: int = 2  # tries after the first, for time-outs, connection errors, 5xx and 429
    backoff: float = 0.5  # seconds before the first retry; doubled for each next one
    max_bytes: int = MAX_BYTES  # an image over this is refused (the limit local files have)
    refetch: bool = False  # fetch every URL again, even those cached


class FetchError(Exception):
    """One try at a URL failed: why, and whether another try may succeed."""

    def __init__(self, reason: str, retry: bool = False, wait: float = 0.0) -> None:
        super().__init__(reason)
        self.reason = reason
        self.retry = retry
        self.wait = wait  # seconds the server asked to wait (Retry-After)


def cache_name(url: str) -> str:
    """The cached file of a URL: its hash alone, so nothing in the URL chooses where a file is written."""
    return hashlib.sha256(url.encode()).hexdigest()


class CachedSource(ImageSource):
    """A catalog's images: URLs from the index's cache, everything else from the catalog folder or zip.

    `failures` holds the reasons of the URLs this run could not fetch: reading one raises ImageError
    with that reason, so the item's problem says why (and its stored vector, if any, is kept).
    """

    def __init__(self, root: Path, cache: Path, failures: dict[str, str] | None = None) -> None:
        super().__init__(root)
        self.cache = cache
        self.failures = failures or {}

    def __getstate__(self) -> dict[str, object]:  # type: ignore[override]  # worker processes get the whole state
        return {"root": self.root, "cache": self.cache, "failures": self.failures}

    def __setstate__(self, state: dict[str, object]) -> None:  # type: ignore[override]
        self.__init__(state["root"], state["cache"], state["failures"])  # type: ignore[misc, arg-type]

    def read(self, name: str, limit: int = MAX_BYTES) -> bytes:
        if not is_url(name):
            return super().read(name, limit)
        if name in self.failures:
            raise ImageError(name, self.failures[name])
        try:
            return read_regular_file(self.cache / cache_name(name), name, limit)
        except FileNotFoundError:
            raise ImageError(name, "not fetched (build the index to fetch it)") from None


def index_images(index: Path, catalog: dict[str, object]) -> CachedSource | None:
    """The images of a built index (its manifest's `catalog`), or None if it does not record where they are."""
    root = catalog.get("images_root")
    return CachedSource(Path(str(root)), index / URL_CACHE) if root else None


def fetch_images(
    catalog: Catalog, index: str | Path, settings: FetchSettings = FetchSettings(), progress: bool = True
) -> Catalog:
    """The catalog, its image URLs fetched into `index`/images: those not cached yet, or all with `refetch`.

    Call it before `load_encoder(..., calibration=catalog)` for an int8 encoder, which calibrates on
    the catalog's photos; `build_index` calls it otherwise (a catalog already fetched is returned as is).
    """
    if isinstance(catalog.source, CachedSource):
        return catalog
    index = Path(index).expanduser()
    cache = index / URL_CACHE
    urls = sorted({image for item in catalog.items for image in item.images if is_url(image)})
    failures: dict[str, str] = {}
    if urls:
        check_directory(index)
        make_dir(index)
        make_dir(cache)
        remove_leftovers(cache)
        todo = urls if settings.refetch else [url for url in urls if not (cache / cache_name(url)).is_file()]
        failures = Fetcher(settings).fetch_all(todo, cache, progress)
    return replace(catalog, source=CachedSource(catalog.source.root, cache, failures))


def remove_leftovers(cache: Path) -> None:
    """Temp files of fetches killed mid-write (`.NAME.PID.THREAD.tmp`, see write_bytes_atomic) whose process is gone."""
    for path in cache.glob(".*.tmp"):
        try:
            pid = int(path.name.split(".")[-3])
            os.kill(pid, 0)
        except ProcessLookupError:
            path.unlink(missing_ok=True)
        except (ValueError, IndexError, PermissionError):  # not ours, or a live process of another user
            continue


@dataclass
class Fetcher:
    """Fetches URLs into a cache folder with one pooled HTTP client and `settings.concurrency` threads."""

    settings: FetchSettings

    def fetch_all(self, urls: list[str], cache: Path, progress: bool = True) -> dict[str, str]:
        """Fetch `urls` into `cache`; the reason of each URL that failed. On Ctrl-C the tries in flight stop."""
        failures: dict[str, str] = {}
        if not urls:
            return failures
        stop = threading.Event()
        limits = httpx.Limits(
            max_connections=self.settings.concurrency, max_keepalive_connections=self.settings.concurrency
        )
        bar = tqdm(total=len(urls), unit="img", desc="Fetching", disable=not progress, dynamic_ncols=True)
        with (
            httpx.Client(timeout=self.settings.timeout, limits=limits, headers=HEADERS) as client,
            ThreadPoolExecutor(self.settings.concurrency, thread_name_prefix="fashionrec-fetch") as pool,
        ):
            try:
                fetch = partial(self.fetch, client, cache=cache, stop=stop)
                for url, reason in bounded(pool, fetch, urls, window=4 * self.settings.concurrency):
                    if reason is not None:
                        failures[url] = reason
                        bar.set_postfix(failed=len(failures))
                    bar.update()
            finally:
                stop.set()
                pool.shutdown(cancel_futures=True)
                bar.close()
        return failures

    def fetch(self, client: httpx.Client, url: str, *, cache: Path, stop: threading.Event) -> str | None:
        """Fetch one URL into the cache, trying again as the settings say; None, or why it failed."""
        tries = 1
        while True:
            try:
                data = self.get(client, url, stop)
            except FetchError as error:
                if not error.retry or tries > self.settings.retries:
                    return error.reason if tries == 1 else f"{error.reason} ({tries} tries)"
                pause = max(self.settings.backoff * 2 ** (tries - 1), min(error.wait, MAX_RETRY_AFTER))
                if stop.wait(pause):
                    return "stopped"
                tries += 1
                continue
            write_bytes_atomic(cache / cache_name(url), data)
            return None

    def get(self, client: httpx.Client, url: str, stop: threading.Event) -> bytes:
        """One try: the body of `url`, redirects followed; FetchError says why not."""
        deadline = time.monotonic() + self.settings.timeout
        for _ in range(MAX_REDIRECTS + 1):
            try:
                with client.stream("GET", url) as response:
                    if not response.is_redirect:
                        return self.body(response, deadline, stop)
                    url = redirect_target(url, response.headers["location"])
                if time.monotonic() > deadline:  # the time limit is the whole try's, redirects included
                    raise httpx.ReadTimeout("redirects")
            except httpx.TimeoutException:
                raise FetchError(f"timed out (limit {self.settings.timeout:g} s a try)", retry=True) from None
            except (httpx.InvalidURL, httpx.UnsupportedProtocol) as error:
                raise FetchError(f"unusable URL ({error})") from None
            except httpx.TransportError as error:
                raise FetchError(f"connection failed ({error or type(error).__name__})", retry=True) from None
        raise FetchError(f"more than {MAX_REDIRECTS} redirects")

    def body(self, response: httpx.Response, deadline: float, stop: threading.Event) -> bytes:
        """The body of a final answer, read within the size limit and the try's deadline."""
        status = response.status_code
        if status == 429 or status >= 500:
            raise FetchError(f"HTTP {status} {response.reason_phrase}".strip(), retry=True, wait=retry_after(response))
        if status != 200:
            raise FetchError(f"HTTP {status} {response.reason_phrase}".strip())
        kind = response.headers.get("content-type", "").split(";")[0].strip().lower()
        if kind.startswith(NOT_IMAGES):
            raise FetchError(f"the server sent {kind}, not an image")
        limit = self.settings.max_bytes
        declared = response.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > limit:
            raise FetchError(f"image too large ({int(declared):,} bytes said its Content-Length; limit {limit:,})")
        chunks, size = [], 0
        for chunk in response.iter_bytes():
            size += len(chunk)
            if size > limit:
                raise FetchError(f"image too large (over {limit:,} bytes)")
            if time.monotonic() > deadline:
                raise FetchError(f"timed out (limit {self.settings.timeout:g} s a try)", retry=True)
            if stop.is_set():
                raise FetchError("stopped")
            chunks.append(chunk)
        return b"".join(chunks)


def redirect_target(url: str, location: str) -> str:
    """Where a redirect leads, refused unless it is an http(s) URL."""
    target = urljoin(url, location)
    scheme = urlsplit(target).scheme.lower()
    if scheme not in URL_SCHEMES:
        raise FetchError(f"redirected to a {scheme or 'relative'}: URL; only http and https are fetched")
    return target


def retry_after(response: httpx.Response) -> float:
    """The seconds a 429 or 503 answer asks to wait (Retry-After in seconds), or 0."""
    value = response.headers.get("retry-after", "").strip()
    return float(value) if value.isdigit() else 0.0


def bounded(
    pool: ThreadPoolExecutor, fetch: Callable[[str], str | None], urls: Iterable[str], window: int
) -> Iterator[tuple[str, str | None]]:
    """(url, fetch(url)) in the order they finish, at most `window` submitted at once (not a million futures)."""
    pending: dict[Future, str] = {}
    for url in urls:
        pending[pool.submit(fetch, url)] = url
        if len(pending) >= window:
            yield from _finished(pending)
    while pending:
        yield from _finished(pending)


def _finished(pending: dict[Future, str]) -> Iterator[tuple[str, str | None]]:
    done, _ = wait(pending, return_when=FIRST_COMPLETED)
    for future in done:
        yield pending.pop(future), future.result()
