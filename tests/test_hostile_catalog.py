"""Hostile catalogs (issue #12): every bad row, id, path or file is a problem of its own item.

Each test writes its own catalog (a folder, a zip, CSVs) with real photos from the shared zip and
runs the real CLI or library on it: the bad items are reported by name, the good ones are indexed
and found, nothing outside the catalog and the index is read or touched, and no traceback shows.
"""

from __future__ import annotations

import io
import json
import os
import sqlite3
import stat
import struct
import subprocess
import sys
import time
import tracemalloc
import zipfile
from contextlib import closing
from pathlib import Path

import pytest
from PIL import Image, PngImagePlugin

from fashionrec.build import build_index
from fashionrec.catalog import id_problem, load_catalog
from fashionrec.encoders import Encoder
from fashionrec.images import MAX_BYTES, ImageError, open_image
from fashionrec.index import UPLOADED
from fashionrec.search import Recommender

from conftest import run_cli, sample_rows, small_tmpfs, write_catalog

HEADER = "id,gender,masterCategory,subCategory,articleType,baseColour,season,year,usage,productDisplayName"
REST = "Men,Apparel,Topwear,Shirts,Blue,Summer,2012,Casual"  # the middle columns of a made-up row
BAD_IDS = ["a/b", "back\\slash", "what?", "hash#", "per%cent", ".", "..", "bell\x07", "nul\x00id", "l" * 300]


def csv_line(item_id: str, name: str) -> bytes:
    return f"{item_id},{REST},{name}".encode()


def png_bytes(jpeg: bytes, **options: object) -> bytes:
    out = io.BytesIO()
    Image.open(io.BytesIO(jpeg)).save(out, "PNG", **options)
    return out.getvalue()


def file_state(path: Path) -> tuple[bytes, int]:
    return path.read_bytes(), path.stat().st_mtime_ns


def problems_of(index: Path) -> dict[str, tuple[str, str]]:
    """The problems `fashionrec info --problems --json` lists, by item."""
    result = run_cli("info", str(index), "--problems", "--json")
    assert result.returncode == 0, result.stderr
    return {p["item"]: (p["message"], p["action"]) for p in json.loads(result.stdout)["problem_list"]}


def assert_found_by_photo(index: Path, photos: dict[str, bytes]) -> None:
    """Every good item is in the index and its own photo finds it first."""
    recommender = Recommender.open(index)
    assert {item.id for item in recommender.items} == set(photos)
    for item_id, photo in photos.items():
        best = recommender.similar_to_image(photo, k=3)
        assert item_id in {m.id for m in best if m.score > best[0].score - 1e-4}, item_id


def hostile_catalog(tmp_path: Path, kind: str) -> tuple[Path, dict[str, bytes], set[str], Path]:
    """A Kaggle-layout folder or zip with every kind of bad row and file; returns the catalog path,
    the photos of the good items by id, the ids (or line names) of the bad ones, and a victim file."""
    header, rows = sample_rows(16, seed=21)
    folder = write_catalog(tmp_path / "catalog", header, rows[:14])
    images = folder / "images"
    outside = tmp_path / "outside"
    outside.mkdir()
    write_catalog(outside, header, rows[14:])
    victim = outside / "images" / f"{rows[14][0]}.jpg"  # a product photo outside the catalog
    ids = [r[0] for r in rows]
    photo = {i: (images / f"{i}.jpg").read_bytes() for i in ids[:14]}
    for new_id, old_id in (("sku-123", ids[10]), ("AB_12.3", ids[11]), ("big-field", ids[12])):
        (images / f"{old_id}.jpg").rename(images / f"{new_id}.jpg")
        photo[new_id] = photo.pop(old_id)
    # Large PNG ancillary chunks: a 2 MiB ICC profile, a 5 MiB (compressed) text chunk. Good items.
    text = PngImagePlugin.PngInfo()
    text.add_text("Comment", "x" * 5 * 2**20, zip=True)
    photo["png-icc"] = png_bytes(photo.pop(ids[8]), icc_profile=os.urandom(2 * 2**20))
    photo["png-text"] = png_bytes(photo.pop(ids[9]), pnginfo=text)
    for name in ("png-icc", "png-text"):
        (images / f"{name}.jpg").write_bytes(photo[name])

    good = [*ids[:8], "sku-123", "AB_12.3", "png-icc", "png-text"]
    lines = [HEADER.encode()]
    lines += [csv_line(i, "Plain Shirt") for i in good[:3]]
    lines += [csv_line(good[3], "Café Crème Shirt"), csv_line(good[4], "Stray") + b" \xff byte"]
    lines += [csv_line("big-field", "x" * 200_000)]  # over csv's 128 KiB field limit
    lines += [csv_line(i, "Bad id") for i in BAD_IDS]
    lines += [csv_line("q-open", '"Unbalanced quote')]  # swallows the rows up to the next quote
    lines += [csv_line(good[5], "After quote"), csv_line(good[6], '"Roadster, Blue"')]
    lines += [csv_line(i, "Tail") for i in good[7:]]
    bad = {"big-field", "q-open", *BAD_IDS}
    if kind == "folder":
        bad |= {"link-out", "loop", "fifo", "huge"}
        lines += [csv_line(i, "Bad file") for i in ("link-out", "loop", "fifo", "huge")]
        (images / "link-out.jpg").symlink_to(victim)
        (images / "loop.jpg").symlink_to(images / "loop.jpg")
        os.mkfifo(images / "fifo.jpg")
        with open(images / "huge.jpg", "wb") as file:
            file.truncate(MAX_BYTES + 1)  # sparse: over the limit without using the disk
        (folder / "styles.csv").write_bytes(b"\n".join(lines) + b"\n")
        return folder, {i: photo[i] for i in good}, bad, victim
    bad |= {"bomb", "zlink"}
    lines += [csv_line(i, "Bad member") for i in ("bomb", "zlink")]
    archive = tmp_path / "catalog.zip"
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as out:
        out.writestr("myntra/styles.csv", b"\r".join(lines) + b"\r")  # CR-only line ends
        for item_id in good + ["big-field"]:
            out.writestr(f"myntra/images/{item_id}.jpg", (images / f"{item_id}.jpg").read_bytes())
        out.writestr("myntra/images/bomb.jpg", bytes(100 * 2**20))  # 100 KiB zipped, 100 MiB inflated
        link = zipfile.ZipInfo("myntra/images/zlink.jpg")
        link.external_attr = (stat.S_IFLNK | 0o777) << 16
        out.writestr(link, str(victim))
    return archive, {i: photo[i] for i in good}, bad, victim


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["folder", "zip"])
def test_every_bad_row_and_file_is_a_problem_of_its_own_item(tmp_path: Path, kind: str) -> None:
    catalog, photos, bad, victim = hostile_catalog(tmp_path, kind)
    before = file_state(victim)
    index = tmp_path / "idx"
    built = run_cli("index", str(catalog), "--out", str(index), "--workers", "2")
    assert built.returncode == 0, built.stderr
    assert "Traceback" not in built.stderr + built.stdout

    problems = problems_of(index)
    skipped = {item for item, (_, action) in problems.items() if action == "skipped"}
    assert skipped == bad
    assert problems["big-field"][0] == "line 7: field larger than field limit (131072)"
    assert "unbalanced quote" in problems["q-open"][0] and problems["q-open"][0].startswith("line 18:")
    stray_byte = list(photos)[4]
    assert set(problems) - skipped == {stray_byte}
    assert problems[stray_byte] == ("line 6: invalid UTF-8 bytes replaced by \ufffd", "repaired")
    for item in ("a/b", "what?", "hash#", "per%cent", ".", ".."):
        assert "id " in problems[item][0], problems[item]
    assert "longer than 256" in problems["l" * 300][0]
    if kind == "folder":
        assert "outside the catalog" in problems["link-out"][0]
        assert "symbolic links" in problems["loop"][0] or "loop" in problems["loop"][0].lower()
        assert "not a regular file" in problems["fifo"][0]
        assert "file too large" in problems["huge"][0]
    else:
        assert "file too large" in problems["bomb"][0]
        assert "not a regular file" in problems["zlink"][0]
    listed = run_cli("info", str(index), "--problems")
    assert listed.returncode == 0 and all(f"{name}:" in listed.stdout for name in ("big-field", "q-open", "a/b"))
    assert "bell\\x07:" in listed.stdout and "nul\\x00id:" in listed.stdout  # shown escaped
    assert not {"\x00", "\x07"} & set(built.stdout + listed.stdout)  # catalog text never drives the terminal

    assert_found_by_photo(index, photos)
    recommender = Recommender.open(index)
    names = {item.id: item.metadata["productDisplayName"] for item in recommender.items}
    assert names["AB_12.3"] == "Tail" and "Café Crème Shirt" in names.values()
    assert "Roadster, Blue" in names.values() and "After quote" in names.values()  # read again, right
    assert any("\ufffd byte" in name for name in names.values())
    assert file_state(victim) == before


@pytest.mark.slow
def test_image_column_values_must_name_a_file_inside_the_catalog(tmp_path: Path, encoder: Encoder) -> None:
    header, rows = sample_rows(4, seed=22)
    shop = write_catalog(tmp_path / "shop", header, rows[:3])
    outside = write_catalog(tmp_path / "outside", header, rows[3:])
    victim = outside / "images" / f"{rows[3][0]}.jpg"
    secret = outside / "victim.txt"
    secret.write_text("not for the index")
    (shop / "images" / "link.jpg").symlink_to(victim)
    states = {path: file_state(path) for path in (victim, secret)}
    values = {
        "passwd": "/etc/passwd",
        "dotdot": "..",
        "proc": "/proc/self/environ",
        "nul": "images/a\x00b.jpg",
        "upload-victim": f"{UPLOADED}{secret}",
        "upload-db": f"{UPLOADED}index.sqlite",
        "escape": f"../outside/images/{rows[3][0]}.jpg",
        "folder": "images",
        "symlink-out": "images/link.jpg",
        "drive": "C:\\Windows\\win.ini",
        "empty": "",
    }
    good = {f"sku-{r[0]}": f"images/{r[0]}.jpg" for r in rows[:3]}
    table = "sku,picture,title\n" + "".join(f'{sku},"{value}",x\n' for sku, value in {**good, **values}.items())
    (shop / "products.csv").write_text(table)
    index = tmp_path / "idx"
    built = run_cli("index", str(shop / "products.csv"), "--out", str(index), "--id-column", "sku",
                    "--image-column", "picture")  # fmt: skip
    assert built.returncode == 0, built.stderr
    assert "Traceback" not in built.stderr
    problems = problems_of(index)
    assert set(problems) == set(values)
    assert "absolute" in problems["passwd"][0] and "absolute" in problems["proc"][0]
    assert "outside the catalog" in problems["dotdot"][0] and "outside the catalog" in problems["escape"][0]
    assert "NUL" in problems["nul"][0]
    assert "index:" in problems["upload-victim"][0] and "index:" in problems["upload-db"][0]
    assert "not a regular file" in problems["folder"][0]
    assert "outside the catalog" in problems["symlink-out"][0]
    assert_found_by_photo(index, {sku: (shop / name).read_bytes() for sku, name in good.items()})
    assert all(file_state(path) == state for path, state in states.items())

    zipped = tmp_path / "shop.zip"  # the same values, read from a zip
    with zipfile.ZipFile(zipped, "w") as out:
        out.writestr("styles.csv", table.replace("sku,", "id,", 1))
        for name in good.values():
            out.write(shop / name, name)
    catalog = load_catalog(zipped, image_column="picture")
    assert {item.id for item in catalog.items} == set(good)
    assert {p.item for p in catalog.problems} == set(values)


def lie_about_size(archive: Path, member: str, size: int) -> None:
    """Make the zip's local and central headers declare `size` bytes for `member` (a zip bomb's trick)."""
    data = bytearray(archive.read_bytes())
    with zipfile.ZipFile(archive) as opened:
        local = opened.getinfo(member).header_offset
    central = data.rfind(member.encode()) - 46  # the central directory entry: its name starts at +46
    data[local + 22 : local + 26] = data[central + 24 : central + 28] = struct.pack("<I", size)
    archive.write_bytes(bytes(data))


def test_zip_members_are_read_with_a_bound(tmp_path: Path) -> None:
    archive = tmp_path / "catalog.zip"
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as out:
        out.writestr("styles.csv", f"{HEADER}\nbomb,{REST},x\nliar,{REST},x\n")
        out.writestr("images/bomb.jpg", bytes(100 * 2**20))
        out.writestr("images/liar.jpg", bytes(100 * 2**20))
    lie_about_size(archive, "images/liar.jpg", 1000)
    source = load_catalog(archive).source
    tracemalloc.start()
    try:
        with pytest.raises(ImageError, match="file too large"):
            source.read("images/bomb.jpg")  # refused from its declared size, before reading
        with pytest.raises(ImageError, match="unreadable zip member"):
            source.read("images/liar.jpg")  # reads stop at the declared size; the CRC then fails
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 8 * 2**20  # neither member was inflated whole


def test_a_latin1_csv_is_still_read_whole_as_latin1(tmp_path: Path) -> None:
    header, rows = sample_rows(2, seed=26)
    folder = write_catalog(tmp_path, header, rows)
    lines = [HEADER, *(f"{row[0]},{REST},Café Crème {n}" for n, row in enumerate(rows))]
    (folder / "styles.csv").write_bytes("\r\n".join(lines).encode("latin-1"))  # no line is UTF-8
    catalog = load_catalog(folder)
    assert [item.metadata["productDisplayName"] for item in catalog.items] == ["Café Crème 0", "Café Crème 1"]
    assert catalog.problems == []


def test_id_rule() -> None:
    for good in ("15970", "sku-123", "AB_12.3", "Ärmel 7", "x" * 256):
        assert id_problem(good) is None, good
    for bad in (*BAD_IDS, "x" * 257, "", "   ", "tab\there", "line\nbreak", "zero\u200bwidth"):
        assert id_problem(bad) is not None, bad


def test_query_paths_must_be_small_regular_files(tmp_path: Path) -> None:
    fifo = tmp_path / "pipe.jpg"
    os.mkfifo(fifo)
    for path, reason in (("/dev/zero", "not a regular file"), (fifo, "not a regular file"), (tmp_path, "directory")):
        started = time.monotonic()
        with pytest.raises(ImageError, match=reason):
            open_image(path)
        assert time.monotonic() - started < 5
    big = tmp_path / "big.jpg"
    with open(big, "wb") as file:
        file.truncate(MAX_BYTES + 1)
    with pytest.raises(ImageError, match="file too large"):
        open_image(big)


def damaged_copies(tmp_path: Path, source: Path) -> dict[str, Path]:
    """Copies of a good index: garbage for a database, a manifest without encoder, a wrong dimension."""
    copies = {}
    for damage in ("garbage-db", "no-encoder", "wrong-dim"):
        copy = tmp_path / damage
        copy.mkdir()
        for database in ("index.sqlite", "vectors.sqlite"):  # the records, and the files store's vectors
            with closing(sqlite3.connect(source / database)) as db, closing(sqlite3.connect(copy / database)) as out:
                db.backup(out)
        manifest = json.loads((source / "manifest.json").read_text())
        if damage == "no-encoder":
            del manifest["encoder"]
        if damage == "wrong-dim":
            manifest["encoder"]["dim"] = 999
        (copy / "manifest.json").write_text(json.dumps(manifest))
        copies[damage] = copy
    (copies["garbage-db"] / "index.sqlite").write_bytes(os.urandom(4096))
    return copies


def assert_one_line_errors(cases: list[tuple[tuple[str, ...], str]]) -> None:
    for args, message in cases:
        result = run_cli(*args)
        assert result.returncode == 2, (args, result.stdout, result.stderr)
        assert message in result.stderr and "Traceback" not in result.stderr, (args, result.stderr)
        assert len(result.stderr.strip().splitlines()) == 1, result.stderr


@pytest.mark.slow
def test_cli_query_paths_and_damaged_indexes_are_one_line(
    tmp_path: Path, built_index: tuple[Path, object], catalog_photo: Path
) -> None:
    fifo = tmp_path / "pipe.jpg"
    os.mkfifo(fifo)
    cases = [
        (("search", str(built_index[0]), "/dev/zero"), "/dev/zero: not a regular file"),
        (("search", str(built_index[0]), str(fifo)), "pipe.jpg: not a regular file"),
    ]
    for damage, copy in damaged_copies(tmp_path, built_index[0]).items():
        where = str(copy / {"no-encoder": "manifest.json", "wrong-dim": "vectors.sqlite"}.get(damage, "index.sqlite"))
        cases += [(("info", str(copy)), where), (("search", str(copy), str(catalog_photo)), where)]
        cases += [(("similar", str(copy), "1"), where), (("eval", str(copy), "--out", str(tmp_path / "e")), where)]
    assert_one_line_errors(cases)


@pytest.mark.slow
def test_index_into_a_file_or_a_damaged_index_is_one_line(
    tmp_path: Path, built_index: tuple[Path, object], sample_catalog: Path
) -> None:
    a_file = tmp_path / "a-file"
    a_file.write_text("x")
    copies = damaged_copies(tmp_path, built_index[0])
    assert_one_line_errors(
        [
            (("index", str(sample_catalog), "--out", str(a_file)), f"{a_file}: not a directory"),
            (
                ("index", str(sample_catalog), "--out", str(copies["garbage-db"])),
                "index.sqlite: unreadable index database",
            ),
            (
                ("index", str(sample_catalog), "--out", str(copies["no-encoder"])),
                "manifest.json: damaged manifest (no encoder)",
            ),
            (("index", str(sample_catalog), "--out", str(copies["wrong-dim"])), "says 999-d; the index is damaged"),
        ]
    )


@pytest.mark.slow
def test_build_index_works_in_a_script_without_a_main_guard(tmp_path: Path) -> None:
    header, rows = sample_rows(40, seed=23)
    catalog = write_catalog(tmp_path / "catalog", header, rows)
    script = tmp_path / "quick.py"
    script.write_text(
        "from fashionrec import build_index, load_catalog, load_encoder\n"
        "from fashionrec.runners.local import spawn_is_safe\n"
        f"report = build_index(load_catalog({str(catalog)!r}), {str(tmp_path / 'idx')!r}, load_encoder(), workers=2)\n"
        "print('indexed', report.total, 'processes', spawn_is_safe())\n"
        "if __name__ == '__main__':\n"
        "    print('guarded', spawn_is_safe())\n"
    )
    result = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=180)
    assert result.returncode == 0, result.stderr
    assert "indexed 40 processes False" in result.stdout and "Traceback" not in result.stderr
    assert "guarded True" in result.stdout  # inside the guard, spawned worker processes are safe


@pytest.mark.slow
def test_a_killed_rerun_keeps_the_previous_problems(tmp_path: Path) -> None:
    header, rows = sample_rows(700, seed=24)
    folder = write_catalog(tmp_path / "catalog", header, rows[:100])
    (folder / "images" / f"{rows[0][0]}.jpg").write_bytes(b"broken")
    index = tmp_path / "idx"
    assert run_cli("index", str(folder), "--out", str(index)).returncode == 0
    first = problems_of(index)
    assert set(first) == {rows[0][0]}

    write_catalog(folder, header, rows[1:])  # 600 new items, and the broken one left the catalog
    (folder / "images" / f"{rows[1][0]}.jpg").write_bytes(b"")
    process = subprocess.Popen(
        [sys.executable, "-m", "fashionrec.cli", "index", str(folder), "--out", str(index)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 240
    while count(index) <= 100 and time.monotonic() < deadline and process.poll() is None:
        time.sleep(0.05)
    workers = children_of(process.pid)
    process.kill()  # the main process alone, as `kill -9 PID` does: its decoding workers must not live on
    process.wait()
    assert 99 < count(index) < 699, "the rerun must be killed part-way"
    deadline = time.monotonic() + 30
    while workers and time.monotonic() < deadline:
        workers = [pid for pid in workers if Path(f"/proc/{pid}").exists()]
        time.sleep(0.2)
    assert not workers, f"worker processes {workers} outlived the killed build"
    assert problems_of(index) == first  # the killed run's problems are not half-written over the old
    assert run_cli("index", str(folder), "--out", str(index)).returncode == 0
    assert set(problems_of(index)) == {rows[1][0]}


def children_of(pid: int) -> list[int]:
    """The processes whose parent is `pid` (from /proc)."""
    found = []
    for status in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = status.read_text().rsplit(")", 1)[1].split()
        except OSError:  # gone meanwhile
            continue
        if int(fields[1]) == pid:
            found.append(int(status.parent.name))
    return found


def count(index: Path) -> int:
    with closing(sqlite3.connect(index / "index.sqlite")) as db:  # closed: a busy file would block the umount
        return db.execute("SELECT COUNT(*) FROM items").fetchone()[0]


@pytest.mark.slow
def test_a_full_disk_is_one_line_and_a_rerun_resumes(tmp_path: Path, sample_catalog: Path) -> None:
    with small_tmpfs(tmp_path / "disk", "1m") as disk:
        index = disk / "idx"
        full = run_cli("index", str(sample_catalog), "--out", str(index))
        assert full.returncode == 2, full.stderr
        (error,) = [
            line for line in full.stderr.splitlines() if line.strip() and not line.startswith(("Planning", "Indexing"))
        ]
        assert "Traceback" not in full.stderr and "cannot write the index" in error and "resume" in error
        assert not [p for p in disk.rglob("*") if p.name.endswith(".tmp")]
        stored = count(index)
        subprocess.run(["mount", "-o", "remount,size=64m", str(disk)], check=True)
        rerun = run_cli("index", str(sample_catalog), "--out", str(index))
        assert rerun.returncode == 0, rerun.stderr
        assert count(index) == 300 and stored < 300


def test_build_report_and_index_name_the_same_problems(tmp_path: Path, encoder: Encoder) -> None:
    header, rows = sample_rows(5, seed=25)
    folder = write_catalog(tmp_path / "catalog", header, rows)
    styles = (folder / "styles.csv").read_bytes().replace(b"\r\n", b"\r")
    (folder / "styles.csv").write_bytes(styles + f"bad/id,{REST},x\r".encode())
    report = build_index(load_catalog(folder), tmp_path / "idx", encoder, workers=0, progress=False)
    assert report.total == 5 and [p.item for p in report.problems] == ["bad/id"]
    assert [p.item for p in Recommender.open(tmp_path / "idx").problems()] == ["bad/id"]
