"""Turn MOROCO (id, text, topic, dialect) into the engine's JSONL.

    python eval/prepare_moroco.py ../shared/data/moroco/moroco-test.jsonl eval/data/moroco.jsonl

The dataset's authors replaced named entities with `$NE$`; the token is
stripped. MOROCO has no titles: the first sentence becomes the title and the
rest the body, so the text the model reads is the whole article. It has no
dates either, so the time prior has no effect on it. The output is not
committed (CC BY-NC-SA: evaluation use only).
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

NE = re.compile(r"\s*\$NE\$\s*")
SPACES = re.compile(r"\s+")
TITLE_MAX_WORDS = 20


def convert(record: dict) -> dict:
    text = SPACES.sub(" ", NE.sub(" ", record["text"])).strip()
    first, sep, rest = text.partition(" . ")
    words = first.split()
    title = " ".join(words[:TITLE_MAX_WORDS])
    body = (" ".join(words[TITLE_MAX_WORDS:]) + " " + rest).strip() if sep or len(words) > TITLE_MAX_WORDS else ""
    return {"id": record["id"], "title": title or record["id"], "body": body,
            "topic": record["topic"], "dialect": record.get("dialect")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("source", type=Path)
    parser.add_argument("target", type=Path)
    args = parser.parse_args()
    args.target.parent.mkdir(parents=True, exist_ok=True)
    with args.source.open(encoding="utf-8") as src, args.target.open("w", encoding="utf-8") as out:
        count = 0
        for line in src:
            if line.strip():
                out.write(json.dumps(convert(json.loads(line)), ensure_ascii=False) + "\n")
                count += 1
    print(f"wrote {count} articles to {args.target}")


if __name__ == "__main__":
    main()
