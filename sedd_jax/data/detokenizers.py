"""Detokenizers: undo the tokenised spacing of evaluation corpora before re-tokenising them.

Each function maps one example (a line or a sentence) to a string, applying the reference's rules
(sedd_reference.md §6.2) in the reference's order. The rules are written here as ordered tables of
(literal replacement | regex substitution) so that the order is visible and testable.

  wt_detokenizer      WikiText-2 / WikiText-103 ("@-@" separators, spaced punctuation, headings)
  ptb_detokenizer     Penn Treebank ("n't", "<unk>", "N" for numbers)
  lm1b_detokenizer    One Billion Word ("http : / / ", spaced quotes and brackets)
  lambada_detokenizer OpenAI's LAMBADA jsonl (curly quotes; the result starts with a newline)
  scientific_papers_detokenizer  PubMed / ArXiv articles: the WikiText rules, then the LM1B rules
                      (MDLM's `scientific_papers_detokenizer`, kuleshov-group/mdlm dataloader.py)
"""
from __future__ import annotations

import re
from typing import Callable, Sequence, Tuple, Union

# A rule is ("str", old, new) for str.replace or ("re", pattern, replacement) for re.sub.
Rule = Tuple[str, Union[str, "re.Pattern[str]"], str]


def _apply(rules: Sequence[Rule], text: str) -> str:
    for kind, old, new in rules:
        if kind == "str":
            text = text.replace(old, new)
        else:
            text = old.sub(new, text)
    return text


def _re(pattern: str) -> "re.Pattern[str]":
    return re.compile(pattern)


_WT_RULES: Tuple[Rule, ...] = (
    # contractions: plural possessive
    ("str", "s '", "s'"),
    # The reference writes this regex with literal slashes ("/' [0-9]/"), so it only matches the
    # text "/' <digit>/" and its replacement inserts a literal "[0-9]". Kept verbatim in behaviour.
    ("re", _re(r"/' [0-9]/"), r"/'[0-9]/"),
    # number separators
    ("str", " @-@ ", "-"),
    ("str", " @,@ ", ","),
    ("str", " @.@ ", "."),
    # punctuation: no space before
    ("str", " : ", ": "),
    ("str", " ; ", "; "),
    ("str", " . ", ". "),
    ("str", " ! ", "! "),
    ("str", " ? ", "? "),
    ("str", " , ", ", "),
    # brackets and quotes: strip the spaces just inside
    ("re", _re(r"\(\s*([^\)]*?)\s*\)"), r"(\1)"),
    ("re", _re(r"\[\s*([^\]]*?)\s*\]"), r"[\1]"),
    ("re", _re(r"{\s*([^}]*?)\s*}"), r"{\1}"),
    ("re", _re(r"\"\s*([^\"]*?)\s*\""), r'"\1"'),
    ("re", _re(r"'\s*([^']*?)\s*'"), r"'\1'"),
    # headings, degree sign, spaces around newlines, numbers, possessive
    ("str", "= = = =", "===="),
    ("str", "= = =", "==="),
    ("str", "= =", "=="),
    ("str", " \N{DEGREE SIGN} ", "\N{DEGREE SIGN}"),
    ("str", " \n", "\n"),
    ("str", "\n ", "\n"),
    ("str", " N ", " 1 "),
    ("str", " 's", "'s"),
)

_PTB_RULES: Tuple[Rule, ...] = (
    ("str", " 's", "'s"),
    ("str", "s ' ", "s' "),
    ("str", " n't", "n't"),
    ("str", " \n ", "\n"),
    ("str", "\\/", "/"),
) + (("str", " N ", " 1 "),) * 10 + (  # repeated: overlapping " N N " needs several passes
    ("str", "$ 1", "$1"),
    ("str", "# 1", "#1"),
    ("str", "<unk>", "?"),
)

_LM1B_RULES: Tuple[Rule, ...] = (
    ("str", "http : / / ", "http://"),
    ("str", "https : / / ", "https://"),
    ("re", _re(r" \'(\w+)"), r"'\1"),
    ("re", _re(r" (\w+) \. "), r" \1. "),
    ("re", _re(r" (\w+) \.$"), r" \1."),
    ("str", " ? ", "? "),
    ("re", _re(r" \?$"), "?"),
    ("str", " ! ", "! "),
    ("re", _re(r" \!$"), "!"),
    ("str", " , ", ", "),
    ("str", " : ", ": "),
    ("str", " ; ", "; "),
    ("str", " / ", "/"),
    ("re", _re(r"\" ([^\"]+) \""), r'"\1"'),
    ("re", _re(r"\' ([^\']+) \'"), r"'\1'"),
    ("re", _re(r"\( ([^\(\)]+) \)"), r"(\1)"),
    ("re", _re(r"\[ ([^\[\]]+) \]"), r"[\1]"),
    ("str", "$ ", "$"),
    ("str", "\N{POUND SIGN} ", "\N{POUND SIGN}"),
)


def wt_detokenizer(text: str) -> str:
    """WikiText detokenizer (reference `wt_detokenizer`)."""
    return _apply(_WT_RULES, text)


def ptb_detokenizer(text: str) -> str:
    """Penn Treebank detokenizer (reference `ptb_detokenizer`)."""
    return _apply(_PTB_RULES, text)


def lm1b_detokenizer(text: str) -> str:
    """One Billion Word detokenizer (reference `lm1b_detokenizer`)."""
    return _apply(_LM1B_RULES, text)


def lambada_detokenizer(text: str) -> str:
    """LAMBADA detokenizer: curly double quotes become '"', strip, and prepend a newline."""
    text = text.replace("\N{LEFT DOUBLE QUOTATION MARK}", '"')
    text = text.replace("\N{RIGHT DOUBLE QUOTATION MARK}", '"')
    return "\n" + text.strip()


def scientific_papers_detokenizer(text: str) -> str:
    """Scientific Papers (PubMed, ArXiv) detokenizer, as MDLM's: `wt_detokenizer` then `lm1b_detokenizer`."""
    return lm1b_detokenizer(wt_detokenizer(text))


def identity(text: str) -> str:
    return text


DETOKENIZERS: dict[str, Callable[[str], str]] = {
    "wikitext": wt_detokenizer,
    "ptb": ptb_detokenizer,
    "lm1b": lm1b_detokenizer,
    "lambada": lambada_detokenizer,
    "scientific_papers": scientific_papers_detokenizer,
    "none": identity,
}
