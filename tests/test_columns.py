from datetime import datetime, timezone

import numpy as np

from recommender.index.columns import ABSENT, RowMap, content_code
from recommender.index.infos import InfoTable
from recommender.store.articles import Article, ArticleInfo
from tests.conftest import STORY_ARTICLES, article


def test_a_row_map_finds_each_num_s_row_and_nothing_else():
    rng = np.random.default_rng(1)
    nums = rng.choice(5000, size=700, replace=False)
    rows = rng.permutation(700)
    oracle = dict(zip(nums.tolist(), rows.tolist()))
    asked = np.concatenate([np.arange(-3, 5010), [2**40]])
    expected = [oracle.get(n, ABSENT) for n in asked.tolist()]
    assert RowMap(nums, rows).rows(asked).tolist() == expected
    assert RowMap(np.zeros(0, dtype=np.int64)).rows(np.array([0, 5])).tolist() == [ABSENT, ABSENT]


def check_columns(state):
    """Every column agrees with the article it stands for, and no other num is present."""
    columns = state.columns
    present = np.flatnonzero(columns.present).tolist()
    assert present == sorted(state.infos)
    for num, info in state.infos.items():
        when = info.published_at.timestamp() if info.published_at else np.nan
        np.testing.assert_equal(columns.when[num], when)
        assert columns.section[num] == columns.section_code(info.section_key)
        assert columns.title[num] == info.title_key and columns.content[num] == content_code(info.content_hash)


def test_the_columns_follow_writes_and_deletes_and_a_clone_keeps_its_own(engine, stories):
    engine.ingest([str(stories)])
    state = engine.state()
    check_columns(state)
    before = {name: getattr(state.columns, name).copy() for name in state.columns.NAMES}
    writer = state.clone()
    engine.upsert([Article(**a) for a in (article("ukr-2", "Alt titlu despre Istanbul", "Alt text.", "2024-01-01T00:00:00+00:00",
                           section="Politică"),
                   article("nou", "Un articol nou", "Text nou.", None))])
    engine.delete(["fot-1"])
    engine.indexes.catch_up(writer)
    check_columns(writer)
    assert "fot-1" not in writer.by_id and writer.columns.section_code("politica") > 0
    for name, values in before.items():  # the readers' state did not move
        np.testing.assert_array_equal(getattr(state.columns, name), values)
    check_columns(state)
    assert len(state.infos) == len(STORY_ARTICLES)


def test_a_restart_builds_the_same_columns_from_the_store(engine, stories, settings, embedder):
    from recommender.serving.engine import Engine

    engine.ingest([str(stories)])
    engine.delete_and_sync(["vac-1"])
    reopened = Engine(settings, embedder=embedder).state()
    check_columns(reopened)
    assert not reopened.columns.has(np.array([engine.state().by_id["ukr-1"] + 1000, -1])).any()


def _info(num: int, rng) -> ArticleInfo:
    when = datetime.fromtimestamp(int(rng.integers(1e9, 1.8e9)) + rng.integers(0, 10**6) / 1e6, timezone.utc)
    return ArticleInfo(num, f"id-{num}-{rng.integers(3)}", f"Titlu „{num}” şi ţară", f"https://x.ro/{num}" if num % 3 else None,
                       when if num % 5 else None, "Politică" if num % 2 else None, "ro", f"{num:064x}",
                       ("un", "doi") if num % 4 == 0 else (), bool(num % 7), None if num % 6 else "https://x.ro/i.jpg")


def test_the_info_table_answers_as_a_dictionary_through_writes_folds_and_clones():
    """A random history of sets and deletes, folded at a small threshold, against a plain dict
    (and a clone taken midway, against a copy of the dict then)."""
    rng = np.random.default_rng(7)
    table, oracle = InfoTable(), {}
    frozen = None
    for step in range(3000):
        num = int(rng.integers(0, 400))
        if rng.random() < 0.25:
            assert (table.pop(num, None) is None) == (oracle.pop(num, None) is None)
        else:
            table[num] = oracle[num] = _info(num, rng)
        table.maybe_fold(at=97)
        if step == 1500:
            frozen, frozen_oracle = table.clone(), dict(oracle)
    for view, expected in ((table, oracle), (frozen, frozen_oracle)):
        assert sorted(view) == sorted(expected) and len(view) == len(expected)
        assert all(view[n] == info and (view[n].section_key, view[n].title_key) == (info.section_key, info.title_key)
                   for n, info in expected.items())
        assert {aid: view.ids[aid] for aid in view.ids} == {info.id: n for n, info in expected.items()}
        for num in range(-2, 402):
            assert (num in view) == (num in expected)
            assert view.ids.get(f"id-{num}-0") == next((n for n, i in expected.items() if i.id == f"id-{num}-0"), None)
        assert "nobody" not in view.ids and None not in view and "3" not in view
