"""Turn the Ziarul Financiar archive (editors' "related" links) into the engine's JSONL.

    python eval/prepare_zf.py PARQUET_DIR eval/data/zf-dev.jsonl [--test-out eval/data/zf-2022.jsonl]
    python eval/prepare_zf.py PARQUET_DIR eval/data/zf-2020-2021.jsonl --from-year 2020
    recommender eval eval/data/zf-2020-2021.jsonl --since 2021-01-01 --past-only --k 10

PARQUET_DIR holds the `datasets/*.parquet` files of the public repository
mhakan20/RomanianNewsArticlesDataset (one per section and year, 2013-2022;
columns href, title, article_text, date_published, article_section,
rec_hrefs). Articles are de-duplicated by href (the last copy wins); the id
is the number at the end of the href; `related` holds the ids of the page's
related links that are in the same output file.

The development file holds 2013-2021 only. 2022 is the reserved test period:
it is written only with --test-out, to its own file (with 2020-2021 as the
pool its queries link back to), and is never used to tune. Needs pyarrow (`pip install pyarrow`). The output is not committed: no
licence is stated, evaluation use only.
"""

from __future__ import annotations

import argparse
import glob
import json
import re
from pathlib import Path

TEST_YEAR = "2022"
_ID = re.compile(r"-(\d+)/?$")
BASE_URL = "https://www.zf.ro"


def read_archive(directory: Path) -> dict[str, dict]:
    """href -> row, every parquet file of the directory, the last copy of an href winning."""
    import pyarrow.parquet as pq

    rows: dict[str, dict] = {}
    files = sorted(glob.glob(str(directory / "*.parquet")))
    if not files:
        raise SystemExit(f"no .parquet files in {directory}")
    for path in files:
        for row in pq.read_table(path).to_pylist():
            if row.get("href") and _ID.search(row["href"]):
                rows[row["href"]] = row
    return rows


def zf_id(href: str) -> str:
    """The article number ZF ends its URLs with (read_archive keeps only rows that have one)."""
    match = _ID.search(href)
    if match is None:
        raise ValueError(f"no article number at the end of {href}")
    return match.group(1)


def convert(row: dict, ids_by_href: dict[str, str]) -> dict:
    links = row.get("rec_hrefs") or []
    related = [ids_by_href[h] for h in links if h in ids_by_href and ids_by_href[h] != ids_by_href[row["href"]]]
    return {"id": ids_by_href[row["href"]], "title": (row.get("title") or row.get("headline") or "").strip(),
            "body": row.get("article_text") or "", "url": BASE_URL + row["href"],
            "published_at": row.get("date_published"), "section": row.get("article_section"),
            "related": list(dict.fromkeys(related))}


def write(path: Path, rows: list[dict]) -> int:
    path.parent.mkdir(parents=True, exist_ok=True)
    ids = {r["href"]: zf_id(r["href"]) for r in rows}
    written = 0
    with path.open("w", encoding="utf-8") as out:
        for row in rows:
            record = convert(row, ids)
            if record["title"]:
                out.write(json.dumps(record, ensure_ascii=False) + "\n")
                written += 1
    return written


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("parquet_dir", type=Path)
    parser.add_argument("out", type=Path, help="the development file: 2013-2021")
    parser.add_argument("--from-year", default="2013",
                        help="first year of the development file; 2020 gives the realistic split's pool (2020-2021)")
    parser.add_argument("--test-out", type=Path, default=None,
                        help="the reserved test file: 2022 queries and their 2020-2021 pool (never tune on it)")
    args = parser.parse_args()
    rows = sorted(read_archive(args.parquet_dir).values(), key=lambda r: (r.get("date_published") or "", r["href"]))
    dev = [r for r in rows if args.from_year <= (r.get("date_published") or "")[:4] < TEST_YEAR]
    print(f"wrote {write(args.out, dev)} articles of {args.from_year}-2021 to {args.out}")
    if args.test_out:  # 2022 queries with the two years before them as their pool, like the dev split
        test = [r for r in rows if (r.get("date_published") or "")[:4] >= str(int(TEST_YEAR) - 2)]
        print(f"wrote {write(args.test_out, test)} articles of 2020-2022 to {args.test_out} "
              "(2022 is reserved: do not tune on it, score it with --since 2022-01-01 only)")


if __name__ == "__main__":
    main()
