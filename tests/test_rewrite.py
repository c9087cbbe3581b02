"""The page rewrite: one list per page, every other byte kept, no page it can break."""

from dataclasses import dataclass

import html5lib
import pytest
from hypothesis import HealthCheck, given
from hypothesis import settings as hsettings
from hypothesis import strategies as st

from recommender.text.markup import MAX_DEPTH, Cancelled, TooDeep
from recommender.text.normalize import RELATED_LABELS, is_related_label, strip_boilerplate
from recommender.text.rewrite import plan_rewrite, rewrite


@dataclass
class Item:
    title: str
    url: str


def suggest(n):
    return [Item(f"Sugestia {i}", f"https://nou.ro/{i}") for i in range(1, n + 1)]


def render_list(items):
    return "<aside>" + "".join(f'<a href="{i.url}">{i.title}</a>' for i in items) + "</aside>"


def render_link(item):
    return f'<a href="{item.url}">{item.title}</a>'


def run(page):
    return rewrite(page, suggest, render_list, render_link)


END_BLOCK = """<div class="citeste-si"><h3>Citește și</h3><ul>
<li><span>Turism Express</span><a href="https://p.example/1">Cât costă o vacanță</a></li>
<li><span>Showbiz Azi</span><a href="https://p.example/2">Fotografiile unei vedete</a></li>
</ul></div>"""


def test_one_list_per_page_and_no_suggestion_twice():
    page = (f"<body><p>Primul paragraf.</p><p><strong>CITEȘTE ȘI:</strong> <a href='/vechi'>Ceva vechi</a></p>"
            f"<p>Al doilea paragraf.</p>{END_BLOCK}</body>")
    out, replaced = run(page)
    assert replaced == 2 and out.count("<aside>") == 1
    assert "<p><strong>CITEȘTE ȘI:</strong> <a href=\"https://nou.ro/6\">Sugestia 6</a></p>" in out
    links = [f"https://nou.ro/{i}" for i in range(1, 7)]
    assert all(out.count(link + '"') == 1 for link in links), "every suggestion once"
    assert "Ceva vechi" not in out and "p.example" not in out


def test_a_teaser_with_nothing_left_to_suggest_is_removed():
    page = "<p>Text.</p><p>Citește și: <a href='/a'>A</a></p><p>Mai mult text.</p>"
    out, _ = rewrite(page, lambda n: [], render_list, render_link)
    assert out == "<p>Text.</p><p>Mai mult text.</p>"


def test_every_byte_outside_the_block_is_kept():
    head = ('<!DOCTYPE html>\n<HTML lang=ro>\n  <head><meta charset="utf-8"><title>T &raquo; X</title></head>\n'
            '  <BODY>\n    <P class="a"  id=b>Un&nbsp;paragraf<br>cu rând nou &amp; entități.</P>\n')
    tail = '\n    <footer data-x=\'1\'   class=f>Contact &copy; 2025</footer>\n  </BODY>\n</HTML>\n'
    out, replaced = run(head + END_BLOCK + tail)
    assert replaced == 1 and out == head + render_list(suggest(5)) + tail


def test_a_loose_label_takes_only_itself_and_its_links():
    page = "<body><p>Article…</p>Citește și: <a href=/y>Y</a><footer>F</footer></body>"
    out, _ = run(page)
    assert out == "<body><p>Article…</p>Citește și: <a href=\"https://nou.ro/1\">Sugestia 1</a><footer>F</footer></body>"
    inside = "<div class=content><p>Unu.</p><p>Doi.</p>Citește și <a href=/y>Y</a> <a href=/z>Z</a><p>Trei.</p></div>"
    out, _ = run(inside)
    assert out == f"<div class=content><p>Unu.</p><p>Doi.</p>{render_list(suggest(5))}<p>Trei.</p></div>"


def test_legacy_ad_code_is_left_whole():
    script = "<script><!--document.write('<script src=\"https://ads.ro/a.js\"></script>');//--></script>"
    page = f"<body>{script}<p>Text.</p>{END_BLOCK}<p>După.</p></body>"
    out, _ = run(page)
    assert out == f"<body>{script}<p>Text.</p>{render_list(suggest(5))}<p>După.</p></body>"


@pytest.mark.parametrize("page", [
    '<p>Citește și:</p><p><a href="/a">A</a></p><p>Citește și: <a href="/b">B</a></p>',
    "<div><h3>Citește și</h3><ul><li><a href=/a>A</a></li></ul><h3>Vezi și</h3><ul><li><a href=/b>B</a></li></ul></div>",
])
def test_two_labels_in_one_block_never_fail_and_leave_one_list(page):
    out, replaced = run(page)
    assert replaced >= 1 and out.count("<aside>") == 1
    assert not any(old in out for old in ('href="/a"', "href=/a>", 'href="/b"', "href=/b>"))


def test_the_first_of_duplicate_attributes_stays_what_browsers_see():
    page = ('<p><a href="https://ok.ro/" href="javascript:alert(1)">ok</a></p><img onerror="" onerror="alert(2)">'
            f"{END_BLOCK}")
    out, _ = run(page)
    assert out.startswith('<p><a href="https://ok.ro/" href="javascript:alert(1)">ok</a></p>'
                          '<img onerror="" onerror="alert(2)">')
    assert _dangerous(out) == _dangerous(page)


def test_nesting_past_the_limit_is_refused_at_once():
    deep = "<div>" * 20_000 + "Citește și <a href=/x>x</a>" + "</div>" * 20_000
    with pytest.raises(TooDeep):
        run(deep)
    fine = "<div>" * (MAX_DEPTH - 5) + "<p>Citește și <a href=/x>x</a> <a href=/y>y</a></p>" + "</div>" * (MAX_DEPTH - 5)
    assert run(fine)[1] == 1


def test_a_cancelled_rewrite_stops():
    with pytest.raises(Cancelled):
        rewrite("<p>x</p>" * 100_000 + END_BLOCK, suggest, render_list, render_link, cancelled=lambda: True)


@pytest.mark.parametrize("label", ["Recomandări", "Articole similare", "Pe aceeași temă", "Te-ar putea interesa",
                                   "VA RECOMANDAM:", "Citiți și"])
def test_every_label_of_the_shared_list_opens_a_block(label):
    out, replaced = run(f"<p>Text.</p><h2>{label}</h2><ul><li><a href=/a>A</a></li><li><a href=/b>B</a></li></ul>")
    assert replaced == 1 and out == f"<p>Text.</p>{render_list(suggest(5))}"


def test_a_linked_heading_takes_its_links_with_it():
    page = "<h3><a href=/tag/citeste>Citește și</a></h3><ul><li><a href=/a>A</a></li></ul><p>Final.</p>"
    assert run(page)[0] == f"{render_list(suggest(5))}<p>Final.</p>"


@pytest.mark.parametrize("wrapper", [
    "<textarea>{}</textarea>", "<template>{}</template>", "<iframe src=/x>{}</iframe>", "<noscript>{}</noscript>",
    "<!-- {} -->", "<script>var s = '{}';</script>", "<style>/* {} */</style>", "<title>{}</title>",
])
def test_nothing_is_touched_where_the_browser_is_inert(wrapper):
    page = "<p>Text.</p>" + wrapper.format(END_BLOCK) + "<p>Final.</p>"
    assert run(page) == (page, 0)


def test_the_rewrite_and_ingest_share_one_list_of_labels():
    for label in RELATED_LABELS:
        assert is_related_label(label) and is_related_label(label.upper() + ":")
        assert strip_boilerplate(f"Text.\n{label}\nUn titlu\nAlt titlu\n\nFinal.") == "Text.\nFinal."


# --- properties over generated pages ---------------------------------------------------------

FRAGMENTS = [
    "<p>", "</p>", "<div>", "</div>", "<ul>", "<li>", "</ul>", "<h3>", "</h3>", "<br>", "<b>", "</b>", "text ",
    "Citește și", "Citeste si:", "Vezi și ", "Recomandări", "<a href='/a'>", "<a href=\"https://x.ro/b\">", "</a>",
    "<a href=javascript:alert(1)>", "<img src=x onerror=alert(3)>", "<script>alert(4)</script>",
    "<script><!--document.write('<script></script>')//--></script>", "<textarea>", "</textarea>", "<!--", "-->",
    "&nbsp;", "&raquo;", "<", ">", "'", '"', "=", "<template>", "</template>", "<a href='/c' href='javascript:x'>",
    "<!-->", "<!--->", "--!>", "--->", "<xmp>", "</xmp>",  # the standard's other comment ends, and raw text
]


def _dangerous(page: str) -> list:
    """What a browser would run or follow: scripts, event handlers, non-http(s) URLs."""
    found = []
    for element in html5lib.parse(page, namespaceHTMLElements=False).iter():
        if element.tag == "script":
            found.append(("script", element.text))
        for name, value in element.attrib.items():
            if name.startswith("on"):
                found.append((name, value))
            elif name in ("href", "src") and not value.strip().lower().startswith(("http:", "https:", "/")):
                found.append((name, value))
    return sorted(found, key=repr)


@hsettings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.sampled_from(FRAGMENTS), max_size=40).map("".join))
def test_generated_pages_keep_their_bytes_and_gain_nothing_dangerous(page):
    plan = plan_rewrite(page, suggest, render_list, render_link)
    out, replaced = run(page)
    # the output is the input with the planned ranges, and only those, replaced ...
    assert out == plan.apply(page) and replaced == len(plan.replacements)
    pos = 0
    for start, end, _ in plan.replacements:
        assert pos <= start <= end
        pos = end
        # ... and each range is a block: a label and at least one link, nothing else
        block = page[start:end]
        assert "<a" in block and any(is_related_label(w) for w in _texts(block))
    if not plan.replacements:
        assert out == page
    assert set(_dangerous(out)) <= set(_dangerous(page))


def _texts(fragment: str) -> list[str]:
    import html
    import re

    return [html.unescape(t) for t in re.split(r"<[^>]*>", fragment) if t.strip()]


def test_a_comment_ended_the_way_browsers_end_it_hides_no_opener():
    """The standard ends a comment at `<!-->`, `<!--->` and `--!>` too: a tokenizer
    waiting for `-->` took the `<textarea>` after one for a comment and removed it
    with the block, and the inert text after it became a live <img onerror>."""
    page = ("<article><h1>Convorbiri</h1><div><h3>Citește și</h3><ul><li><a href='https://x.ro/a'>A</a></li>"
            "<li><a href='https://x.ro/b'>B</a>{end}<textarea>--></li></ul></div>\n"
            "<img src=x onerror=alert(document.domain)>\n</textarea></article>")
    for end in ("<!-->", "<!--->", "<!-- x --!>"):
        out, _ = run(page.format(end=end))
        assert _dangerous(out) == [] == _dangerous(page.format(end=end))


COMMENT_BYTES = st.lists(st.sampled_from(["-", "!", ">", " ", "<", "<!--", "x"]), max_size=12).map("".join)


@hsettings(max_examples=500, deadline=None)
@given(COMMENT_BYTES)
def test_comments_end_where_html5lib_ends_them(inside):
    from recommender.text.markup import Element, parse

    page = f"<p><!--{inside}<b>x</b></p>"
    ours = any(isinstance(node, Element) and node.tag == "b" for node in parse(page).iter())
    theirs = any(e.tag == "b" for e in html5lib.parse(page, namespaceHTMLElements=False).iter())
    assert ours == theirs, page


def test_the_sites_own_item_markup_stays_inert_with_hostile_fields():
    from recommender.text.rewrite import block_shape, find_blocks

    page = ('<div class="rel" id="r"><h4>Citește și</h4><ul><li class="i"><a class="l" href="https://a.ro/1">Unu</a>'
            '</li><li class="i"><a class="l" href="https://a.ro/2">Doi</a></li></ul></div>')
    (block,) = find_blocks(page)
    shape = block_shape(page, block)
    assert shape is not None
    hostile = [('</a><script>alert(1)</script>"\'<img src=x onerror=alert(2)>', 'https://x.ro/?a="><script>'),
               ("Fără link", None)]
    tree = html5lib.parse(shape.render(hostile), namespaceHTMLElements=False)
    assert tree.findall(".//script") == [] and tree.findall(".//img") == []
    links = tree.findall(".//a")
    assert [a.get("href") for a in links] == ['https://x.ro/?a="><script>']
    assert links[0].text == hostile[0][0] and links[0].get("class") == "l"
    assert [li.get("class") for li in tree.findall(".//li")] == ["i", "i"]
    assert tree.find(".//div").get("id") == "r"
