"""Damaged index files: an index is a cache of the store, so every file that fails its
check is rebuilt from the store, loudly, and never answers wrong."""

from __future__ import annotations

import json
import logging
import re
import shutil
import threading
import time
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from api.app import create_app
from recommender.serving.engine import Engine
from tests.conftest import CountingEmbedder


def flip(path: Path) -> None:
    data = bytearray(path.read_bytes())
    middle = len(data) // 2
    data[middle:middle + 8] = bytes(b ^ 0xFF for b in data[middle:middle + 8])
    path.write_bytes(bytes(data))


def truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: len(path.read_bytes()) // 2])


def delete(path: Path) -> None:
    path.unlink()


def index_files(version: Path) -> list[Path]:
    return sorted(p for p in version.rglob("*") if p.is_file() and not p.name.startswith("."))


def answers(engine: Engine) -> dict[str, list[str]]:
    return {aid: [i.id for i in engine.related(aid, k=5)] for aid in sorted(engine.state().by_id)}


@pytest.fixture
def served(settings, stories, tmp_path):
    """A data dir as a server leaves it, its answers, and a pristine copy to damage."""
    engine = Engine(settings, embedder=CountingEmbedder())
    engine.ingest([str(stories)])
    reference = answers(engine)
    pristine = tmp_path / "pristine"
    shutil.copytree(settings.data_dir, pristine)
    return settings, reference, pristine


@pytest.mark.parametrize("damage", [flip, truncate, delete])
def test_every_damaged_index_file_is_detected_and_rebuilt_from_the_store(served, damage, caplog):
    settings, reference, pristine = served
    files = index_files(pristine / "indexes" / "v1")
    assert {"index.faiss", "meta.json", "nums.npy"} <= {p.name for p in files} and len(files) >= 12
    for file in files:
        shutil.rmtree(settings.data_dir)
        shutil.copytree(pristine, settings.data_dir)
        damage(settings.data_dir / file.relative_to(pristine))
        caplog.clear()
        with caplog.at_level(logging.WARNING):
            fresh = CountingEmbedder()
            engine = Engine(settings, embedder=fresh)
            assert answers(engine) == reference, file.name
        assert fresh.embedded == 0  # rebuilt from the stored vectors, nothing embedded again
        assert any(word in caplog.text for word in ("damaged", "unreadable")), (damage.__name__, file.name)


@pytest.mark.parametrize("manifest", ["meta.json", "lexical/meta.json"])
def test_a_manifest_still_valid_json_after_damage_is_detected(served, caplog, manifest):
    """A flipped hex digit leaves a manifest parseable (it failed in CI once: the middle of
    meta.json fell on main_token, which nothing else checks)."""
    settings, reference, _ = served
    path = settings.data_dir / "indexes" / "v1" / manifest
    raw = path.read_bytes()
    at = re.compile(rb'"[0-9a-f]{8,}"').search(raw, max(raw.find(b"main_token"), 0)).start() + 3  # a token or a digest
    path.write_bytes(raw[:at] + (b"0" if raw[at:at + 1] != b"0" else b"1") + raw[at + 1:])
    assert json.loads(path.read_bytes().partition(b"\n")[2])  # still JSON: only the seal tells
    with caplog.at_level(logging.WARNING):
        assert answers(Engine(settings, embedder=CountingEmbedder())) == reference
    assert f"{manifest} is damaged" in caplog.text


def test_swapped_files_are_detected(served, caplog):
    settings, reference, pristine = served
    shutil.rmtree(settings.data_dir)
    shutil.copytree(pristine, settings.data_dir)
    lexical = settings.data_dir / "indexes" / "v1" / "lexical"
    text, titles = (next((lexical / part).glob("base-*/ids.npy")) for part in ("text", "titles"))
    a, b = text.read_bytes(), titles.read_bytes()  # each a valid file, holding another part's documents
    text.write_bytes(b)
    titles.write_bytes(a)
    with caplog.at_level(logging.WARNING):
        assert answers(Engine(settings, embedder=CountingEmbedder())) == reference
    assert "damaged" in caplog.text


def test_a_server_is_not_ready_while_it_rebuilds_a_damaged_index(served, monkeypatch):
    from recommender.index.state import Indexes

    settings, _, pristine = served
    flip(settings.data_dir / "indexes" / "v1" / "index.faiss")
    release = threading.Event()
    build = Indexes.build_state

    def held(self, version, dimension):
        release.wait(30)
        return build(self, version, dimension)

    monkeypatch.setattr(Indexes, "build_state", held)  # holds the rebuild, to look at /readyz meanwhile
    with TestClient(create_app(settings, embedder=CountingEmbedder())) as client:
        deadline = time.monotonic() + 10
        while (ready := client.get("/readyz")).json()["status"] != "rebuilding" and time.monotonic() < deadline:
            time.sleep(0.02)
        assert ready.status_code == 503 and "index.faiss is damaged" in ready.json()["detail"]
        release.set()
        while (ready := client.get("/readyz")).status_code != 200 and time.monotonic() < deadline:
            time.sleep(0.02)
        assert ready.json()["status"] == "ready"
        assert client.get("/v1/articles/ukr-1/related").status_code == 200


def test_a_start_that_cannot_finish_says_why_and_calls_for_an_exit(settings, monkeypatch):
    from recommender.serving.service import Service

    def broken(self):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(Service, "start", broken)
    stopped = []
    with TestClient(create_app(settings, embedder=CountingEmbedder(), background=False,
                               on_failure=lambda: stopped.append(True))) as client:
        ready = client.get("/readyz")
        assert ready.status_code == 503 and ready.json()["status"] == "failed"
        assert "No space left on device" in ready.json()["detail"]
    assert stopped == [True]


@pytest.mark.parametrize("active", [b"\x89\x8e\xf5", b"v99\n", None])
def test_a_damaged_active_pointer_serves_the_newest_version(served, caplog, active):
    settings, reference, pristine = served
    pointer = settings.data_dir / "indexes" / "ACTIVE"
    pointer.unlink() if active is None else pointer.write_bytes(active)
    with caplog.at_level(logging.WARNING):
        assert answers(Engine(settings, embedder=CountingEmbedder())) == reference
    assert "names no index version" in caplog.text


def test_a_write_that_fails_leaves_no_file_behind(tmp_path):
    """A full disk used to leave a zero-byte delta file beside the index."""
    from recommender.index.files import write_file

    def full(fh):
        fh.write(b"half")
        raise OSError(28, "No space left on device")

    with pytest.raises(OSError):
        write_file(tmp_path / "delta-1.npz", full)
    assert list(tmp_path.iterdir()) == []
    assert write_file(tmp_path / "ok.json", lambda fh: fh.write(b"{}")) == (
        "44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a")


def test_a_damaged_store_page_takes_the_server_out_of_rotation(served, caplog):
    """The store is no cache: nothing rebuilds it. A damaged page (here one of an index
    the serving path does not read) used to go unnoticed; /readyz now says so."""
    import sqlite3

    settings, _, _ = served
    conn = sqlite3.connect(settings.store_path)
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    page_size = conn.execute("PRAGMA page_size").fetchone()[0]
    (page,) = conn.execute("SELECT pageno FROM dbstat WHERE name = 'articles_section' LIMIT 1").fetchone()
    conn.close()
    with open(settings.store_path, "r+b") as fh:
        fh.seek((page - 1) * page_size + 8)
        fh.write(b"\xff" * 64)
    with caplog.at_level(logging.ERROR), TestClient(create_app(settings, embedder=CountingEmbedder(),
                                                               background=False)) as client:
        deadline = time.monotonic() + 10
        while (ready := client.get("/readyz")).status_code == 200 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert ready.status_code == 503 and ready.json()["status"] == "store damaged"
        assert client.get("/v1/articles/ukr-1/related").status_code == 200  # what it can, it still serves
    assert "is damaged" in caplog.text and ".recover" in caplog.text
