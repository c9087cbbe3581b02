from __future__ import annotations

import importlib.util
import json
import os
from pathlib import Path
from typing import Iterator

import pytest

# No test may reach the network: a hub id must fail fast and locally.
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from embeddings.hashing import HashingEmbedder  # noqa: E402
from recommender.serving.engine import Engine  # noqa: E402
from recommender.settings import Settings  # noqa: E402
from recommender.text.normalize import terms  # noqa: E402

HASHING = "hashing:256"


def write_jsonl(path: Path, records: list, raw_lines: list[bytes] | None = None) -> Path:
    """Write articles (dicts, or raw strings/bytes for malformed lines) as JSONL."""
    with path.open("wb") as fh:
        for record in records:
            if isinstance(record, bytes):
                fh.write(record + b"\n")
            elif isinstance(record, str):
                fh.write(record.encode() + b"\n")
            else:
                fh.write(json.dumps(record, ensure_ascii=False).encode() + b"\n")
    return path


def article(aid: str, title: str, body: str = "", date: str | None = "2025-03-01T10:00:00+00:00",
            section: str | None = "externe", **extra) -> dict:
    record = {"id": aid, "title": title, "body": body, "section": section,
              "url": f"https://www.exemplu.ro/{section or 'stiri'}/{aid}", **extra}
    if date is not None:
        record["published_at"] = date
    return record


class CountingEmbedder(HashingEmbedder):
    """A real hashing embedder that also counts the texts it is given."""

    def __init__(self, dimension: int = 256):
        super().__init__(dimension, tokenize=terms)
        self.calls: list[int] = []

    def embed(self, texts):
        self.calls.append(len(texts))
        return super().embed(texts)

    @property
    def embedded(self) -> int:
        return sum(self.calls)


# PostgreSQL: RECOMMENDER_TEST_DATABASE_URL names a server where tests may create and drop
# databases. .ci/run sets it, so there a missing server fails the run; unset, the local default
# is tried, and the PostgreSQL tests are skipped with a reason when nothing answers there.
PG_ADMIN_URL = os.environ.get("RECOMMENDER_TEST_DATABASE_URL", "")
PG_DEFAULT = "postgresql://postgres@127.0.0.1:5432/postgres"
# RECOMMENDER_TEST_STORE=postgres runs the tests that use the `settings` fixture over PostgreSQL.
STORE_BACKEND = os.environ.get("RECOMMENDER_TEST_STORE", "sqlite")


def pg_admin_url() -> str:
    import psycopg

    url = PG_ADMIN_URL or PG_DEFAULT
    try:
        psycopg.connect(url, connect_timeout=3).close()
    except psycopg.OperationalError as exc:
        if PG_ADMIN_URL:
            pytest.fail(f"RECOMMENDER_TEST_DATABASE_URL={PG_ADMIN_URL} cannot be reached: {exc}")
        pytest.skip(f"no PostgreSQL at {PG_DEFAULT} (set RECOMMENDER_TEST_DATABASE_URL): {exc}")
    return url


def with_dbname(url: str, name: str) -> str:
    from psycopg.conninfo import conninfo_to_dict

    parts = conninfo_to_dict(url)
    password = f":{parts['password']}" if parts.get("password") else ""
    return (f"postgresql://{parts.get('user', 'postgres')}{password}@{parts.get('host', '127.0.0.1')}:"
            f"{parts.get('port', 5432)}/{name}")


@pytest.fixture
def pg_url() -> Iterator[str]:
    """A database of its own, dropped afterwards (with whatever is still connected to it)."""
    import uuid

    import psycopg

    admin = pg_admin_url()
    name = f"rec_test_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {name}")
    yield with_dbname(admin, name)
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


@pytest.fixture
def database_url(request) -> str:
    """The store the `settings` fixture uses: "" (SQLite in the data dir) unless RECOMMENDER_TEST_STORE=postgres."""
    return request.getfixturevalue("pg_url") if STORE_BACKEND == "postgres" else ""


@pytest.fixture
def settings(tmp_path, database_url) -> Settings:
    # The rule tests reason about dense scores alone; the BM25 blend has tests of its own.
    from recommender.settings import RankingSettings

    return Settings(data_dir=tmp_path / "data", model=HASHING, ranking=RankingSettings(lexical_weight=0.0),
                    database_url=database_url)


@pytest.fixture
def embedder() -> CountingEmbedder:
    return CountingEmbedder(256)


@pytest.fixture
def engine(settings, embedder) -> Engine:
    return Engine(settings, embedder=embedder)


def all_lists(engine: Engine) -> dict[str, list[str]]:
    """Every stored list of the engine's active index, as article ids."""
    state = engine.state()
    lists = engine.lists_for(state)
    return {state.infos[n].id: [state.infos[i.num].id for i in lists.get(n).items] for n in sorted(state.infos)}


# A small archive with two stories and unrelated noise, in the shape publishers send.
STORY_ARTICLES = [
    article("ukr-1", "Kievul propune un armistițiu în Marea Neagră",
            "Ucraina propune Rusiei un armistițiu pe mare, ca porturile ucrainene să poată exporta cereale.",
            "2025-03-01T10:00:00+00:00"),
    article("ukr-2", "Negocieri la Istanbul pentru armistițiul din Marea Neagră",
            "Delegațiile Ucrainei și Rusiei negociază armistițiul pe mare; porturile ucrainene cer protecție.",
            "2025-03-08T10:00:00+00:00"),
    article("ukr-3", "Acord pentru armistițiul din Marea Neagră",
            "Ucraina și Rusia au acceptat armistițiul pe mare; porturile pot exporta cereale.",
            "2025-04-02T10:00:00+00:00"),
    article("ukr-old", "Armistițiu în Marea Neagră discutat de diplomați",
            "Diplomații discută armistițiul pe mare și porturile Ucrainei.",
            "2023-03-01T10:00:00+00:00", section="arhiva"),
    article("fot-1", "FCSB câștigă derby-ul cu Dinamo", "FCSB a învins Dinamo în derby-ul etapei din Superliga.",
            "2025-03-02T18:00:00+00:00", section="sport"),
    article("fot-2", "Dinamo pierde din nou în Superliga", "Dinamo a pierdut meciul din etapa de Superliga, după derby.",
            "2025-03-09T18:00:00+00:00", section="sport"),
    article("vac-1", "Cât costă o vacanță în Grecia", "Prețurile vacanțelor all inclusive în Grecia cresc în această vară.",
            "2025-03-05T08:00:00+00:00", section="lifestyle"),
]


@pytest.fixture
def stories(tmp_path) -> Path:
    return write_jsonl(tmp_path / "stories.jsonl", STORY_ARTICLES)


# sentence-transformers is an extra: without it, the tests that need it are skipped, not red.
HAS_ST = importlib.util.find_spec("sentence_transformers") is not None
ST_MISSING = "needs the [st] extra: pip install torch==2.13.0 && pip install -e '.[st]'"
needs_st = pytest.mark.skipif(not HAS_ST, reason=ST_MISSING)


@pytest.fixture(scope="session")
def tiny_st_model(tmp_path_factory) -> Path:
    """A real sentence-transformers model, built offline: StaticEmbedding over a
    word-level tokenizer made with `tokenizers`, saved to a folder."""
    if not HAS_ST:
        pytest.skip(ST_MISSING)
    import numpy as np
    import torch
    from sentence_transformers import SentenceTransformer
    try:
        from sentence_transformers.sentence_transformer.modules import StaticEmbedding
    except ImportError:  # sentence-transformers < 6
        from sentence_transformers.models import StaticEmbedding
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers

    words = ("guvern buget deficit ministru fotbal meci echipa gol derby dinamo fcsb "
             "ucraina rusia armistitiu marea neagra porturi negocieri vacanta grecia").split()
    vocab = {"[UNK]": 0, "[PAD]": 1, **{w: i + 2 for i, w in enumerate(words)}}
    tokenizer = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tokenizer.normalizer = normalizers.Sequence([normalizers.NFD(), normalizers.StripAccents(), normalizers.Lowercase()])
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    weights = np.random.default_rng(0).normal(size=(len(vocab), 16)).astype(np.float32)
    weights[0] = 0  # unknown words carry no meaning
    model = SentenceTransformer(modules=[StaticEmbedding(tokenizer, embedding_weights=torch.from_numpy(weights))],
                                device="cpu")
    path = tmp_path_factory.mktemp("models") / "tiny-st"
    model.save(str(path))
    return path
