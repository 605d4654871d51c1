"""Detokenizers reproduce the reference rules (sedd_reference.md §6.2) on examples of each rule."""
import pytest

from sedd_jax.data import detokenizers as dt


@pytest.mark.parametrize("text, expected", [
    ("the players ' union", "the players' union"),            # "s '" -> "s'"
    ("a well @-@ known fact", "a well-known fact"),            # " @-@ " -> "-"
    ("1 @,@ 000 people", "1,000 people"),                      # " @,@ " -> ","
    ("3 @.@ 5 m", "3.5 m"),                                    # " @.@ " -> "."
    ("Note : one ; two . Three ! Four ? Five , six",
     "Note: one; two. Three! Four? Five, six"),               # space before punctuation
    ("a ( b c ) [ d ] { e }", "a (b c) [d] {e}"),             # inside brackets
    ('he said " yes " .', 'he said "yes" .'),                 # inside double quotes
    ("= = = = Sub = = = =", "==== Sub ===="),
    ("= = = Section = = =", "=== Section ==="),
    ("= = Heading = =", "== Heading =="),
    ("20 \N{DEGREE SIGN} C", "20\N{DEGREE SIGN}C"),
    ("end \nstart", "end\nstart"),
    ("end\n start", "end\nstart"),
    ("about N people", "about 1 people"),
    ("the company 's product", "the company's product"),
    ("the ' 90s", "the ' 90s"),                               # the slashed regex is a no-op
    ("/' 5/", "/'[0-9]/"),                                     # ... except on its literal text
])
def test_wt_detokenizer(text, expected):
    assert dt.wt_detokenizer(text) == expected


def test_wt_detokenizer_rule_order():
    # single quotes are tightened after "s '" has been joined: "s '" first, then the quote regex
    assert dt.wt_detokenizer("' the kings ' crown '") == "'the kings' crown '"
    # " , " is replaced before " 's"
    assert dt.wt_detokenizer(" , 's") == ",'s"


@pytest.mark.parametrize("text, expected", [
    ("the company 's stock", "the company's stock"),
    ("the players ' union", "the players' union"),
    ("it does n't matter", "it doesn't matter"),
    ("line \n next", "line\nnext"),
    ("a\\/b", "a/b"),
    ("rose N N N points", "rose 1 1 1 points"),               # repeated: overlapping matches
    ("costs $ N million", "costs $1 million"),
    ("ranked # N here", "ranked #1 here"),
    ("the <unk> company", "the ? company"),
])
def test_ptb_detokenizer(text, expected):
    assert dt.ptb_detokenizer(text) == expected


@pytest.mark.parametrize("text, expected", [
    ("see http : / / example.com now", "see http://example.com now"),
    ("see https : / / example.com now", "see https://example.com now"),
    ("I 'm here", "I'm here"),
    ("He left . Then", "He left. Then"),
    ("He left .", "He left."),
    ("Why ? Because", "Why? Because"),
    ("Why ?", "Why?"),
    ("Wow ! Nice", "Wow! Nice"),
    ("Wow !", "Wow!"),
    ("a , b : c ; d / e", "a, b: c; d/e"),
    ('he said " hello there " today', 'he said "hello there" today'),
    ("the ( big ) and [ small ] one", "the (big) and [small] one"),
    ("costs $ 5 or £ 4", "costs $5 or £4"),
])
def test_lm1b_detokenizer(text, expected):
    assert dt.lm1b_detokenizer(text) == expected


def test_lambada_detokenizer():
    text = "  \N{LEFT DOUBLE QUOTATION MARK}Hi,\N{RIGHT DOUBLE QUOTATION MARK} she said.  "
    assert dt.lambada_detokenizer(text) == '\n"Hi," she said.'


def test_scientific_papers_detokenizer_is_wikitext_then_lm1b():
    """MDLM's `scientific_papers_detokenizer` (PubMed / ArXiv): wt_detokenizer, then lm1b_detokenizer."""
    text = "the cell @-@ cycle ( g1 ) , see http : / / x.org . It 's done ."
    assert dt.scientific_papers_detokenizer(text) == "the cell-cycle (g1), see http:// x.org. It's done."
    assert dt.DETOKENIZERS["scientific_papers"] is dt.scientific_papers_detokenizer
    for example in (text, "= = Methods = =\n we used N = 5 mice .", "I 'm here , ok ?"):
        assert dt.scientific_papers_detokenizer(example) == dt.lm1b_detokenizer(dt.wt_detokenizer(example))
