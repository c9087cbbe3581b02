"""How long the page rewrite takes on large pages (issue: a 1 MB page in under 0.5 s).

    python eval/bench_rewrite.py --sizes 100000 1000000 2000000 --repeat 5

Builds a news page of the given size (paragraphs, inline teasers, nested
layout, scripts with legacy ad code, the end-of-article "Citește și" block),
then times `rewrite` alone (no ranking: suggestions are made up), and a page
nested to the depth limit. Prints the median of --repeat runs, beside the time
html5lib takes only to parse the same page: a lower bound of what a rewrite on a
spec-complete parser would cost. (Its tokenizer alone is not enough: the tree
builder is what switches it into the RCDATA, raw text and script states, and
neither reports source offsets, which a rewrite that keeps every other byte needs.)
"""

from __future__ import annotations

import argparse
import statistics
import time
from dataclasses import dataclass

from recommender.text.markup import MAX_DEPTH
from recommender.text.rewrite import rewrite

PARAGRAPH = ("<p>Guvernul a aprobat ieri bugetul pentru anul viitor, cu un deficit de 3,5&nbsp;% din PIB, "
             "după o ședință care a durat până seara &raquo; <a href=\"/eticheta/buget\">buget</a>.</p>\n")
TEASER = "<p><strong>CITEȘTE ȘI:</strong> <a href=\"/vechi\">Un articol mai vechi</a></p>\n"
SCRIPT = "<script><!--document.write('<script src=\"https://ads.example/a.js\"></script>');//--></script>\n"
LAYOUT = "<div class=\"row\"><div class=\"col\"><section>{}</section></div></div>\n"
END = ("<div class=\"citeste-si\"><h3>Citește și</h3><ul>"
       + "".join(f"<li><span>Sursa {i}</span><a href=\"https://p.example/{i}\">Titlu {i}</a></li>" for i in range(8))
       + "</ul></div>\n")


@dataclass
class Item:
    title: str
    url: str


def page_of(size: int) -> str:
    parts, total, n = [], 0, 0
    while total < size:
        chunk = LAYOUT.format(PARAGRAPH * 5 + (TEASER if n % 20 == 0 else "") + (SCRIPT if n % 7 == 0 else ""))
        parts.append(chunk)
        total += len(chunk)
        n += 1
    return "<html><body><article>" + "".join(parts) + END + "</article></body></html>"


def timed(page: str, repeat: int) -> tuple[float, int]:
    times, replaced = [], 0
    for _ in range(repeat):
        started = time.perf_counter()
        _, replaced = rewrite(page, lambda n: [Item(f"T{i}", f"https://x.ro/{i}") for i in range(n)],
                              lambda items: "<aside>" + "".join(i.title for i in items) + "</aside>",
                              lambda item: f"<a href=\"{item.url}\">{item.title}</a>")
        times.append(time.perf_counter() - started)
    return statistics.median(times), replaced


def html5lib_parse(page: str, repeat: int) -> float:
    import html5lib

    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        html5lib.parse(page)
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[100_000, 1_000_000, 2_000_000])
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    print("| page | blocks replaced | rewrite, median s | html5lib.parse alone, median s | ratio |")
    print("|---|---|---|---|---|")
    for size in args.sizes:
        page = page_of(size)
        seconds, replaced = timed(page, args.repeat)
        parsed = html5lib_parse(page, args.repeat)
        print(f"| {len(page) / 1e6:.2f} MB | {replaced} | {seconds:.3f} | {parsed:.3f} | {parsed / seconds:.1f} |")
    deep = "<div>" * (MAX_DEPTH - 10) + PARAGRAPH * 2000 + END + "</div>" * (MAX_DEPTH - 10)
    seconds, replaced = timed(deep, args.repeat)
    print(f"| {len(deep) / 1e6:.2f} MB nested {MAX_DEPTH - 10} deep | {replaced} | {seconds:.3f} |")


if __name__ == "__main__":
    main()
