"""Learn the ranking profile's weights from the archive's own links.

Each link an editor made (the `related` field, a link in a body to another
article's URL, a CSV row from the CMS) is a positive: for its article, the
ranking's candidates are gathered exactly as serving does (every source,
past-only, since an editor can only link what exists), their features computed,
and a pairwise logistic regression fits one weight per feature: it learns which
of two candidates of the same list the editor linked, the order within a list
being what a list is judged on, starting from the active profile.
"""

from __future__ import annotations

import csv
import math
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Callable, Iterable

import numpy as np

from recommender.errors import NoLabels, RecommenderError
from recommender.index.state import IndexState
from recommender.ranking import features, pipeline
from recommender.ranking.metrics import hit_at_k, reciprocal_rank
from recommender.ranking.rules import Filters
from recommender.settings import RankingSettings
from recommender.store.articles import Article
from recommender.store.base import Store
from recommender.text.markup import Element, parse

Labels = dict[str, set[str]]  # article id -> ids of the articles its editors linked
# article id -> {linked id: weight}: labels that count more or less than one editor's link
# (readers' clicks, corrected for position bias: recommender.audience.clicks)
Weights = dict[str, dict[str, float]]


@dataclass(frozen=True)
class Group:
    """One linked article's candidates, their features, and which of them were linked."""

    query: str
    published_at: datetime | None
    pairs: features.Pairs
    linked: np.ndarray  # bool per candidate
    wanted: int  # linked articles that exist before the query, found among the candidates or not
    weight: np.ndarray | None = None  # per candidate, how much a linked one counts (None: 1 each)


@dataclass(frozen=True)
class Quality:
    queries: int
    hit: float
    mrr: float


def groups_for(state: IndexState, store: Store, labels: Labels, opts: RankingSettings,
               embed: pipeline.Embed, progress: bool = False, weights: Weights | None = None) -> list[Group]:
    """A group per labelled article with at least one link to an earlier article of the archive.
    With `weights` (readers' clicks), candidates are gathered as a page view's are, not
    past-only, and a weighted label counts whenever it was published: a reader clicks
    what the block showed."""
    from tqdm import tqdm

    out = []
    for query in tqdm(sorted(labels), unit="query", desc="gathering candidates", disable=not progress):
        num = state.by_id.get(query)
        if num is None or num not in state.vectors:
            continue
        seed = pipeline.stored_seed(state, store, query, embed)
        weighted = (weights or {}).get(query, {})
        wanted = {state.by_id[r] for r in labels[query] if r in state.by_id and (
            r in weighted or _before(state, r, seed))}
        if not wanted:
            continue
        pairs = pipeline.candidate_pairs(state, seed, Filters(past_only=weights is None), opts)
        linked = np.isin(pairs.nums, np.fromiter(wanted, dtype=np.int64))
        weight = None
        if weights is not None:
            by_num = {state.by_id[r]: w for r, w in weighted.items() if r in state.by_id}
            weight = np.array([by_num.get(int(n), 1.0) for n in pairs.nums])
        out.append(Group(query, seed.published_at, pairs, linked, len(wanted), weight))
    return out


def fit(groups: list[Group], start: dict[str, float], c: float = 0.01, negatives: int = 20,
        seed: int = 0) -> dict[str, float]:
    """Pairwise logistic regression: for every linked candidate, the difference of its
    features with those of `negatives` unlinked candidates of the same list, drawn at
    random (seeded; the hardest ones by the starting profile are often links the editor could
    have made, and scored worse in a trial). It learns the order within a list, which is what
    a list is judged on. The starting profile's score is one more column: under the L2
    penalty, following it costs one weight, so the fit learns the archive's
    departure from it rather than a profile from nothing (on ZF, learned before
    2021 and scored on 2021: hit@10 +0.017 [-0.003, +0.037] over the hand-set
    profile, eval/results/zf-2021.md). The weights by feature name."""
    from sklearn.linear_model import LogisticRegression

    w_start = np.array([start.get(name, 0.0) for name in features.FEATURES])
    rng = np.random.default_rng(seed)
    diffs, counts = [], []
    for group in groups:
        matrix = np.column_stack([group.pairs.matrix, group.pairs.matrix @ w_start])
        linked, unlinked = np.flatnonzero(group.linked), np.flatnonzero(~group.linked)
        for row in linked if len(unlinked) else []:
            drawn = rng.choice(unlinked, size=min(negatives, len(unlinked)), replace=False)
            diffs.append(matrix[row] - matrix[drawn])
            counts.append(np.full(len(drawn), 1.0 if group.weight is None else group.weight[row]))
    if not diffs:
        raise NoLabels("none of the linked articles is among the candidates")
    d, w = np.vstack(diffs), np.concatenate(counts)
    model = LogisticRegression(C=c, max_iter=5000, fit_intercept=False)
    model.fit(np.vstack([d, -d]), np.r_[np.ones(len(d)), np.zeros(len(d))], sample_weight=np.r_[w, w])
    weights = model.coef_[0][:-1] + model.coef_[0][-1] * w_start
    return {name: round(float(w), 4) for name, w in zip(features.FEATURES, weights)}


def quality(groups: list[Group], weights: dict[str, float], k: int = 10) -> tuple[np.ndarray, np.ndarray]:
    """Per group, hit@k and reciprocal rank@k of the candidates ordered by the weights
    alone (no MMR, no minimum score): a fast proxy of the full list."""
    hits, rrs = [], []
    for group in groups:
        score = pipeline.score_pairs(group.pairs, weights)
        ranked = group.pairs.nums[np.lexsort((group.pairs.nums, -score))].tolist()
        linked = set(group.pairs.nums[group.linked].tolist())
        hits.append(hit_at_k(ranked, linked, k))
        rrs.append(reciprocal_rank(ranked, linked, k))
    return np.array(hits), np.array(rrs)


def split(groups: list[Group], held_out: float = 0.2) -> tuple[list[Group], list[Group]]:
    """The oldest groups to learn on, the newest `held_out` share to score on."""
    ordered = sorted(groups, key=lambda g: (g.published_at is None, g.published_at or datetime.min, g.query))
    cut = max(1, math.floor(len(ordered) * (1 - held_out)))
    return ordered[:cut], ordered[cut:]


def _before(state: IndexState, linked: str, seed: pipeline.Seed) -> bool:
    when = state.infos[state.by_id[linked]].published_at
    return when is not None and seed.published_at is not None and when <= seed.published_at


# --- where labels come from ----------------------------------------------------

def labels_from_articles(store: Store, ids: Iterable[str], field: str, url_to_id: dict[str, str]) -> Labels:
    """Every article's links, from its `field` and from its body, read in one pass."""
    return _collect(store, ids, lambda a: _field_links(a, field) | _body_links(a, url_to_id))


def labels_from_field(store: Store, ids: Iterable[str], field: str = "related") -> Labels:
    """The ids listed in each article's `field` (a list, or a JSON list in a string)."""
    return _collect(store, ids, lambda a: _field_links(a, field))


def labels_from_links(store: Store, url_to_id: dict[str, str], ids: Iterable[str]) -> Labels:
    """Links inside article bodies (`<a href>`) that point at another article's URL."""
    return _collect(store, ids, lambda a: _body_links(a, url_to_id))


def _collect(store: Store, ids: Iterable[str], links: Callable[[Article], set[str]]) -> Labels:
    out: Labels = {}
    for article_id in ids:
        stored = store.get(article_id)
        found = links(stored.article) - {article_id} if stored else set()
        if found:
            out[article_id] = found
    return out


def _field_links(article: Article, field: str) -> set[str]:
    import json

    value = article.meta.get(field)
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except ValueError:
            value = [value]
    return {str(v) for v in value} if value else set()


def _body_links(article: Article, url_to_id: dict[str, str]) -> set[str]:
    if "<a" not in article.body.lower():
        return set()
    return {target for href in hrefs(article.body) if (target := url_to_id.get(_url_key(href)))}


def labels_from_csv(path: Path, url_to_id: dict[str, str], known: Callable[[str], bool]) -> Labels:
    """A CMS export: a header row naming `from` and `to` columns, each an article id or URL."""
    out: Labels = {}
    with open(path, newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        if not reader.fieldnames or not {"from", "to"} <= set(reader.fieldnames):
            raise RecommenderError(f"{path}: the CSV needs a header with columns 'from' and 'to'",
                                   hint="e.g. from,to\\n2025-03-14-kiev,2025-03-10-kiev")
        for row in reader:
            source, target = (_resolve(row[c] or "", url_to_id, known) for c in ("from", "to"))
            if source and target and source != target:
                out.setdefault(source, set()).add(target)
    return out


def merge(*sources: Labels) -> Labels:
    out: Labels = {}
    for labels in sources:
        for key, values in labels.items():
            out.setdefault(key, set()).update(values)
    return out


def hrefs(html: str) -> list[str]:
    return [node.attrs["href"] for node in parse(html).iter()
            if isinstance(node, Element) and node.tag == "a" and node.attrs.get("href")]


def _url_key(url: str) -> str:
    """A URL without scheme, query, fragment and trailing slash: how a body's link and a
    stored URL are matched."""
    url = url.strip().split("#")[0].split("?")[0].rstrip("/")
    return url.split("://", 1)[-1].removeprefix("www.").lower()


def url_index(store: Store) -> dict[str, str]:
    return {_url_key(url): article_id for article_id, url in store.urls()}


def _resolve(value: str, url_to_id: dict[str, str], known: Callable[[str], bool]) -> str | None:
    value = value.strip()
    if known(value):
        return value
    return url_to_id.get(_url_key(value)) if "/" in value else None



# --- the whole job -----------------------------------------------------------------

# Fewer held-out linked articles than this cannot tell a gain from noise (at 3, hit@10 moves
# in steps of 0.33): the profile is saved but neither recommended nor activated.
MIN_HELD_OUT = 50


@dataclass(frozen=True)
class TuneResult:
    weights: dict[str, float]
    links: int  # labelled articles with a link to an earlier article of the archive
    learned_on: int  # of them, the older ones the held-out check learned on
    held_out: int  # the newest ones it scored
    before: Quality  # the active profile, on the held-out queries
    after: Quality  # weights learned on the older queries only, on the same held-out queries
    report: dict[str, float | str]  # what `recommender tune --json` prints

    @property
    def measured(self) -> bool:
        """Whether the held-out check scored enough articles to be believed."""
        return self.held_out >= MIN_HELD_OUT


def learn(state: IndexState, store: Store, labels: Labels, opts: RankingSettings, embed: pipeline.Embed,
          until: datetime | None, held_out: float = 0.2, c: float = 0.01, progress: bool = False,
          weights: Weights | None = None) -> TuneResult:
    """Weights learned from every labelled article published before `until`; their
    gain measured first by learning on the older 80 % and scoring the newest 20 %.
    `weights`: how much some labels count (readers' clicks; see `groups_for`)."""
    if until is not None:
        labels = {q: r for q, r in labels.items()
                  if q in state.by_id and (when := state.infos[state.by_id[q]].published_at) and when < until}
    groups = groups_for(state, store, labels, opts, embed, progress, weights)
    if len(groups) < 10:
        raise NoLabels(f"only {len(groups)} articles link to earlier articles of the archive"
                       + (f" before {until:%Y-%m-%d}" if until else "") + "; at least 10 are needed",
                       hint="give links with a 'related' field, links in bodies, or --links-csv")
    older, newer = split(groups, held_out)
    hits0, rr0 = quality(newer, opts.weights)
    hits1, rr1 = quality(newer, fit(older, opts.weights, c))
    before, after = Quality(len(newer), hits0.mean(), rr0.mean()), Quality(len(newer), hits1.mean(), rr1.mean())
    learned = fit(groups, opts.weights, c)
    report: dict[str, float | str] = {
        "links": len(groups), "held_out": len(newer), "held_out_hit10_before": round(before.hit, 4),
        "held_out_mrr10_before": round(before.mrr, 4), "held_out_hit10": round(after.hit, 4),
        "held_out_mrr10": round(after.mrr, 4)}
    if until is not None:
        report["until"] = f"{until:%Y-%m-%d}"
    return TuneResult(learned, len(groups), len(older), len(newer), before, after, report)
