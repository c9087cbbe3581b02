"""Typed settings, read from flags or RECOMMENDER_* environment variables."""

from __future__ import annotations

from datetime import tzinfo
from pathlib import Path
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import BaseModel, Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


class RankingSettings(BaseModel):
    """Defaults of the ranking rules; each request may override some of them.
    From the environment: RECOMMENDER_RANKING__<FIELD>, e.g. RECOMMENDER_RANKING__MIN_SCORE=0.2.

    Why these values: README "What the engine does", and eval/results/moroco/ablation.md
    for how much each one moves the metrics.
    """

    model_config = {"extra": "forbid"}

    k: int = Field(5, ge=1, le=50)
    # Relevance is the cosine rescaled so that the average random pair of the
    # archive scores 0 and an identical article 1 (see ranking.rescale).
    min_score: float = Field(0.15, ge=0.0, le=1.0)
    # MMR: 0 ranks by relevance alone, 1 by novelty alone (lambda = 1 - diversity).
    diversity: float = Field(0.2, ge=0.0, le=1.0)
    time_prior: bool = True
    half_life_days: float = Field(30.0, gt=0)
    # The prior never pushes a candidate below this share of its relevance, so a
    # strongly related older piece can still win over a weakly related fresh one.
    time_floor: float = Field(0.5, ge=0.0, le=1.0)
    # Rescaled relevance at or above which two articles are the same story.
    duplicate_threshold: float = Field(0.9, gt=0.0, le=1.0)
    # Share of BM25 (over the seed's top terms, on the dense candidates) in the
    # relevance; 0 is dense only. Measured on MOROCO: +0.006 P@5 paired [+0.004,
    # +0.009]; 0.1 to 0.5 all help, 0.3 is the middle (eval/results/moroco/ablation.md).
    lexical_weight: float = Field(0.3, ge=0.0, le=1.0)


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="RECOMMENDER_", env_nested_delimiter="__", extra="ignore")

    data_dir: Path = Path("data")
    # The archive's time zone: dates written without an offset ("20.05.2025 14:30") are read
    # in it. An IANA name, e.g. Europe/Bucharest.
    timezone: str = "UTC"
    # None: the active index's model, or e5-small-q4 when there is no index yet. Naming
    # a model that differs from the active index's is refused (see Engine).
    model: str | None = None
    device: str | None = None
    batch_size: int = Field(32, ge=1, le=4096)
    # e5 reads 512 tokens at most; about 2,000 characters of Romanian fill them.
    embed_chars: int = Field(2000, ge=100, le=100_000)
    # One query at a time is faster on one thread: OpenMP start-up dominates a
    # single search (measured 3.4 ms on 2 threads vs 0.5 ms on 1, 10k x 384).
    faiss_threads: int = Field(1, ge=1, le=256)
    # Lists computed ahead of time hold this many items; requests for more go live.
    precompute_k: int = Field(10, ge=1, le=50)
    ranking: RankingSettings = Field(default_factory=RankingSettings)

    # --- the API ---
    # Comma-separated bearer keys for writes; with none, writes are refused.
    api_keys: str = Field("", repr=False)
    max_body_bytes: int = Field(2 * 1024 * 1024, ge=1024)
    # ?ref=related&from=<id>&pos=<n> on every suggested URL.
    attribution: bool = True
    css_class: str = Field("citeste-si", pattern=r"^[A-Za-z][A-Za-z0-9_-]*$")
    # How often the server looks for other processes' writes and new index versions.
    refresh_seconds: float = Field(1.0, gt=0)
    save_seconds: float = Field(60.0, gt=0)
    # Fill lists that are missing (say, after a bulk load without them) once the server is up.
    precompute_on_start: bool = True
    # Open routes that parse and embed text (POST /v1/related, /v1/rewrite) at once; more get a 429.
    # One: on a 2-core box a second one only slows the CMS's writes and the page views.
    max_concurrent_drafts: int = Field(1, ge=1, le=64)
    # A page rewrite that runs longer is stopped with a 422.
    request_budget_seconds: float = Field(10.0, gt=0, le=600)

    @field_validator("timezone")
    @classmethod
    def _known_zone(cls, value: str) -> str:
        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"unknown time zone {value!r}; use an IANA name such as Europe/Bucharest or UTC") from None
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
