"""`make run`, the README's main command, end to end on a small catalog: a first app early, the final one last."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from conftest import REPO, app_answers, free_port, sample_rows, write_catalog

pytestmark = pytest.mark.slow


def test_make_run_serves_a_first_app_then_the_trained_one_and_stops_whole(tmp_path: Path) -> None:
    if not (REPO / ".venv" / "bin" / "fashionrec").is_file():
        pytest.skip("make run runs the .venv that `make setup` makes")
    header, rows = sample_rows(200, seed=5)
    catalog = write_catalog(tmp_path / "catalog", header, rows)
    index, model, port = tmp_path / "index", tmp_path / "model", free_port()
    url = f"http://127.0.0.1:{port}"
    command = ["make", "--no-print-directory", "-o", ".venv/.installed", "run", f"CATALOG={catalog}"]
    command += [f"INDEX={index}", f"MODEL={model}", f"PORT={port}", f"ITEM={rows[0][0]}"]
    log = tmp_path / "make.log"
    with open(log, "w") as output:
        make = subprocess.Popen(
            command,
            cwd=REPO,
            env={key: value for key, value in os.environ.items() if not key.startswith("MAKE")},  # as from a shell
            stdout=output,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group, as a terminal gives it
            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),  # Ctrl-C reaches it as it would a user's
        )
    try:
        deadline = time.monotonic() + 600
        while "fashionrec app on" not in log.read_text() and time.monotonic() < deadline:  # the final app's line
            assert make.poll() is None, log.read_text()[-3000:]
            time.sleep(1)
        while not app_answers(url) and time.monotonic() < deadline:
            time.sleep(1)
        text = log.read_text()
        assert app_answers(url), text[-3000:]
        first_app = text.index(f"A first app on the untrained index: {url}")
        assert text.index(" train ") > first_app  # the first app came before training
        assert text.index(f'app "{index}-trained"') > text.index("similar")  # the final app serves the trained index
        assert url in (tmp_path / "index.app.log").read_text()  # the first app did serve
        assert (model / "fashionrec-model.json").is_file()
        assert (Path(f"{index}-trained") / "text-bridge" / "bridge.json").is_file()
    finally:
        os.killpg(make.pid, signal.SIGINT)  # Ctrl-C
        make.wait(timeout=60)
    time.sleep(1)
    with pytest.raises(ProcessLookupError):  # nothing of it is left running: neither app
        os.killpg(make.pid, 0)
    assert not app_answers(url)
