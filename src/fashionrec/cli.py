"""Command line: a thin wrapper over build_index and Recommender.

Errors a user can cause (bad image, unknown item, missing index, ...) print one line and exit
with code 2; no traceback.
"""

from __future__ import annotations

import csv
import io
import json
import os
import sqlite3
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, get_args

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table
from tqdm import tqdm

from fashionrec.build import BuildInterrupted, BuildReport, build_index
from fashionrec.catalog import CatalogError, load_catalog
from fashionrec.encoders import BACKBONES, DEFAULT_ENCODER, DEFAULT_FIT, WEIGHTS_ENV, EncoderError, load_encoder
from fashionrec.explore import write_map
from fashionrec.filters import parse_filters
from fashionrec.garment import DEFAULT as DEFAULT_ISOLATION
from fashionrec.garment import Method, Region
from fashionrec.images import MAX_BYTES, Fit, ImageError, parse_box
from fashionrec.index import IndexStore, IndexStoreError, write_bytes_atomic
from fashionrec.quality.config import VALIDATE_EVERY, BridgeConfig, Precision, TrainConfig
from fashionrec.remote import FetchSettings, fetch_images
from fashionrec.search import TEXT_MODES, Match, Recommender, UnknownItemError
from fashionrec.terms import COLOUR_STRATEGIES, Term

app = typer.Typer(
    help="fashionrec: find the most similar products of a catalog for any garment photo.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
console = Console()
errors = Console(stderr=True, soft_wrap=True)

USER_ERRORS = (ImageError, CatalogError, IndexStoreError, EncoderError, UnknownItemError, ValueError, FileNotFoundError)
SHOWN_COLUMNS = ("productDisplayName", "articleType", "baseColour", "gender")
PHOTO_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".gif", ".bmp", ".tif", ".tiff")  # what --folder searches

IndexDir = Annotated[Path, typer.Argument(help="Index directory (made by `fashionrec index`).")]
TopK = Annotated[int, typer.Option("-k", "--k", min=1, max=1000, help="How many products to return.")]
AsJson = Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")]
SearchKind = Annotated[
    str, typer.Option("--search", help="Search structure: auto (exact for small catalogs, ivf above), exact, ivf.")
]
ColourWeight = Annotated[
    float, typer.Option(min=0.0, max=1.0, help="How much colour counts: 0 shape only, 1 colour only.")
]
Collapse = Annotated[
    bool,
    typer.Option(
        "--collapse/--no-collapse", help="Show a product listed under several ids once, the others as its variants."
    ),
]
Diversity = Annotated[
    float, typer.Option(min=0.0, max=1.0, help="Spread the results (maximal marginal relevance): 0 off, 1 most.")
]
PrecisionOption = Annotated[str, typer.Option(help="Vectors in memory: float32, or float16 (half the memory).")]
FilterOption = Annotated[
    list[str] | None,
    typer.Option("--filter", "-f", help="Metadata filter COLUMN=VALUE; repeat for more (same column: any of)."),
]


@contextmanager
def user_errors() -> Iterator[None]:
    """Turn the errors a user can cause into one line on stderr and exit code 2."""
    try:
        yield
    except USER_ERRORS as error:
        message = str(error).strip("'\"") if isinstance(error, KeyError) else str(error)
        errors.print(f"[red]error:[/red] {escape(message)}", highlight=False)
        raise typer.Exit(2) from None
    except (OSError, sqlite3.Error) as error:  # a file the user pointed at, unreadable or unwritable
        where = f"{error.filename}: " if isinstance(error, OSError) and error.filename else ""
        reason = error.strerror if isinstance(error, OSError) and error.strerror else str(error)
        errors.print(f"[red]error:[/red] {escape(where + reason)}", highlight=False)
        raise typer.Exit(2) from None


def printable(text: str) -> str:
    """Control characters shown as escapes (\\x1b): a catalog's ids must not drive the user's terminal."""
    return "".join(char if char.isprintable() else repr(char)[1:-1] for char in text)


@app.command()
def index(
    catalog: Annotated[Path, typer.Argument(help="Catalog: a folder or .zip (Kaggle layout), or a CSV/Parquet.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Index directory to create or update.")],
    encoder: Annotated[
        str,
        typer.Option(
            help=f"Encoder: {', '.join(BACKBONES)}, or a model directory made by `fashionrec train`; add :int8 for "
            "its int8 version (faster; calibrated on this catalog the first time). Weights files: "
            + ", ".join(f"${env} for {name}" for name, env in WEIGHTS_ENV.items())
            + " (see README)."
        ),
    ] = DEFAULT_ENCODER,
    size: Annotated[
        int | None, typer.Option(help="Model input size in pixels (default: the encoder's own, e.g. 160 for lite0).")
    ] = None,
    fit: Annotated[str, typer.Option(help=f"Fit images to the square input: {', '.join(get_args(Fit))}.")] = (
        DEFAULT_FIT
    ),
    id_column: Annotated[str, typer.Option(help="Id column of a CSV/Parquet catalog.")] = "id",
    image_column: Annotated[
        str | None,
        typer.Option(
            help="Image column of a CSV/Parquet catalog: paths relative to it, or http(s) URLs. Several photos per "
            "product: columns separated by commas (main photo first), or a pattern such as '*image*'; rows "
            "repeating an id add theirs."
        ),
    ] = None,
    fetch_concurrency: Annotated[
        int, typer.Option(min=1, help="Image URLs fetched at once.")
    ] = FetchSettings.concurrency,
    fetch_timeout: Annotated[
        float, typer.Option(min=0.1, help="Seconds one try at an image URL may take.")
    ] = FetchSettings.timeout,
    fetch_retries: Annotated[
        int, typer.Option(min=0, help="Tries after the first for a URL that timed out or answered 5xx or 429.")
    ] = FetchSettings.retries,
    refetch: Annotated[
        bool, typer.Option("--refetch", help="Fetch every image URL again, even those cached in the index.")
    ] = False,
    workers: Annotated[
        int | None, typer.Option(help="Image decoding processes (0: none); with --runner ray, actors.")
    ] = None,
    backend: Annotated[str, typer.Option(help="onnx (fast) or torch (reference).")] = "onnx",
    runner: Annotated[str, typer.Option(help="local (this machine) or ray (Ray actors; pip install '.[ray]').")] = (
        "local"
    ),
    ray_address: Annotated[
        str | None, typer.Option(help="Ray cluster to join with --runner ray: auto, or ray://HOST:10001.")
    ] = None,
    store: Annotated[
        str,
        typer.Option(
            help="Where a new index keeps its vectors: files (FAISS in the index directory), milvus://PATH.db "
            "(embedded Milvus Lite; a relative path is inside the index directory) or milvus://HOST:PORT "
            "(a Milvus server; token from $FASHIONREC_MILVUS_TOKEN). See docs/scaling.md."
        ),
    ] = "files",
) -> None:
    """Build or update the index of a catalog; rerun to resume or to pick up catalog changes."""
    with user_errors():
        if fit not in get_args(Fit):
            raise ValueError(f"--fit must be one of {', '.join(get_args(Fit))}, not {fit!r}")
        settings = FetchSettings(fetch_concurrency, fetch_timeout, fetch_retries, refetch=refetch)
        loaded = load_catalog(catalog, id_column=id_column, image_column=image_column)
        console.print(f"Catalog {catalog}: {len(loaded.items)} items, {len(loaded.problems)} problems")
        try:
            loaded = fetch_images(loaded, out, settings)  # first: an int8 encoder calibrates on these photos
            model = load_encoder(encoder, size=size, fit=fit, backend=backend, calibration=loaded)  # type: ignore[arg-type]
            report = build_index(
                loaded, out, model, workers=workers, runner=runner, ray_address=ray_address, store=store
            )
        except KeyboardInterrupt:
            errors.print("[yellow]interrupted: the images fetched so far are kept; run the same command to resume[/]")
            raise typer.Exit(130) from None
        except BuildInterrupted as stop:
            errors.print(f"[yellow]{stop}[/yellow]")
            raise typer.Exit(130) from None
        write_map(out, log=console.print)  # the app's explore page opens at once
    print_report(report)


def print_report(report: BuildReport) -> None:
    table = Table(title=f"Index {report.index}", show_header=False)
    for label, value in [
        ("items in index", report.total),
        ("embedded now", f"{report.embedded} ({report.rate:.0f} images/s)"),
        ("unchanged (kept)", report.unchanged),
        ("removed (left the catalog)", report.removed),
        ("skipped (problems)", report.skipped),
        ("repaired rows", len(report.problems) - report.skipped),
        ("time", f"{report.seconds:.1f} s"),
    ]:
        table.add_row(label, str(value))
    console.print(table)
    for problem in report.problems[:20]:
        console.print(f"  [yellow]problem[/yellow] {escape(printable(str(problem)))}", highlight=False)
    if len(report.problems) > 20:
        console.print(f"  ... and {len(report.problems) - 20} more: see `fashionrec info {report.index} --problems`")


def print_matches(matches: list[Match], as_json: bool, title: str) -> None:
    if as_json:
        print(json.dumps([m.to_dict() for m in matches], indent=2, ensure_ascii=False))
        return
    columns = [c for c in SHOWN_COLUMNS if matches and c in matches[0].metadata]
    if matches and not columns:
        columns = list(matches[0].metadata)[:4]
    table = Table(title=title)
    for name in ("rank", "id", "score", *columns, "variants"):
        table.add_column(name, justify="right" if name in ("rank", "score") else "left")
    for m in matches:
        variants = ", ".join(m.variants)
        table.add_row(str(m.rank), m.id, f"{m.score:.3f}", *(m.metadata.get(c, "") for c in columns), variants)
    console.print(table if matches else "No matching products.")


def print_regions(found: list[tuple[Region, list[Match]]], as_json: bool, image: Path) -> None:
    """Each region's box and kind, then its matches (as JSON: a list of regions, each with its results)."""
    if as_json:
        print(
            json.dumps(
                [region.to_dict() | {"results": [m.to_dict() for m in matches]} for region, matches in found],
                indent=2,
                ensure_ascii=False,
            )
        )
        return
    for region, matches in found:
        box = ",".join(f"{v:.2f}" for v in region.box)
        print_matches(matches, False, f"{region.kind} of {image} (--crop {box}, score {region.score:.2f})")


def _query(
    index_dir: Path, run: Callable[[Recommender], list[Match]], as_json: bool, title: str, kind: str, precision: str
) -> None:
    with user_errors():
        matches = run(Recommender.open(index_dir, kind=kind, precision=precision))  # type: ignore[arg-type]
    print_matches(matches, as_json, title)


TermOption = Annotated[
    list[str] | None,
    typer.Option(
        "--term",
        help="A weighted query term KIND:VALUE[:WEIGHT], KIND one of item, image, text, colour; repeat it. "
        "E.g. --term item:15970 --term colour:red:0.5 --term item:123:-0.5 (negative: steer away).",
    ),
]
LikeOption = Annotated[
    list[str] | None,
    typer.Option("--like", help="An item id or image file to look like (--term item:ID:1); repeat it."),
]
UnlikeOption = Annotated[
    list[str] | None,
    typer.Option("--unlike", help="An item id or image file to steer away from (weight -1); repeat it."),
]
ColourOption = Annotated[
    list[str] | None,
    typer.Option("--colour", help="A colour the results should have, NAME[:WEIGHT] (e.g. red, red:0.5, black:-1)."),
]
ColourStrategyOption = Annotated[
    str,
    typer.Option(
        help="What a colour term does beyond moving the query: direction (nothing), rerank (by colour histogram), "
        "label (default: keep only items labelled with the asked colours)."
    ),
]


def example_term(example: str, weight: float) -> Term:
    """A --like/--unlike value: an image if it names an existing file, else an item id."""
    return Term("image", Path(example), weight) if Path(example).is_file() else Term("item", example, weight)


def parse_terms(
    image: Path | None,
    terms: list[str] | None,
    likes: list[str] | None,
    unlikes: list[str] | None,
    colours: list[str] | None,
) -> list[Term]:
    """Every query term of the command line, the IMAGE argument first."""
    found = [Term("image", image)] if image is not None else []
    found += [Term.parse(spec) for spec in terms or []]
    found += [example_term(example, 1.0) for example in likes or []]
    found += [example_term(example, -1.0) for example in unlikes or []]
    return found + [Term.parse(f"colour:{spec}") for spec in colours or []]


@app.command()
def search(
    index_dir: IndexDir,
    image: Annotated[
        Path | None,
        typer.Argument(help="Any image file: a photo, a screenshot, a product shot (or --text).", show_default=False),
    ] = None,
    text: Annotated[
        str | None, typer.Option("--text", "-t", help='Search by words instead of an image: "red tshirt for men".')
    ] = None,
    text_mode: Annotated[
        str, typer.Option(help="With --text: fused (words + text bridge), words (names/metadata only), bridge.")
    ] = "fused",
    folder: Annotated[
        Path | None,
        typer.Option(help="Search every photo in this folder (and its subfolders) instead of one IMAGE."),
    ] = None,
    out: Annotated[
        Path | None,
        typer.Option("--out", "-o", help="With --folder: write the results to this .csv (a row per match) or .json."),
    ] = None,
    k: TopK = 5,
    filter: FilterOption = None,
    as_json: AsJson = False,
    search: SearchKind = "auto",
    precision: PrecisionOption = "float16",
    colour_weight: ColourWeight = 0.0,
    crop: Annotated[
        str | None,
        typer.Option(help="Search only this part of the photo: left,top,right,bottom as fractions, e.g. 0,0.4,1,1."),
    ] = None,
    isolate: Annotated[
        str,
        typer.Option(
            help="Cut the garment out of the photo first: auto (the default: U2-Net-p; for a person, the upper body "
            "or the whole person, whichever matches more closely; nothing for catalog-like shots, catalog images and "
            "--crop), u2netp, border or none."
        ),
    ] = DEFAULT_ISOLATION,
    collapse: Collapse = True,
    diversity: Diversity = 0.0,
    term: TermOption = None,
    like: LikeOption = None,
    unlike: UnlikeOption = None,
    colour: ColourOption = None,
    colour_strategy: ColourStrategyOption = "label",
    regions: Annotated[
        bool,
        typer.Option(
            "--regions", help="One search per garment found in the photo (a worn top, trousers, shoes, or the object)."
        ),
    ] = False,
) -> None:
    """Similar products for an image file (or the --crop part of it), for every photo of a --folder, for the
    words of --text, or for weighted terms ("like this, but ...": --term, --like, --unlike, --colour; IMAGE, if
    given, is one more); --regions searches each garment found in the photo."""
    if isolate not in get_args(Method):
        raise typer.BadParameter(f"{isolate!r} is not one of {', '.join(get_args(Method))}", param_hint="--isolate")
    if text is not None:
        if image is not None or folder is not None or term or like or unlike or colour or regions:
            raise typer.BadParameter("--text searches by words alone: no IMAGE, --folder or terms", param_hint="--text")
        if text_mode not in TEXT_MODES:
            raise typer.BadParameter(f"{text_mode!r} is not one of {', '.join(TEXT_MODES)}", param_hint="--text-mode")
        _query(
            index_dir,
            lambda r: r.similar_to_text(text, k, parse_filters(filter or []), text_mode, collapse, diversity),  # type: ignore[arg-type]
            as_json,
            f"Products for {text!r}",
            search,
            precision,
        )
        return
    if term or like or unlike or colour:
        if folder is not None or crop or isolate != DEFAULT_ISOLATION or colour_weight or regions:
            raise typer.BadParameter(
                "--folder, --crop, --regions, --isolate and --colour-weight are for image searches, not terms"
            )
        if colour_strategy not in COLOUR_STRATEGIES:
            raise typer.BadParameter(f"{colour_strategy!r} is not one of {', '.join(COLOUR_STRATEGIES)}")
        with user_errors():
            terms = parse_terms(image, term, like, unlike, colour)
        _query(
            index_dir,
            lambda r: r.similar_to_terms(terms, k, parse_filters(filter or []), colour_strategy, collapse, diversity),  # type: ignore[arg-type]
            as_json,
            "Products for " + ", ".join(f"{t.kind} {t.value} ({t.weight:g})" for t in terms if t.kind != "image"),
            search,
            precision,
        )
        return
    if (image is None) == (folder is None):
        raise typer.BadParameter("give one IMAGE, or --folder PHOTOS, or --text WORDS, or terms", param_hint="IMAGE")
    if regions:
        if folder is not None or crop:
            raise typer.BadParameter("--regions searches each garment of one IMAGE: not with --crop or --folder")
        with user_errors():
            recommender = Recommender.open(index_dir, kind=search, precision=precision)  # type: ignore[arg-type]
            filters = recommender.resolve_filters(parse_filters(filter or []))
            found = recommender.similar_per_region(image, k, filters, colour_weight, isolate, collapse, diversity)  # type: ignore[arg-type]
        print_regions(found, as_json, image)  # type: ignore[arg-type]
        return
    if out is not None and (folder is None or out.suffix.lower() not in (".csv", ".json")):
        raise typer.BadParameter("a .csv or .json file, with --folder", param_hint="--out")

    def search_photo(recommender: Recommender, photo: Path) -> list[Match]:
        box = crop and parse_box(crop)
        filters = recommender.resolve_filters(parse_filters(filter or []))  # wrong: fails before any embedding
        return recommender.similar_to_image(photo, k, filters, colour_weight, box, isolate, collapse, diversity)  # type: ignore[arg-type]

    if folder is not None:
        with user_errors():
            recommender = Recommender.open(index_dir, kind=search, precision=precision)  # type: ignore[arg-type]
            results = search_folder(recommender, folder, search_photo)
            if out is not None:
                write_bytes_atomic(out, batch_file(results, out.suffix.lower()))
        print_batch(results, as_json, out)
        return
    assert image is not None
    _query(index_dir, lambda r: search_photo(r, image), as_json, f"Products similar to {image}", search, precision)


@dataclass(frozen=True)
class PhotoResult:
    """One photo of a batch: its matches, or why it could not be searched."""

    photo: str  # relative to the folder
    matches: list[Match]
    error: str | None = None

    def to_dict(self) -> dict[str, object]:
        return {"photo": self.photo, "error": self.error, "matches": [m.to_dict() for m in self.matches]}


def search_folder(
    recommender: Recommender, folder: Path, search_photo: Callable[[Recommender, Path], list[Match]]
) -> list[PhotoResult]:
    """Every photo of the folder searched in turn, with a progress bar (rate, ETA); a photo that cannot be read
    is a result with its error, never the end of the batch."""
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder}: no such folder")
    found = folder.rglob("*")
    photos = sorted(p for p in found if p.suffix.lower() in PHOTO_SUFFIXES and p.is_file() and p.name[0] != ".")
    if not photos:
        raise ValueError(f"{folder}: no photos ({', '.join(PHOTO_SUFFIXES)}) in it")
    results = []
    for photo in tqdm(photos, unit="photo", desc="Searching", dynamic_ncols=True):
        name = photo.relative_to(folder).as_posix()
        try:
            results.append(PhotoResult(name, search_photo(recommender, photo)))
        except (ImageError, OSError) as error:
            results.append(PhotoResult(name, [], str(error)))
    return results


def batch_file(results: list[PhotoResult], suffix: str) -> bytes:
    """The results as JSON (a list of photos with their matches), or CSV (a row per match; a failed photo is one
    row with its error)."""
    if suffix == ".json":
        return json.dumps([r.to_dict() for r in results], indent=2, ensure_ascii=False).encode()
    columns = list(dict.fromkeys(c for r in results for m in r.matches for c in m.metadata))
    text = io.StringIO()
    writer = csv.writer(text)
    writer.writerow(["photo", "rank", "id", "score", "variants", *columns, "error"])
    for result in results:
        for m in result.matches:
            row = [m.rank, m.id, m.score, " ".join(m.variants), *(m.metadata.get(c, "") for c in columns)]
            writer.writerow([result.photo, *row, ""])
        if result.error is not None or not result.matches:
            writer.writerow([result.photo, "", "", "", "", *([""] * len(columns)), result.error or "no match"])
    return text.getvalue().encode()


def print_batch(results: list[PhotoResult], as_json: bool, out: Path | None) -> None:
    failed = sum(r.error is not None for r in results)
    if as_json and out is None:
        print(json.dumps([r.to_dict() for r in results], indent=2, ensure_ascii=False))
    elif out is None:
        table = Table(title="Best match of each photo")
        for name in ("photo", "id", "score", "name", "error"):
            table.add_column(name, justify="right" if name == "score" else "left")
        for r in results:
            best = r.matches[0] if r.matches else None
            cells = (best.id, f"{best.score:.3f}", best.metadata.get(SHOWN_COLUMNS[0], "")) if best else ("", "", "")
            table.add_row(printable(r.photo), *cells, r.error or "")
        console.print(table)
    summary = f"{len(results)} photos searched, {failed} could not be read" + (f"; results in {out}" if out else "")
    errors.print(summary, highlight=False)


@app.command()
def similar(
    index_dir: IndexDir,
    item_id: Annotated[str, typer.Argument(help="Id of a product in the index.")],
    k: TopK = 5,
    filter: FilterOption = None,
    as_json: AsJson = False,
    search: SearchKind = "auto",
    precision: PrecisionOption = "float16",
    colour_weight: ColourWeight = 0.0,
    collapse: Collapse = True,
    diversity: Diversity = 0.0,
) -> None:
    """Similar products for a catalog item (the item itself is never returned)."""
    _query(
        index_dir,
        lambda r: r.similar_to_item(item_id, k, parse_filters(filter or []), colour_weight, collapse, diversity),
        as_json,
        f"Products similar to item {item_id}",
        search,
        precision,
    )


@app.command()
def info(
    index_dir: IndexDir,
    problems: Annotated[bool, typer.Option("--problems", help="List every problem found.")] = False,
    as_json: AsJson = False,
) -> None:
    """What an index holds: encoder, dimension, item count, problems found."""
    with user_errors():
        recommender = Recommender.open(index_dir)
        details = recommender.info()
        found = recommender.problems()
    if as_json:
        details["problem_list"] = [{"item": p.item, "message": p.message, "action": p.action} for p in found]
        print(json.dumps(details, indent=2, ensure_ascii=False))
        return
    table = Table(title=f"Index {index_dir}", show_header=False)
    for key, value in details.items():
        table.add_row(key, ", ".join(value) if isinstance(value, list) else str(value))
    console.print(table)
    for problem in found if problems else found[:10]:
        console.print(f"  [yellow]problem[/yellow] {escape(printable(str(problem)))}", highlight=False)
    if not problems and len(found) > 10:
        console.print(f"  ... and {len(found) - 10} more (--problems lists them all)")


@app.command("eval")
def evaluate_index(
    index_dir: IndexDir,
    out: Annotated[Path, typer.Option("--out", "-o", help="Folder for report.json and the pictures.")],
    label: Annotated[
        list[str] | None, typer.Option("--label", "-l", help="Metadata column that defines a correct result; repeat.")
    ] = None,
    k: Annotated[
        list[int] | None, typer.Option("--k", help="Cut-offs for P@k and mAP@k; repeat (--k 1 --k 5).")
    ] = None,
    queries: Annotated[
        Path | None, typer.Option(help="File of query item ids, one per line (default: every item).")
    ] = None,
    samples: Annotated[int, typer.Option(help="Sample queries shown in the result grid image.")] = 8,
    colour_weight: ColourWeight = 0.0,
) -> None:
    """Measure retrieval quality: leave-one-out P@k, mAP@k and macro P@k per label, with pictures."""
    from fashionrec.quality.evaluate import evaluate

    with user_errors():
        ids = queries.read_text().split() if queries is not None else None
        report = evaluate(
            Recommender.open(index_dir),
            label or ["articleType", "baseColour"],
            k or [1, 5, 10],
            ids,
            out,
            samples=samples,
            colour_weight=colour_weight,
        )
    ks = report["ks"]
    table = Table(title=f"Leave-one-out quality of {index_dir} ({report['items']} items)")
    table.add_column("label")
    for name in (*(f"P@{n}" for n in ks), *(f"mAP@{n}" for n in ks), *(f"macro P@{n}" for n in ks)):
        table.add_column(name, justify="right")
    for name, figures in report["labels"].items():
        values = [figures[f"P@{n}"] for n in ks] + [figures[f"mAP@{n}"] for n in ks]
        values += [figures[f"macro_P@{n}"] for n in ks]
        table.add_row(name, *("-" if v is None else f"{v:.3f}" for v in values))
    console.print(table)
    console.print(f"Report and pictures in {out}/")


@app.command(name="train")
def train_encoder(
    source: Annotated[
        Path, typer.Argument(help="An index directory (its stored vectors are used) or a catalog (indexed first).")
    ],
    out: Annotated[Path, typer.Option("--out", "-o", help="Model directory to create, or to resume training in.")],
    label: Annotated[
        list[str] | None, typer.Option("--label", "-l", help="Metadata column to learn; repeat (default: both).")
    ] = None,
    epochs: Annotated[int, typer.Option(min=1, help="Passes over the training items.")] = TrainConfig.epochs,
    holdout: Annotated[
        float, typer.Option(help="Share of the items held out (by id): never trained on.")
    ] = TrainConfig.holdout,
    seed: Annotated[
        int, typer.Option(help="Seed of the split, the initial weights and the shuffling.")
    ] = TrainConfig.seed,
    batch_size: Annotated[int, typer.Option(min=2, help="Items per training step.")] = TrainConfig.batch_size,
    hidden: Annotated[int, typer.Option(min=1, help="Width of the adapter's hidden layer.")] = TrainConfig.hidden,
    dim: Annotated[int, typer.Option(min=2, help="Dimension of each member's shape vector.")] = TrainConfig.dim,
    members: Annotated[
        int, typer.Option(min=1, help="Adapters trained side by side (an ensemble); each adds its vector.")
    ] = TrainConfig.members,
    label_weight: Annotated[
        float,
        typer.Option(min=0.0, help="Weight, in the similarity, of two items' predicted classes agreeing (0: none)."),
    ] = TrainConfig.label_weight,
    base_weight: Annotated[
        float,
        typer.Option(
            min=0.0, max=1.0, help="Weight of the base encoder's own similarity: finds the exact product of a photo."
        ),
    ] = TrainConfig.base_weight,
    base_components: Annotated[
        int, typer.Option(min=0, help="Size of the base vector kept in the trained one (PCA; 0: none).")
    ] = TrainConfig.base_components,
    view_share: Annotated[
        float,
        typer.Option(
            min=0.0, max=1.0, help="Share of each batch seen as shopper-like photos (views.py; 0: none; try 0.5)."
        ),
    ] = TrainConfig.view_share,
    instance_weight: Annotated[
        float, typer.Option(min=0.0, help="With views: weight of each view finding its own product's catalog shot.")
    ] = TrainConfig.instance_weight,
    name: Annotated[str | None, typer.Option(help="Model name in its encoder id (default: the --out folder).")] = None,
    threads: Annotated[int, typer.Option(min=0, help="torch threads (0: one per idle core).")] = 0,
    validate_every: Annotated[
        int, typer.Option(min=1, help="Epochs between held-out validations (the last is always validated).")
    ] = VALIDATE_EVERY,
    precision: Annotated[
        Precision, typer.Option(help="The steps' matrix products; auto: bf16 where the CPU computes it natively.")
    ] = "auto",
) -> None:
    """Train an encoder on the catalog's labels (an adapter on the stored vectors); rerun to resume."""
    from fashionrec.quality.train import TrainInterrupted, train  # torch is only imported for training

    labels = tuple(label or TrainConfig.labels)
    config = TrainConfig(
        labels,
        epochs,
        seed,
        holdout,
        hidden,
        dim,
        batch_size,
        members=members,
        label_weight=label_weight,
        base_weight=base_weight,
        base_components=base_components,
        view_share=view_share,
        instance_weight=instance_weight,
    )
    with user_errors():
        try:
            manifest = train(
                source,
                out,
                config,
                name=name,
                log=console.print,
                threads=threads,
                validate_every=validate_every,
                precision=precision,
            )
        except TrainInterrupted as stop:
            errors.print(f"[yellow]{stop}[/yellow]")
            raise typer.Exit(130) from None
    table = Table(title=f"Held-out items ({manifest['split']['heldout_items']}) searching the whole catalog")
    for column in ("label", "zero-shot P@5", "trained P@5", "zero-shot macro P@5", "trained macro P@5"):
        table.add_column(column, justify="left" if column == "label" else "right")
    for key, before in manifest["zero_shot"].items():
        after = manifest["trained"][key]
        values = (before["P@5"], after["P@5"], before["macro_P@5"], after["macro_P@5"])
        table.add_row(key, *("-" if v is None else f"{v:.3f}" for v in values))
    console.print(table)
    console.print(
        f"Encoder {manifest['encoder']['id']} in {out}/ ({manifest['training_seconds']:.0f} s of training); "
        f"use it with: fashionrec index CATALOG --encoder {out} --out INDEX_DIR",
        highlight=False,
    )


@app.command(name="train-text")
def train_text(
    index_dir: IndexDir,
    out: Annotated[
        Path | None,
        typer.Option(
            "--out", "-o", help="Where to save the text bridge (default: INDEX/text-bridge, where search finds it)."
        ),
    ] = None,
    epochs: Annotated[int, typer.Option(min=1, help="Passes over the training items.")] = BridgeConfig.epochs,
    holdout: Annotated[
        float, typer.Option(help="Share of the items held out (by id, as `train` does): never trained on.")
    ] = TrainConfig.holdout,
    seed: Annotated[int, typer.Option(help="Seed of the split (as `train`), the weights and the shuffling.")] = (
        TrainConfig.seed
    ),
    validation: Annotated[
        float, typer.Option(min=0.0, max=0.5, help="Share of the other items also left out, to tune settings on.")
    ] = 0.0,
) -> None:
    """Train the text bridge of an index: search by words finds products by their look, not only their names."""
    from fashionrec.quality.train_text import train_bridge  # torch is only imported for training

    config = BridgeConfig(epochs=epochs, seed=seed, holdout=holdout, validation=validation)
    with user_errors():
        bridge = train_bridge(index_dir, out, config, log=console.print)
    figures = bridge.manifest["figures"]
    for split, found in figures.items():  # type: ignore[union-attr]
        console.print(
            f"{split}: {found['queries']} names find their own product's image among {found['gallery']}: "
            f"R@1 {found['R@1']:.3f}, R@10 {found['R@10']:.3f}",
            highlight=False,
        )


@app.command(name="app")
def web_app(
    index_dir: IndexDir,
    port: Annotated[int, typer.Option(help="Port to serve the app on.")] = 8501,
    address: Annotated[str, typer.Option(help="Address to listen on (0.0.0.0: every network interface).")] = (
        "127.0.0.1"
    ),
) -> None:
    """Open the web app over an index: look-alikes of an upload, a camera shot or a catalog product."""
    with user_errors():
        IndexStore.open(index_dir).close()  # a wrong path fails here in one line, not in the browser
    from fashionrec.app import SCRIPT

    command = [
        sys.executable, "-m", "streamlit", "run", str(SCRIPT),
        "--server.headless=true",
        f"--server.port={port}",
        f"--server.address={address}",
        f"--server.maxUploadSize={MAX_BYTES // 2**20}",
        "--server.fileWatcherType=none",
        "--browser.gatherUsageStats=false",
        "--client.showErrorDetails=none",  # a bug shows a short notice, never a traceback with server paths
        "--client.toolbarMode=minimal",
        "--theme.primaryColor=#d6336c",
        "--",
        str(index_dir.resolve()),
    ]  # fmt: skip
    console.print(f"fashionrec app on http://{address}:{port} (Ctrl-C stops it)")
    sys.stdout.flush()
    os.execv(sys.executable, command)  # Streamlit takes over this process: signals reach it directly


@app.command()
def serve(
    index_dir: IndexDir,
    host: Annotated[str, typer.Option(help="Address to listen on (0.0.0.0: every interface).")] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=0, max=65535, help="Port to listen on.")] = 8000,
    workers: Annotated[int, typer.Option(min=1, help="Server processes, each with its own copy of the index.")] = 1,
    access_log: Annotated[bool, typer.Option(help="Log every request.")] = True,
) -> None:
    """Run the REST API over an index (docs at http://HOST:PORT/docs); writes need FASHIONREC_API_KEY."""
    import uvicorn  # only this command needs the server

    from fashionrec.api import CORS_ENV, INDEX_ENV, WRITE_KEY_ENV, Keys, cors_origins_from_env

    with user_errors():  # one clear line now rather than a traceback in every worker
        IndexStore.open(index_dir).close()
        keys = Keys.from_env()
    console.print(
        "Catalog updates (POST/PATCH/DELETE /v1/items): "
        + ("enabled, with the API key" if keys.write else f"disabled; set {WRITE_KEY_ENV} to enable them"),
        highlight=False,
    )
    origins = cors_origins_from_env()
    console.print(
        "Calls from web pages of other sites (CORS): "
        + (f"allowed for {', '.join(origins)}" if origins else f"off; set {CORS_ENV} to allow some"),
        highlight=False,
    )
    os.environ[INDEX_ENV] = str(index_dir.resolve())
    uvicorn.run(
        "fashionrec.api:app_from_env", factory=True, host=host, port=port, workers=workers, access_log=access_log
    )


if __name__ == "__main__":
    app()
