import unicodedata

from recommender.text.normalize import clean_text, fold, normalize, strip_boilerplate, terms

PAGE_TEXT = """Prima pagină » Știri » Externe
Convorbiri între miniștrii de externe
Convorbiri între miniștrii de externe
Miniștrii de externe au discutat o oră despre armistițiu, prizonieri și securitatea Mării Negre, au confirmat ambele ministere.
Recomandarea video
Imagini de la reuniune
Citește și
Turism Express
Cât costă o vacanță all inclusive în Grecia
Showbiz Azi
Fotografiile cu care o vedetă TV și-a surprins fanii
"""

PAGE_HTML = """<html><head><title>x</title><script>var a = "Citește și";</script></head><body>
<nav>Prima pagină » Știri » Externe</nav><h1>Convorbiri</h1><h2>Convorbiri</h2>
<p>Miniștrii de externe au discutat despre armistițiu și prizonieri.</p>
<p>A doua propoziție a articolului, cu <b>ş</b> și <i>ţ</i> cu sedilă.</p>
<div class="video"><h3>Recomandarea video</h3><p>Imagini de la reuniune</p></div>
<div><h3>Citeste si:</h3><ul><li><span>Quiz Zilnic</span><a href="#">Test de cultură generală</a></li></ul></div>
</body></html>"""


def test_cedilla_becomes_comma_below_and_nfc():
    assert normalize("Şcoala ţării, şi Ţara") == "Școala țării, și Țara"
    decomposed = unicodedata.normalize("NFD", "ăâî")
    assert normalize(decomposed) == "ăâî"


def test_fold_makes_diacritics_optional():
    assert fold("Ședința Guvernului") == fold("sedinta guvernului") == fold("Şedinţa guvernului") == "sedinta guvernului"


def test_terms_match_text_typed_without_diacritics():
    assert terms("Ședința guvernului despre războiul din Ucraina") == terms("sedinta guvernului despre razboiul din ucraina")
    assert terms("ministrul") == terms("ministrului")  # stemmed: inflections meet


def test_boilerplate_blocks_and_repeated_headline_are_dropped():
    text = strip_boilerplate(PAGE_TEXT, title="Convorbiri între miniștrii de externe")
    assert "securitatea Mării Negre" in text
    for noise in ("Prima pagină", "Recomandarea video", "Imagini de la reuniune", "Citește și",
                  "Turism Express", "vacanță", "vedetă", "Convorbiri între"):
        assert noise not in text, noise


def test_inline_read_also_line_is_dropped_but_next_paragraph_kept():
    body = "Primul paragraf al articolului.\nCITEȘTE ȘI: Alt titlu de articol\nAl doilea paragraf rămâne în text."
    assert clean_text(body) == "Primul paragraf al articolului.\nAl doilea paragraf rămâne în text."


def test_long_paragraph_after_a_block_ends_the_block():
    body = "Vezi și\nUn titlu scurt\n" + "Acesta este un paragraf lung al articolului " * 3 + "care trebuie păstrat."
    assert clean_text(body).startswith("Acesta este un paragraf lung")


def test_html_page_becomes_article_text():
    text = clean_text(PAGE_HTML, title="Convorbiri")
    assert text.splitlines()[0] == "Miniștrii de externe au discutat despre armistițiu și prizonieri."
    assert "ș și ț cu sedilă" in text.replace("\n", " ")
    for noise in ("var a", "Prima pagină", "Recomandarea video", "Quiz Zilnic", "Test de cultură"):
        assert noise not in text, noise


def test_plain_text_with_angle_brackets_is_not_parsed_as_html():
    assert clean_text("Inflația a fost < 5% iar dobânda > 6%") == "Inflația a fost < 5% iar dobânda > 6%"


def test_empty_body():
    assert clean_text("") == "" and clean_text(None) == ""


def test_html_block_with_whitespace_between_label_and_links_is_dropped():
    html = """<p>Primul paragraf al articolului, destul de lung ca să fie text.</p>
    <div class="rel"><h3>Citește și</h3>

      <ul>
        <li><span>Turism Express</span> <a href="/1">Cât costă o vacanță în Grecia</a></li>
      </ul></div>"""
    assert clean_text(html) == "Primul paragraf al articolului, destul de lung ca să fie text."


def test_link_only_teaser_paragraph_is_dropped():
    html = '<p class="teaser"><a href="/x">Alt articol despre altceva</a></p><p>Textul articolului, cu un <a href="/y">link</a> în el.</p>'
    assert clean_text(html) == "Textul articolului, cu un link în el."


def test_stems_come_from_the_c_stemmer_and_match_the_pure_python_one():
    """PyStemmer is 40x faster at a first import; it must stem exactly as the pure-Python
    Snowball stemmer did, or an archive indexed with one would not match queries of the other."""
    from snowballstemmer.romanian_stemmer import RomanianStemmer

    from recommender.text.normalize import _stemmer

    assert type(_stemmer()).__module__ == "Stemmer"
    words = fold(normalize("Guvernul a aprobat bugetul; învățătorii protestează, inundațiile au afectat "
                           "localitățile, ministerele negociază prețurile energiei și facturile românilor")).split()
    words = [w.strip(";,") for w in words]
    assert _stemmer().stemWords(words) == [RomanianStemmer().stemWord(w) for w in words]
    assert terms("învățătorii protestează") == ["invat", "protesteaz"]
