"""Reading operators' LLM replies: fields from XML-like tags, JSON or plain text; yes/no;
candidate letters; code from fences or bare text; the final answer of a solution, and the
majority among candidates. Parsing never raises."""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Sequence
from typing import Any, Optional


def parse_fields(text: str, fields: Sequence[str]) -> dict[str, str]:
    """Read ``fields`` from a reply: ``<field>...</field>`` tags (an unclosed last tag
    runs to the end), else a JSON object (fenced or bare). Missing fields are absent."""
    text = text or ""
    out: dict[str, str] = {}
    for f in fields:
        m = list(re.finditer(rf"<{re.escape(f)}\s*>(.*?)</\s*{re.escape(f)}\s*>", text, re.S | re.I))
        if m:
            out[f] = m[-1].group(1).strip()
            continue
        m2 = re.search(rf"<{re.escape(f)}\s*>(.*)$", text, re.S | re.I)
        if m2:
            val = m2.group(1)
            nxt = re.search(r"<(?!/)(\w+)\s*>", val)
            if nxt and nxt.group(1) in fields:
                val = val[: nxt.start()]
            out[f] = val.strip()
    if len(out) < len(fields):
        obj = _json_object(text)
        if isinstance(obj, dict):
            lower = {str(k).lower(): v for k, v in obj.items()}
            for f in fields:
                if f not in out and f.lower() in lower:
                    v = lower[f.lower()]
                    out[f] = v if isinstance(v, str) else json.dumps(v) if isinstance(v, (dict, list)) else str(v)
    return out


def _json_object(text: str) -> Any:
    for m in re.finditer(r"```(?:json)?\s*\n(.*?)```", text, re.S | re.I):
        try:
            return json.loads(m.group(1))
        except ValueError:
            pass
    start = text.find("{")
    end = text.rfind("}")
    if 0 <= start < end:
        try:
            return json.loads(text[start : end + 1])
        except ValueError:
            return None
    return None


def parse_bool(text: Any) -> Optional[bool]:
    """``True``/``False`` from a reply word (true/yes/correct/pass...), else None."""
    if isinstance(text, bool):
        return text
    s = str(text or "").strip().strip("*`'\".").lower()
    if not s:
        return None
    first = re.split(r"[\s,.;:!]+", s)[0]
    if first in ("true", "yes", "correct", "pass", "passed", "valid", "right", "1"):
        return True
    if first in ("false", "no", "incorrect", "wrong", "fail", "failed", "invalid", "0"):
        return False
    return None


def labels(n: int) -> list[str]:
    """Letters for ``n`` candidates: A..Z, then AA, AB, ..."""
    out = []
    for i in range(n):
        s, k = "", i
        while True:
            s = chr(65 + k % 26) + s
            k = k // 26 - 1
            if k < 0:
                break
        out.append(s)
    return out


def parse_letter(reply: str, n: int) -> Optional[int]:
    """The index chosen in a reply (``<solution_letter>B</solution_letter>``, JSON, or
    a lone letter), or None when absent or out of range."""
    names = labels(n)
    fields = parse_fields(reply, ["solution_letter"])
    cands = [fields["solution_letter"]] if "solution_letter" in fields else []
    cands.append(reply or "")
    for c in cands:
        s = c.strip().strip("*`'\"()[]. ").upper()
        if s in names:
            return names.index(s)
        m = re.search(r"\b(?:LETTER|CANDIDATE|SOLUTION|ANSWER)\s*(?:IS|:)?\s*\(?([A-Z]{1,2})\)?\b", s)
        if m and m.group(1) in names:
            return names.index(m.group(1))
    return None


_FENCE = re.compile(r"```[ \t]*([A-Za-z0-9_+\-]*)[^\n]*\n(.*?)```", re.S)
_CODE_START = re.compile(r"^(def |async def |class |import |from |@)", re.M)


def _parses(code: str) -> bool:
    import ast

    try:
        ast.parse(code)
        return True
    except (SyntaxError, ValueError):
        return False


def extract_code(text: str, entry_point: Optional[str] = None) -> str:
    """Python code from an LLM reply: the fenced block that defines ``entry_point``
    (else the longest Python block), or the reply itself trimmed to what parses."""
    text = text or ""
    blocks = _FENCE.findall(text)
    if not blocks:
        m = re.search(r"```[ \t]*(?:python3?|py)?[^\n]*\n(.*)$", text, re.S | re.I)
        if m:
            blocks = [("python", m.group(1))]
    pyblocks = [b for lang, b in blocks if lang.lower() in ("", "python", "py", "python3")] or [b for _, b in blocks]
    code = ""
    if pyblocks:
        if entry_point:
            defines = re.compile(rf"^\s*(async\s+)?def\s+{re.escape(entry_point)}\s*\(", re.M)
            defining = [b for b in pyblocks if defines.search(b)]
            if defining:
                pyblocks = defining
        code = max(pyblocks, key=len)
    else:
        code = text
    code = code.strip("\n")
    if _parses(code):
        return code + "\n" if code else ""
    m = _CODE_START.search(code)
    if m:
        code = code[m.start() :]
    lines = code.splitlines()
    for end in range(len(lines), 0, -1):  # drop trailing prose until it parses
        cand = "\n".join(lines[:end])
        if _parses(cand):
            return cand + "\n"
    return ""


def final_answer_key(solution: Any) -> str:
    """What two solutions must share to count as the same answer in a vote: for code,
    the code itself (formatting and comments ignored); else the last ``\\boxed{}``,
    else the last number, else the normalised text."""
    s = str(solution or "")
    code_key = _code_key(s)
    if code_key is not None:
        return code_key
    boxed = _last_boxed(s)
    if boxed is not None:
        return re.sub(r"\s+", "", boxed)
    nums = re.findall(r"-?\d[\d,]*(?:\.\d+)?", s)
    if nums:
        n = nums[-1].replace(",", "")
        try:
            f = float(n)
            return str(int(f)) if f.is_integer() else str(f)
        except ValueError:
            return n
    return re.sub(r"\s+", " ", s.strip().lower())


def _code_key(s: str) -> Optional[str]:
    if not re.search(r"^\s*(async\s+)?(def|class)\s", s, re.M):
        return None
    import ast

    code = extract_code(s) if "```" in s else s
    try:
        return "code:" + ast.dump(ast.parse(code))
    except (SyntaxError, ValueError):
        return None


def _last_boxed(s: str) -> Optional[str]:
    i = s.rfind("\\boxed")
    if i < 0:
        return None
    j = s.find("{", i)
    if j < 0:
        return None
    depth = 0
    for k in range(j, len(s)):
        if s[k] == "{":
            depth += 1
        elif s[k] == "}":
            depth -= 1
            if depth == 0:
                return s[j + 1 : k]
    return None


def majority_index(solutions: Sequence[Any]) -> int:
    """Index of the first solution whose final answer is the most common one."""
    if not solutions:
        return 0
    keys = [final_answer_key(s) for s in solutions]
    counts = Counter(keys)
    best = max(counts.values())
    for i, k in enumerate(keys):
        if counts[k] == best:
            return i
    return 0
