"""Answer extraction and scoring shared by the benchmarks.

The functions follow AFlow's scorers (FoundationAgents/AFlow ``benchmarks/*.py``)
except where those are plainly wrong; every such deviation is marked ``DEVIATION``
here and listed in ``docs/benchmarks.md``.

Nothing here runs untrusted code: generated programs are executed only through
:mod:`aflowctl.workflow.sandbox`, and the symbolic MATH check never ``eval``s a
prediction with Python's builtins in reach.
"""

from __future__ import annotations

import math
import re
import string
from collections import Counter
from typing import Any, Optional

from aflowctl.benchmarks.code_answers import CODE_PREAMBLE as CODE_PREAMBLE  # code answers, re-exported
from aflowctl.benchmarks.code_answers import extract_code as extract_code
from aflowctl.benchmarks.code_answers import sanitize as sanitize

# --------------------------------------------------------------------------- text

# DEVIATION (all benchmarks): Unicode minus signs are read as minus. AFlow's number
# regex does not know U+2212, so "−5" was read as 5.
_MINUS_SIGNS = {"\u2212": "-", "\ufe63": "-", "\uff0d": "-", "\u2796": "-"}
_MINUS_TABLE = str.maketrans(_MINUS_SIGNS)


def normalize_minus(text: str) -> str:
    """Replace Unicode minus signs by ASCII ``-``."""
    return text.translate(_MINUS_TABLE)


# ------------------------------------------------------------------------ numbers

# AFlow's GSM8K pattern: optional sign, thousands groups, decimals.
_NUMBER_RE = re.compile(r"[-+]?\d+(?:,\d{3})*(?:\.\d+)?|\d+\.\d+")


def last_number(text: Any) -> Optional[float]:
    """The last number in ``text`` (commas stripped), or None: AFlow's GSM8K extraction."""
    matches = _NUMBER_RE.findall(normalize_minus(str(text)))
    if not matches:
        return None
    try:
        return float(matches[-1].replace(",", ""))
    except ValueError:  # pragma: no cover - the pattern only matches numbers
        return None


def numbers_match(expected: Optional[float], predicted: Optional[float], tol: float = 1e-6) -> bool:
    if expected is None or predicted is None:
        return False
    return abs(expected - predicted) <= tol


def score_last_number(prediction: Any, gold_text: Any, tol: float = 1e-6) -> float:
    """1.0 when the last number of ``prediction`` equals the last number of ``gold_text``."""
    return 1.0 if numbers_match(last_number(gold_text), last_number(prediction), tol) else 0.0


# ----------------------------------------------------------------------------- QA

_PUNCT = set(string.punctuation)
_ARTICLES = re.compile(r"\b(a|an|the)\b")


def normalize_answer(text: str) -> str:
    """SQuAD normalisation: lower case, no punctuation, no articles, single spaces."""
    text = normalize_minus(str(text)).lower()
    text = "".join(ch for ch in text if ch not in _PUNCT)
    text = _ARTICLES.sub(" ", text)
    return " ".join(text.split())


def f1_score(prediction: str, ground_truth: str) -> float:
    """Token-level F1 between normalised prediction and ground truth (SQuAD, as AFlow)."""
    pred_tokens = normalize_answer(prediction).split()
    gold_tokens = normalize_answer(ground_truth).split()
    common = Counter(pred_tokens) & Counter(gold_tokens)
    num_same = sum(common.values())
    if num_same == 0:
        return 0.0
    precision = num_same / len(pred_tokens)
    recall = num_same / len(gold_tokens)
    return 2 * precision * recall / (precision + recall)


def drop_f1(prediction: str, ref_text: str) -> float:
    """DROP: max F1 over the ``|``-separated gold alternatives and prediction parts."""
    scores = [
        f1_score(part, answer)
        for answer in str(ref_text).split("|")
        if answer.strip()
        for part in str(prediction).split("|")
    ]
    # AFlow: max() of an empty list raised and the problem scored 0.
    return max(scores) if scores else 0.0


# --------------------------------------------------------------------------- MATH


def _balanced(text: str, open_at: int) -> Optional[tuple[str, int]]:
    """Content of the brace group opening at ``open_at`` and the index after it."""
    depth = 0
    for i in range(open_at, len(text)):
        ch = text[i]
        if ch == "{" and (i == 0 or text[i - 1] != "\\"):
            depth += 1
        elif ch == "}" and (i == 0 or text[i - 1] != "\\"):
            depth -= 1
            if depth == 0:
                return text[open_at + 1 : i], i + 1
    return None


def boxed_answers(text: str) -> list[str]:
    """Contents of every complete ``\\boxed{...}`` in ``text``, braces balanced.

    DEVIATION: AFlow's regex handled one level of nested braces only, so
    ``\\boxed{\\frac{\\sqrt{3}}{2}}`` was not found at all.
    """
    out = []
    for m in re.finditer(r"\\boxed\{", text):
        got = _balanced(text, m.end() - 1)
        if got is not None:
            out.append(got[0])
    return out


_SENTENCE_END = re.compile(r"(?<!\d)[.!?]\s+")


def extract_math_answer(text: Any) -> str:
    """The last ``\\boxed{}`` content, else the last sentence (AFlow's fallback)."""
    text = normalize_minus(str(text))
    boxed = boxed_answers(text)
    if boxed:
        return boxed[-1].strip()
    sentences = [s.strip() for s in _SENTENCE_END.split(text) if s.strip()]
    return sentences[-1] if sentences else ""


# DEVIATION: AFlow removed every comma before float(), so "1,2" (the list 1 and 2)
# equalled 12. Commas are removed only when they group thousands.
_THOUSANDS = re.compile(r"^[-+]?\d{1,3}(,\d{3})+(\.\d+)?$")


def parse_number(text: Any) -> Optional[float]:
    """A plain number (thousands commas allowed, ``50%``/``50\\%`` read as 0.5) or None."""
    s = str(text).strip()
    if _THOUSANDS.match(s):
        s = s.replace(",", "")
    try:
        value = float(s)
    except ValueError:
        value = None
        if s.endswith("%"):
            s = s[:-1]
            if s.endswith("\\"):
                s = s[:-1]
            try:
                value = float(s) / 100
            except ValueError:
                value = None
    if value is not None and not math.isfinite(value):
        return None
    return value


_THOUSANDS_IN = re.compile(r"(?<![\d,.])\d{1,3}(?:,\d{3})+(?![\d,])")


def _drop_commas(m: re.Match) -> str:
    return m.group(0).replace(",", "")


def _split_top_level(text: str, sep: str = ",") -> list[str]:
    parts, depth, cur = [], 0, []
    i = 0
    while i < len(text):
        ch = text[i]
        if ch == "\\" and i + 1 < len(text) and text[i + 1] in "{}":
            cur.append(text[i : i + 2])
            i += 2
            continue
        if ch in "([{":
            depth += 1
        elif ch in ")]}":
            depth -= 1
        if ch == sep and depth == 0:
            parts.append("".join(cur))
            cur = []
        else:
            cur.append(ch)
        i += 1
    parts.append("".join(cur))
    return [p.strip() for p in parts]


_BRACKETS = {"(": ")", "[": "]"}


def _strip_pair(text: str) -> Optional[tuple[str, str, str]]:
    """``(a, b)`` -> ("(", "a, b", ")") when the brackets enclose the whole string."""
    t = text.strip()
    t = re.sub(r"\\left\s*|\\right\s*", "", t)
    if len(t) >= 2 and t[0] in "([" and t[-1] in ")]":
        inner = t[1:-1]
        depth = 0
        for ch in inner:
            depth += ch in "([{"
            depth -= ch in ")]}"
            if depth < 0:
                return None
        if depth == 0:
            return t[0], inner, t[-1]
    return None


def math_equal(prediction: Any, reference: Any) -> bool:
    """AFlow's MATH equivalence: string, then numeric (1e-3), then symbolic (sympy)."""
    prediction, reference = normalize_minus(str(prediction)).strip(), normalize_minus(str(reference)).strip()
    if prediction == reference:
        return True
    p_num, r_num = parse_number(prediction), parse_number(reference)
    if p_num is not None and r_num is not None:
        return math.isclose(p_num, r_num, abs_tol=1e-3)
    # DEVIATION: lists and tuples are compared element by element. parse_latex stops
    # at a top-level comma ("1,2" parses as 1), which equated "1,2" with "1,5".
    prediction, reference = _THOUSANDS_IN.sub(_drop_commas, prediction), _THOUSANDS_IN.sub(_drop_commas, reference)
    p_parts, r_parts = _split_top_level(prediction), _split_top_level(reference)
    if len(p_parts) > 1 or len(r_parts) > 1:
        return len(p_parts) == len(r_parts) and all(map(math_equal, p_parts, r_parts))
    p_pair, r_pair = _strip_pair(prediction), _strip_pair(reference)
    if p_pair and r_pair and (p_pair[0], p_pair[2]) == (r_pair[0], r_pair[2]):
        pp, rp = _split_top_level(p_pair[1]), _split_top_level(r_pair[1])
        if len(pp) > 1 or len(rp) > 1:
            return len(pp) == len(rp) and all(map(math_equal, pp, rp))
    try:
        return symbolic_equal(prediction, reference)
    except Exception:  # noqa: BLE001 - sympy raises anything on odd input (AFlow: False)
        return False


# Inputs that make sympy compute for minutes (huge powers, factorials) are not parsed.
_EXPENSIVE = re.compile(r"\^\s*\{?\s*[-+]?\d{4,}|\^\s*\{[^{}]*\^|\d{4,}\s*!|\*\*\s*\d{4,}")
_MIXED_NUMBER = re.compile(r"(?<![\d.}])(\d+)\s*(\\[dt]?frac\s*\{\s*\d+\s*\}\s*\{\s*\d+\s*\})")
_LATEX_COMMAND = re.compile(r"\\([A-Za-z]+)")
# Greek letters are variables in sympy's LaTeX parser (``\\pi`` too, as in AFlow).
_GREEK = set(
    "alpha beta gamma delta epsilon varepsilon zeta eta theta vartheta iota kappa lambda mu nu xi "
    "pi varpi rho varrho sigma varsigma tau upsilon phi varphi chi psi omega Gamma Delta Theta "
    "Lambda Xi Pi Sigma Upsilon Phi Psi Omega".split()
)
_SAFE_EXPR = re.compile(r"^[0-9A-Za-z\s+\-*/^().]*$")


def _safe_namespace() -> dict:
    import sympy

    names = [
        "Symbol",
        "Integer",
        "Float",
        "Rational",
        "sqrt",
        "pi",
        "E",
        "I",
        "oo",
        "exp",
        "log",
        "sin",
        "cos",
        "tan",
        "asin",
        "acos",
        "atan",
        "Abs",
        "factorial",
        "binomial",
        "Mul",
        "Add",
        "Pow",
    ]
    ns = {n: getattr(sympy, n) for n in names}
    ns["__builtins__"] = {}
    return ns


def _parse_latex(s: str):
    from sympy.parsing.latex import parse_latex

    # DEVIATION: a mixed number "1\frac{1}{2}" parsed as 1/2; it is rewritten as (1+1/2).
    s = _MIXED_NUMBER.sub(r"(\1+\2)", s)
    expr = parse_latex(s)
    # DEVIATION: parse_latex turns unknown commands into variables ("x \in [1,2]" became
    # the product in*x, equal to "x \in [3,4]"); such a parse is not trusted.
    commands = set(_LATEX_COMMAND.findall(s)) - _GREEK
    if commands & {sym.name for sym in getattr(expr, "free_symbols", ())}:
        raise ValueError("unknown LaTeX command read as a variable")
    return expr


def _parse_expr(s: str):
    # DEVIATION: AFlow called sympy's parse_expr (which uses eval) on model output.
    # Only arithmetic characters are accepted, and eval gets no builtins.
    if not _SAFE_EXPR.match(s) or "__" in s or re.search(r"\.\s*[A-Za-z_]", s):
        raise ValueError("not a plain expression")
    from sympy.parsing.sympy_parser import parse_expr

    return parse_expr(s.replace("^", "**"), global_dict=_safe_namespace())


def symbolic_equal(a: str, b: str) -> bool:
    """sympy equivalence (``simplify(a - b) == 0`` or numerically within 1e-3)."""
    if any(len(x) > 300 or _EXPENSIVE.search(x) for x in (a, b)):
        return False

    def parse(s: str):
        for f in (_parse_latex, _parse_expr):
            try:
                return f(s)
            except Exception:  # noqa: BLE001 - parsers raise many kinds of errors
                continue
        return s

    from sympy import N, simplify

    x, y = parse(a), parse(b)
    if isinstance(x, str) or isinstance(y, str):
        return False  # AFlow: subtracting strings raised, and the answer was wrong
    try:
        if simplify(x - y) == 0:
            return True
    except Exception:  # noqa: BLE001
        pass
    try:
        return math.isclose(N(x), N(y), abs_tol=1e-3)
    except Exception:  # noqa: BLE001
        return False


def score_math(prediction: Any, solution: str) -> float:
    return 1.0 if math_equal(extract_math_answer(prediction), extract_math_answer(solution)) else 0.0
