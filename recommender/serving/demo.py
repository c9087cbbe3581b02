"""`recommender demo`: the bundled sample archive, before and after."""

from __future__ import annotations

from importlib import resources
from typing import Callable

from recommender.errors import RecommenderError
from recommender.settings import Settings

DEMO_ARTICLE = "ext-2025-03-14-ucraina-rusia-convorbiri"


def demo_corpus_path() -> str:
    return str(resources.files("recommender.serving") / "data" / "demo.jsonl")


def run_demo(settings: Settings, echo: Callable[[str], None] = print, progress: bool = False) -> None:
    from recommender.serving.engine import Engine

    engine = Engine(settings)
    echo(f"Ingesting the sample archive into {settings.data_dir} with {engine.model} ...")
    report = engine.ingest([demo_corpus_path()], progress=progress)
    echo(report.summary() + f"; embedded {report.embedded}")
    stored = engine.store.get(DEMO_ARTICLE)
    if stored is None:
        raise RecommenderError(f"the sample archive lacks its demo article {DEMO_ARTICLE}")
    seed = stored.article
    echo("")
    echo(f"Article: {seed.title}")
    echo(f"         {seed.section}, {seed.published_at:%Y-%m-%d}")
    echo("")
    echo('Before - the page\'s "Citește și" block:')
    for old in seed.meta.get("old_related", []):
        echo(f"  - {old['title']}  [{old['source']}]")
    echo("")
    echo('After - "Citește și" from the publisher\'s own archive:')
    for item in engine.related(DEMO_ARTICLE):
        date = item.published_at.strftime("%Y-%m-%d") if item.published_at else "undated"
        echo(f"  - {item.title}  [{item.section}, {date}, relevance {item.relevance:.2f}]")
        echo(f"      {item.reason}")
    echo("")
    echo(f"Try: recommender related {DEMO_ARTICLE} --data-dir {settings.data_dir} --json")
