"""Simulated readers over a real archive: does an experiment's report find what is there?

    python eval/bench_clicks.py --moroco ../shared/data/moroco/moroco-test.jsonl --out eval/results/clicks

The archive is the first `--articles` MOROCO articles (hashing vectors: the lists, not
the model, are under test). Two rankings serve them: the default profile, and a worse one
that puts the least similar pieces first. Readers click an item of the seed's own topic
with probability `--q-related` and any other with `--q-other`, times a position bias
(1/pos^eta, `--eta`, default 0.7) and a reader's own propensity (gamma, mean 1: some readers click far more,
which is why the interval is clustered by reader). Each reader sees 1 + Poisson(4) pages.

From the lists, each arm's true CTR is known exactly, so the script checks, over
`--repeats` simulated experiments, that the report's 95 % interval of the difference covers
the truth about 95 % of the time and has the right sign, and that an A/A test (both arms
the default profile) is significant in about 5 %. One repeat goes through the store
(the path of POST /v1/events) and must give the same report as the in-memory arithmetic.
Then `--learn-readers` readers click both arms' blocks of a fresh store (`--block-order
date`: the second arm shows the default's five newest first, the archive given random
dates), and a profile is
learned from their clicks on the older 80 % of the articles (as `tune --clicks` does), once
with the position-bias correction and once without (a naive learner: clicks counted as
they are), each scored on the other 20 % by P@5 against the topic; and a third time
with each clicked item weighted by its estimated relevance (clicks over expected
examinations: impressions times the position's propensity); and a fourth time from the
truth itself (every article of the seed's topic labelled), the ceiling of what labels can
teach these features. Each profile is also scored by the clicks a view of its block would
get from the same readers (clicks per view). With `--timely-days D`, readers click an item
published within D days of the seed `--timely-boost` times as often, so what they want is
topic and time, and only clicks say how much time counts. Last, `--events`
simulated events (default 10 million) are counted into a SQLite store in batches of
10,000, as the API does, and the report is timed.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path

import numpy as np

from recommender.audience.clicks import click_labels
from recommender.audience.events import MAX_EVENTS
from recommender.audience.experiments import Arm, Experiment
from recommender.audience.record import record_events
from recommender.audience.report import ArmSums, build_report, experiment_report
from recommender.ranking import tune
from recommender.ranking.profiles import Profile, open_profiles
from recommender.serving.engine import Engine
from recommender.settings import Settings
from recommender.store.base import Store

K = 5
WORSE = {"dense": -1.0}  # the least similar pieces above the minimum relevance first


@dataclass(frozen=True)
class Readers:
    """What a reader clicks when looking at an item: one of the seed's own topic with chance
    `q_related`, any other with `q_other`; with `timely_days`, an item published within that
    many days of the seed `timely_boost` times as often (news readers want what is current)."""

    topics: dict[str, str]
    q_related: float
    q_other: float
    when: dict[str, datetime] | None = None
    timely_days: int = 0
    timely_boost: float = 1.0

    def chance(self, seed: str, ids: list[str]) -> np.ndarray:
        same = np.array([self.topics[i] == self.topics[seed] for i in ids])
        p = np.where(same, self.q_related, self.q_other)
        if self.timely_days and self.when is not None:
            near = np.array([abs((self.when[i] - self.when[seed]).days) <= self.timely_days for i in ids])
            p = p * np.where(near, self.timely_boost, 1.0)
        return p


@dataclass
class Arms:
    """Per arm, per seed: the ids shown and each position's click probability."""

    seeds: list[str]
    worse: str  # the worse profile's name
    shown: dict[str, list[list[str]]]  # by profile
    relevance: dict[str, np.ndarray]  # by profile: (seeds, K), each shown item's click chance at position 1
    bias: np.ndarray  # (K,): the chance that a reader looks at each position, 1/pos^eta

    @property
    def probs(self) -> dict[str, np.ndarray]:
        return {a: r * self.bias for a, r in self.relevance.items()}

    def true_ctr(self, arm: str) -> float:
        return float(self.probs[arm].sum(axis=1).mean())  # seeds uniform, propensity mean 1


def archive(moroco: Path, n: int, workdir: Path, dated: bool = False) -> tuple[Engine, dict[str, str]]:
    """The first `n` MOROCO articles stored; `dated`: each given a day of 2024 (MOROCO has
    no dates), drawn at random (seeded), so a block ordered by date orders by chance."""
    from eval.prepare_moroco import convert

    records, days = [], np.random.default_rng(1)
    with moroco.open(encoding="utf-8") as fh:
        for line in fh:
            record = convert(json.loads(line))
            if dated:
                day = datetime(2024, 1, 1, 12, tzinfo=timezone.utc) + timedelta(days=int(days.integers(0, 366)))
                record["published_at"] = day.isoformat()
            records.append(record)
            if len(records) == n:
                break
    workdir.mkdir(parents=True, exist_ok=True)
    path = workdir / "moroco.jsonl"
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), encoding="utf-8")
    engine = Engine(Settings(data_dir=workdir / "data", model="hashing:256"))
    engine.ingest([str(path)])
    return engine, {r["id"]: r["topic"] for r in records}


def newest_first(engine: Engine, arms: Arms) -> Arms:
    """The worse arm replaced by the default's five in the order of a CMS that sorts its
    block by date, newest first: the items are as good, their order is by chance, and a
    learner that takes a position's clicks at face value learns to prefer what is newer."""
    state = engine.state()
    when = {info.id: info.published_at for info in state.infos.values()}
    shown, relevance = [], []
    for ids, probs in zip(arms.shown["default"], arms.relevance["default"]):
        order = sorted(range(len(ids)), key=lambda i: (when[ids[i]], ids[i]), reverse=True)
        shown.append([ids[i] for i in order])
        relevance.append(probs[order])
    return Arms(arms.seeds, arms.worse, {**arms.shown, arms.worse: shown},
                {**arms.relevance, arms.worse: np.array(relevance)}, arms.bias)


def lists(engine: Engine, readers: Readers, eta: float) -> Arms:
    profiles = open_profiles(engine.settings, engine.store)
    saved = profiles.save(WORSE, "bench_clicks: the worse arm", {})
    worse = Engine(engine.settings, profile=saved)
    seeds: list[str] = []
    shown: dict[str, list[list[str]]] = {"default": [], saved.name: []}
    probs: dict[str, list[np.ndarray]] = {"default": [], saved.name: []}
    for aid in readers.topics:
        by_arm = {"default": [i.id for i in engine.related(aid, k=K)],
                  saved.name: [i.id for i in worse.related(aid, k=K)]}
        if min(len(v) for v in by_arm.values()) < K:
            continue  # a seed with a short list would make the two arms' blocks differ in length
        seeds.append(aid)
        for arm, ids in by_arm.items():
            shown[arm].append(ids)
            probs[arm].append(readers.chance(aid, ids))
    return Arms(seeds, saved.name, shown, {a: np.array(p) for a, p in probs.items()},
                1.0 / np.arange(1, K + 1) ** eta)


@dataclass
class Sim:
    """Per reader: the arm, impressions, clicks, and each view's (seed, clicked positions)."""

    arm: list[str]
    impressions: np.ndarray
    clicks: np.ndarray
    views: list[tuple[np.ndarray, np.ndarray, np.ndarray]]  # seeds, clicked, the order shown


def simulate(arms: Arms, experiment: Experiment, readers: int, rng: np.random.Generator) -> Sim:
    """Readers' views and clicks; in `experiment.explore` of the views two neighbouring items
    are swapped, as serving does, and the clicks follow the items to their new positions."""
    names = [experiment.assign(f"r{i}").name for i in range(readers)]
    profile = {a.name: a.profile for a in experiment.arms}
    propensity = rng.gamma(2.0, 0.5, readers)
    views = 1 + rng.poisson(4.0, readers)
    sim = Sim(names, views, np.zeros(readers, int), [])
    for r in range(readers):
        seeds = rng.integers(0, len(arms.seeds), views[r])
        order = np.tile(np.arange(K), (len(seeds), 1))
        for v in np.flatnonzero(rng.random(len(seeds)) < experiment.explore):
            j = rng.integers(0, K - 1)
            order[v, [j, j + 1]] = order[v, [j + 1, j]]
        relevance = np.take_along_axis(arms.relevance[profile[names[r]]][seeds], order, axis=1)
        p = np.minimum(relevance * arms.bias * propensity[r], 1.0)
        clicked = rng.random(p.shape) < p
        sim.clicks[r] = clicked.sum()
        sim.views.append((seeds, clicked, order))
    return sim


def sums_of(sim: Sim, arm: str) -> ArmSums:
    mask = np.array([a == arm for a in sim.arm])
    i, c = sim.impressions[mask].astype(int), sim.clicks[mask].astype(int)
    return ArmSums(arm, int(mask.sum()), int(i.sum()), int(c.sum()), int((c * c).sum()), int((i * i).sum()),
                   int((c * i).sum()))


def repeats(arms: Arms, n: int, readers: int, aa: bool, rng: np.random.Generator) -> dict:
    covered = right_sign = significant = 0
    truth = 0.0 if aa else arms.true_ctr(arms.worse) - arms.true_ctr("default")
    for r in range(n):
        experiment = Experiment(name=f"sim-{aa}-{r}", arms=[Arm(name="control", profile="default"),
                                                          Arm(name="test", profile="default" if aa else arms.worse)])
        sim = simulate(arms, experiment, readers, rng)
        report = build_report(experiment, {a: sums_of(sim, a) for a in ("control", "test")}, [], [])
        (diff,) = report.differences
        assert diff.ci is not None and diff.diff is not None
        covered += diff.ci[0] <= truth <= diff.ci[1]
        significant += diff.ci[0] > 0 or diff.ci[1] < 0
        right_sign += diff.ci[1] < 0
    return {"repeats": n, "readers": readers, "true_diff": truth, "coverage": covered / n,
            "significant": significant / n, "significant_with_the_right_sign": right_sign / n}


def events_of(sim: Sim, arms: Arms, experiment: Experiment) -> list[dict]:
    profile = {a.name: a.profile for a in experiment.arms}
    events = []
    for r, (seeds, clicked, orders) in enumerate(sim.views):
        arm = sim.arm[r]
        for s, row, order in zip(seeds, clicked, orders):
            listed = arms.shown[profile[arm]][s]
            seed, items = arms.seeds[s], [listed[i] for i in order]
            events.append({"type": "impression", "article_id": seed, "items": items, "arm": arm, "visitor": f"r{r}"})
            events += [{"type": "click", "article_id": seed, "item": items[p], "pos": p + 1, "arm": arm,
                        "visitor": f"r{r}"} for p in np.flatnonzero(row)]
    return events


def record(store: Store, experiments: list[Experiment], events: list[dict]) -> int:
    """Events counted into the store as POST /v1/events does, MAX_EVENTS at a time; rejections."""
    rejected = 0
    for start in range(0, len(events), MAX_EVENTS):
        results = record_events(store, experiments, list(enumerate(events[start:start + MAX_EVENTS])))
        rejected += sum(r.status == "rejected" for r in results)
    return rejected


def through_the_store(engine: Engine, arms: Arms, readers: int, rng: np.random.Generator) -> dict:
    experiment = engine.experiments.start("store-check", [Arm(name="control", profile="default"),
                                                          Arm(name="test", profile=arms.worse)], "visitor")
    sim = simulate(arms, experiment, readers, rng)
    events = events_of(sim, arms, experiment)
    rejected = record(engine.store, [experiment], events)
    stored = experiment_report(engine.store, experiment)
    memory = build_report(experiment, {a: sums_of(sim, a) for a in ("control", "test")}, [], [])
    same = all(a.ctr_ci == b.ctr_ci and a.units == b.units for a, b in zip(stored.arms, memory.arms))
    engine.experiments.stop("store-check")
    return {"events": len(events), "rejected": rejected, "same_report": same,
            "ctr_by_position": {p.pos: round(p.ctr or 0, 4) for p in stored.positions if p.arm == "control"}}


def volume(engine: Engine, arms: Arms, total: int, rng: np.random.Generator) -> dict:
    """`total` events (one click per ten impressions) over 200,000 readers, counted and reported."""
    experiment = engine.experiments.start("volume", [Arm(name="control", profile="default"),
                                                     Arm(name="test", profile=arms.worse)], "visitor")
    before = store_bytes(engine)
    started, done = time.perf_counter(), 0
    while done < total:
        n = min(MAX_EVENTS, total - done)
        readers = rng.integers(0, 200_000, n)
        seeds = rng.integers(0, len(arms.seeds), n)
        batch = []
        for r, s in zip(readers, seeds):
            visitor = f"r{r}"
            arm = experiment.assign(visitor).name
            seed, items = arms.seeds[s], arms.shown["default"][s]
            if rng.random() < 0.1:
                batch.append({"type": "click", "article_id": seed, "item": items[0], "pos": 1, "arm": arm,
                              "visitor": visitor})
            else:
                batch.append({"type": "impression", "article_id": seed, "items": items, "arm": arm,
                              "visitor": visitor})
        record(engine.store, [experiment], batch)
        done += n
        if done % 1_000_000 == 0:
            print(f"  {done:,} events, {time.perf_counter() - started:.0f} s", flush=True)
    ingest_s = time.perf_counter() - started
    started = time.perf_counter()
    report = experiment_report(engine.store, experiment)
    report_s = time.perf_counter() - started
    engine.experiments.stop("volume")
    return {"events": total, "ingest_seconds": round(ingest_s, 1), "events_per_second": round(total / ingest_s),
            "report_seconds": round(report_s, 3), "store_bytes_added": store_bytes(engine) - before,
            "impressions": sum(a.impressions for a in report.arms), "clicks": sum(a.clicks for a in report.arms)}


def scores(engine: Engine, profile: Profile, seeds: list[str], readers: Readers, bias: np.ndarray
           ) -> tuple[np.ndarray, np.ndarray]:
    """Per seed, P@K against the seed's own topic, and the clicks a view of the profile's
    block would get from these readers (each item's chance times its position's bias)."""
    ranker = Engine(engine.settings, profile=profile)
    shown = [(s, [i.id for i in ranker.related(s, k=K)]) for s in seeds]
    topics = readers.topics
    return (np.array([sum(topics[i] == topics[s] for i in ids) / K for s, ids in shown]),
            np.array([float(readers.chance(s, ids) @ bias[:len(ids)]) for s, ids in shown]))


def paired(a: np.ndarray, b: np.ndarray, rng: np.random.Generator) -> dict:
    """mean(a - b) with a 95 % bootstrap interval over the seeds."""
    d = a - b
    means = [d[rng.integers(0, len(d), len(d))].mean() for _ in range(2000)]
    return {"diff": round(float(d.mean()), 5), "ci": [round(float(np.percentile(means, q)), 5) for q in (2.5, 97.5)]}


def learning(engine: Engine, arms: Arms, truth: Readers, readers: int, explore: float, worse_share: float,
             rng: np.random.Generator) -> dict:
    """Clicks of `readers` readers on the two rankings' blocks (`worse_share` of them on the
    worse one's: a site whose ranking disagrees with what its readers want), then a profile
    learned from them on the older 80 % of the articles, with and without the position-bias
    correction (and from relevance weights, and from the truth), and scored on the rest: P@K
    against the topic, and the clicks a view of its block gets from these readers."""
    experiment = engine.experiments.start("learn", [
        Arm(name="control", profile="default", weight=100 * (1 - worse_share)),
        Arm(name="test", profile=arms.worse, weight=100 * worse_share)], "visitor", explore)
    sim = simulate(arms, experiment, readers, rng)
    events = events_of(sim, arms, experiment)
    record(engine.store, [experiment], events)
    engine.experiments.stop("learn")
    held = set(sorted(arms.seeds)[int(len(arms.seeds) * 0.8):])
    state, opts = engine.state(), engine.ranking(k=10)
    out: dict = {"readers": readers, "explore": explore, "worse_share": worse_share, "events": len(events),
                 "true_propensity": [round(float(b), 3) for b in arms.bias]}
    profiles = {"default": Profile(name="default", weights=opts.weights)}

    def learn(name: str, labels: dict[str, dict[str, float]]) -> int:
        """A profile learned from weighted labels on the articles not held out; its groups."""
        train = {s: w for s, w in labels.items() if s not in held}
        groups = tune.groups_for(state, engine.store, {s: set(w) for s, w in train.items()}, opts, engine.embed,
                                 weights=train)
        profiles[name] = Profile(name=name, weights=tune.fit(groups, opts.weights))
        return len(groups)

    for name, debias in (("ips", True), ("naive", False)):
        found = click_labels(engine.store, debias)
        out[f"{name}_learned_on"] = learn(name, found.weights)
        if debias:
            out["estimated_propensity"] = [round(p, 3) for p in found.propensity]
            out["harvested_pairs"] = found.harvested
    learn("exposure", exposure_labels(engine.store, click_labels(engine.store).propensity))
    topics = truth.topics
    learn("oracle", {s: {i: 1.0 for i in topics if topics[i] == topics[s] and i != s} for s in arms.seeds})
    out["held_out_articles"] = len(held)
    out["learned_weights"] = {n: p.weights for n, p in profiles.items() if n != "default"}
    both = {n: scores(engine, p, sorted(held), truth, arms.bias) for n, p in profiles.items()}
    scored = {n: v[0] for n, v in both.items()}
    clicks = {n: v[1] for n, v in both.items()}
    out["precision_at_5"] = {n: round(float(v.mean()), 4) for n, v in scored.items()}
    out["clicks_per_view"] = {n: round(float(v.mean()), 5) for n, v in clicks.items()}
    out["clicks_ips_minus_naive"] = paired(clicks["ips"], clicks["naive"], rng)
    out["clicks_exposure_minus_naive"] = paired(clicks["exposure"], clicks["naive"], rng)
    out["clicks_ips_minus_default"] = paired(clicks["ips"], clicks["default"], rng)
    out["ips_minus_naive"] = paired(scored["ips"], scored["naive"], rng)
    out["ips_minus_default"] = paired(scored["ips"], scored["default"], rng)
    out["exposure_minus_naive"] = paired(scored["exposure"], scored["naive"], rng)
    out["oracle_minus_naive"] = paired(scored["oracle"], scored["naive"], rng)
    return out


def exposure_labels(store: Store, propensity: list[float]) -> dict[str, dict[str, float]]:
    """A third learner's labels, tried beside `tune --clicks`': each clicked item weighted by
    its relevance under a position-based click model, clicks over expected examinations
    (impressions at each position times its propensity), so that an item the worse arm
    showed often does not outweigh one the other arm showed rarely. Mean weight 1."""
    examined: dict[tuple[str, str], float] = {}
    clicks: dict[tuple[str, str], int] = {}
    for seed, item, pos, impressions, clicked in store.event_pairs():
        examined[seed, item] = examined.get((seed, item), 0.0) + impressions * propensity[min(pos, len(propensity)) - 1]
        clicks[seed, item] = clicks.get((seed, item), 0) + clicked
    relevance = {key: c / examined[key] for key, c in clicks.items() if c and examined[key] > 0}
    mean = sum(relevance.values()) / max(len(relevance), 1)
    labels: dict[str, dict[str, float]] = {}
    for (seed, item), value in relevance.items():
        labels.setdefault(seed, {})[item] = value / mean
    return labels


def store_bytes(engine: Engine) -> int:
    engine.store.conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")  # type: ignore[attr-defined]
    return sum(p.stat().st_size for p in engine.settings.data_dir.glob("store.sqlite*"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--moroco", type=Path, default=Path("../shared/data/moroco/moroco-test.jsonl"))
    parser.add_argument("--articles", type=int, default=1000)
    parser.add_argument("--repeats", type=int, default=200)
    parser.add_argument("--readers", type=int, default=4000)
    parser.add_argument("--q-related", type=float, default=0.04)
    parser.add_argument("--q-other", type=float, default=0.01)
    parser.add_argument("--eta", type=float, default=0.7, help="Position bias: position k is looked at with chance 1/k^eta")
    parser.add_argument("--events", type=int, default=10_000_000)
    parser.add_argument("--learn-readers", type=int, default=50_000,
                        help="Readers whose clicks the profiles are learned from (0: skip)")
    parser.add_argument("--worse-share", type=float, default=0.9,
                        help="The learning experiment's share of readers on the worse ranking")
    parser.add_argument("--explore", type=float, default=0.1,
                        help="The learning experiment's share of views with two neighbours swapped")
    parser.add_argument("--block-order", choices=["profile", "date"], default="profile",
                        help="The learning experiment's second arm: the worse profile's lists (profile), or "
                             "the default's, newest first, over MOROCO given random dates (date)")
    parser.add_argument("--timely-days", type=int, default=0, help=(
        "The learning experiment's readers click an item published within this many days of the seed "
        "--timely-boost times as often (0: off; the archive is then given random dates)"))
    parser.add_argument("--timely-boost", type=float, default=3.0)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--out", type=Path, default=Path("eval/results/clicks"))
    args = parser.parse_args()
    rng = np.random.default_rng(args.seed)
    with tempfile.TemporaryDirectory() as tmp:
        engine, topics = archive(args.moroco, args.articles, Path(tmp))
        arms = lists(engine, Readers(topics, args.q_related, args.q_other), args.eta)
        result: dict = {"articles": args.articles, "seeds_with_full_lists": len(arms.seeds),
                        "q_related": args.q_related, "q_other": args.q_other, "eta": args.eta,
                        "true_ctr": {a: round(arms.true_ctr(a), 5) for a in ("default", arms.worse)}}
        print(json.dumps(result), flush=True)
        if args.repeats:
            result["ab"] = repeats(arms, args.repeats, args.readers, False, rng)
            print("A/B", json.dumps(result["ab"]), flush=True)
            result["aa"] = repeats(arms, args.repeats, args.readers, True, rng)
            print("A/A", json.dumps(result["aa"]), flush=True)
            result["through_the_store"] = through_the_store(engine, arms, args.readers // 4, rng)
            print("store", json.dumps(result["through_the_store"]), flush=True)
        if args.learn_readers:
            dated = args.block_order == "date" or args.timely_days > 0
            fresh, _ = archive(args.moroco, args.articles, Path(tmp) / "learn", dated=dated)
            when = {info.id: info.published_at for info in fresh.state().infos.values() if info.published_at}
            truth = Readers(topics, args.q_related, args.q_other, when, args.timely_days, args.timely_boost)
            fresh_arms = lists(fresh, truth, args.eta)
            if args.block_order == "date":
                fresh_arms = newest_first(fresh, fresh_arms)
            result["learning"] = learning(fresh, fresh_arms, truth, args.learn_readers, args.explore,
                                          args.worse_share, rng)
            print("learning", json.dumps(result["learning"]), flush=True)
        if args.events:
            result["volume"] = volume(engine, arms, args.events, rng)
            print("volume", json.dumps(result["volume"]), flush=True)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.json").write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
