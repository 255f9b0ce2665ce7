"""The Arabic docs display right to left, on GitHub and in Jupyter, checked by a real implementation
of the Unicode bidirectional algorithm (UAX #9): python-bidi, which wraps the Rust crate unicode-bidi.

What a reader sees depends on how the bidi algorithm orders each block (heading, paragraph, list item,
table cell), not on how the Markdown source looks in an editor. So for each Arabic doc:

- The content sits inside `<div dir="rtl">` ... `</div>`, each tag alone on its line with a blank
  line after the opening and before the closing tag: GitHub's cmark-gfm ends an HTML block at the
  first blank line and renders the Markdown after it; without the blank line a heading or a table
  right after `<div dir="rtl">` is printed as raw text. GitHub keeps the `dir` attribute, and so does
  JupyterLab, which has no per-paragraph direction of its own: there every block inherits the div's.
  Fenced code blocks inherit that direction too, so each sits in its own `<div dir="ltr">`.
- A block that holds Arabic opens with an Arabic letter (its first strong character, rules P2-P3).
  GitHub's Markdown (right-to-left support since 2021) gives paragraphs, list items and headings
  `dir="auto"`, which takes the direction from that first strong character: a paragraph opening with
  "P100" or a code span is laid out left to right, and its Arabic clauses then read in the wrong order.
- Each inline code span reads as written: under the right-to-left base direction its characters stay
  together and in their order. A span that opens or ends with punctuation (`configs/`, `/kaggle/input`,
  `nb.setup()`) loses that punctuation to the Arabic side ("/configs") unless a LEFT-TO-RIGHT MARK
  (U+200E, invisible) stands beside it.
- A number that opens an expression with Latin partners ("2048 x 7 x 7", "400: regnet_x_400mf") keeps
  its partners: otherwise "2048 x 7 x 7" shows as "x 7 x 7 2048", and in "400: regnet_x_400mf، 2048:
  resnet50" the 400 lands next to resnet50. A negative number keeps its minus sign in front ("-0.011",
  not "0.011-").
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from bidi import get_base_level, get_display

ROOT = Path(__file__).resolve().parents[1]
ARABIC_DOCS = ["README.ar.md", "BACKBONE_GUIDE.ar.md", "GLOVE_GUIDE.ar.md", "docs/GLOSSARY.ar.md"]
OPEN, LTR_OPEN, CLOSE = '<div dir="rtl">', '<div dir="ltr">', "</div>"
LRM = "\u200e"

FENCE = re.compile(r"^\s*(```|~~~)")
LIST_ITEM = re.compile(r"^\s*(?:[-*+]|\d+[.)])\s+")
HTML_LINE = re.compile(r"^</?[A-Za-z][^>]*>$")
LINK = re.compile(r"\[([^\]]*)\]\([^)]*\)")
EMPHASIS = re.compile(r"\*\*|(?<![\w*])\*(?=\S)|(?<=\S)\*(?![\w*])")
# a number followed by a Latin "x" or ":" and a Latin or numeric partner (a shape, a pair), or a
# negative number: written left to right, they must display left to right. ("×" between Arabic words
# is an Arabic formula and reads right to left.)
EXPRESSION = re.compile(
    r"(?<![\w.,])\d[\d.,]*(?:[\s\u200e]*(?:x|:)[\s\u200e]*[A-Za-z0-9_.,-]*[A-Za-z0-9_])+"
    r"|(?<![\w.,-])-\d[\d.,]*"
)


@dataclass
class Block:
    line: int
    kind: str  # heading, paragraph, item, cell
    text: str  # as displayed: Markdown markup removed, code spans' text kept
    code: list[tuple[int, int]] = field(default_factory=list)  # code spans, [start, end) in text

    def has_arabic(self) -> bool:
        return any(unicodedata.bidirectional(ch) in ("AL", "R") for ch in self.text)


def inline(markdown: str) -> tuple[str, list[tuple[int, int]]]:
    """A block's Markdown as displayed text, and where its code spans are in that text."""
    text, spans = "", []
    for part in re.split(r"(`[^`]+`)", markdown):
        if len(part) > 1 and part.startswith("`") and part.endswith("`"):
            body = part[1:-1]
            if body.startswith(" ") and body.endswith(" ") and body.strip():
                body = body[1:-1]
            spans.append((len(text), len(text) + len(body)))
            text += body
        else:
            text += EMPHASIS.sub("", LINK.sub(r"\1", part))
    return text, spans


def blocks(markdown: str) -> list[Block]:
    """The blocks a Markdown renderer lays out one by one; fenced code and HTML lines are skipped."""
    found: list[Block] = []
    lines: list[str] = []
    start = kind = None
    in_fence = in_comment = False

    def flush():
        nonlocal lines
        if lines:
            found.append(Block(start, kind, *inline(" ".join(lines))))
        lines = []

    for number, line in enumerate(markdown.splitlines(), 1):
        stripped = line.strip()
        if in_fence:
            in_fence = not FENCE.match(line)
            continue
        if in_comment:
            in_comment = "-->" not in line
            continue
        if FENCE.match(line):
            flush()
            in_fence = True
        elif stripped.startswith("<!--"):
            flush()
            in_comment = "-->" not in stripped
        elif not stripped or HTML_LINE.match(stripped):
            flush()
        elif stripped.startswith("#"):
            flush()
            found.append(Block(number, "heading", *inline(stripped.lstrip("#").strip())))
        elif stripped.startswith("|"):
            flush()
            if not set(stripped) <= set("|-: "):
                for cell in re.split(r"(?<!\\)\|", stripped.strip("|")):
                    found.append(Block(number, "cell", *inline(cell.strip().replace("\\|", "|"))))
        elif LIST_ITEM.match(line):
            flush()
            start, kind, lines = number, "item", [LIST_ITEM.sub("", line, count=1).strip()]
        else:
            if not lines:
                start, kind = number, "paragraph"
            lines.append(stripped)
    flush()
    return found


def bidi_levels(text: str) -> list[int]:
    """Each character's resolved embedding level under a right-to-left base direction (rules X1-I2),
    as unicode-bidi computes them (python-bidi's debug output lists them per UTF-8 byte)."""
    info = get_display(text, base_dir="R", debug=True)
    listed = re.search(r"levels: \[(.*?)\]", info, re.DOTALL)
    assert listed, f"python-bidi's debug output changed: {info[:200]}"
    per_byte = [int(n) for n in re.findall(r"Level\(\s*(\d+)", listed.group(1))]
    levels, offset = [], 0
    for ch in text:
        levels.append(per_byte[offset])
        offset += len(ch.encode("utf-8"))
    assert offset == len(per_byte), "python-bidi's levels do not cover the text"
    return levels


def visual_order(levels: list[int]) -> list[int]:
    """Rule L2: the logical index of the character at each visual position, left to right."""
    order = list(range(len(levels)))
    odd = [level for level in levels if level % 2]
    for level in range(max(levels, default=0), min(odd, default=max(levels, default=0) + 1) - 1, -1):
        i = 0
        while i < len(order):
            if levels[order[i]] < level:
                i += 1
                continue
            j = i
            while j < len(order) and levels[order[j]] >= level:
                j += 1
            order[i:j] = order[i:j][::-1]
            i = j
    return order


def displayed(text: str) -> str:
    """The text as a right-to-left block shows it, left to right (without mirroring brackets)."""
    return "".join(text[i] for i in visual_order(bidi_levels(text)))


def reads_as_written(position: dict[int, int], start: int, end: int) -> bool:
    """Characters [start, end) stand side by side, left to right, in their logical order."""
    seen = [position[i] for i in range(start, end)]
    return seen == list(range(seen[0], seen[0] + len(seen)))


def wrapper_findings(markdown: str) -> list[str]:
    """The rtl div around the content, an ltr div around each fenced code block (a code block inherits
    the direction, so under rtl its lines align right and lose their end punctuation to the wrong
    side), and a blank line after each opening and before each closing div tag."""
    lines = [line.strip() for line in markdown.splitlines()] + [""]
    filled = [i for i, line in enumerate(lines) if line]
    if filled and lines[filled[0]].startswith("<!--"):  # a leading comment may stand before the div
        comment_end = next(i for i in filled if "-->" in lines[i])
        filled = [i for i in filled if i > comment_end]
    if not filled or lines[filled[0]] != OPEN or lines[filled[-1]] != CLOSE:
        return [f"the content is not inside {OPEN} ... {CLOSE}"]
    problems, stack, in_fence = [], [], False
    for i in range(filled[0], filled[-1] + 1):
        line = lines[i]
        if FENCE.match(line):
            if not in_fence and stack[-1:] != [LTR_OPEN]:
                problems.append(f"line {i + 1}: a code block outside {LTR_OPEN} ... {CLOSE} "
                                "displays right to left")
            in_fence = not in_fence
        elif in_fence:
            continue
        elif line in (OPEN, LTR_OPEN):
            if stack and line == OPEN:
                problems.append(f"line {i + 1}: {OPEN} must stand once, around the whole content")
            stack.append(line)
            if lines[i + 1]:
                problems.append(f"line {i + 2}: no blank line after {line}, so GitHub shows the Markdown raw")
        elif line == CLOSE:
            if lines[i - 1]:
                problems.append(f"line {i}: no blank line before {CLOSE}")
            if not stack:
                problems.append(f"line {i + 1}: {CLOSE} closes nothing")
            else:
                stack.pop()
                if not stack and i != filled[-1]:
                    problems.append(f"line {i + 1}: {OPEN} closes before the end of the content")
    if stack:
        problems.append(f"{stack[-1]} is never closed")
    return problems


def findings(markdown: str) -> list[str]:
    """Everything in an Arabic Markdown doc that would display wrongly right to left."""
    found = wrapper_findings(markdown)
    for block in blocks(markdown):
        where = f"line {block.line} ({block.kind})"
        if block.has_arabic() and get_base_level(block.text) != 1:
            found.append(f"{where} opens with Latin text, so dir=auto lays it out left to right: "
                         f"{block.text[:60]!r}")
        levels = bidi_levels(block.text)
        position = {logical: visual for visual, logical in enumerate(visual_order(levels))}
        shown = "".join(block.text[i] for i in visual_order(levels))
        for start, end in block.code:
            if not reads_as_written(position, start, end):
                span = block.text[start:end]
                found.append(f"{where} code span `{span}` does not read as written "
                             f"(add {LRM!a} beside it): {shown!r}")
        for match in EXPRESSION.finditer(block.text):
            start, end = match.span()
            if any(a < end and start < b for a, b in block.code):
                continue
            if not reads_as_written(position, start, end):
                found.append(f"{where} '{match[0]}' is split from its partners (start it with {LRM!a} "
                             f"or reword): {shown!r}")
    return found


@pytest.mark.parametrize("doc", ARABIC_DOCS)
def test_arabic_doc_displays_right_to_left(doc):
    problems = findings((ROOT / doc).read_text(encoding="utf-8"))
    assert not problems, f"{doc}: {len(problems)} display problems:\n" + "\n".join(problems)


def test_the_bidi_implementation_orders_as_uax9_says():
    """unicode-bidi's levels, reordered here, give the display the algorithm specifies."""
    assert displayed("عند configs/ و") == "و /configs دنع"  # the slash goes to the Arabic side
    assert displayed(f"عند configs/{LRM} و") == f"و configs/{LRM} دنع"
    assert displayed("عند 2048 x 7 x 7 قناة") == "ةانق x 7 x 7 2048 دنع"
    assert displayed(f"عند {LRM}2048 x 7 x 7 قناة") == f"ةانق {LRM}2048 x 7 x 7 دنع"
    assert displayed("بمقدار -0.046 أحياناً") == "ًانايحأ 0.046- رادقمب"
    assert get_base_level("P100 مرفوض") == 0 and get_base_level("البطاقة P100 مرفوضة") == 1


def test_the_check_catches_each_kind_of_problem():
    body = "\n".join([
        "# عنوان",
        "",
        "- **P100 مرفوض.** لا تدعمه torch.",
        "",
        "انسخ الملف إلى `configs/` ثم إلى `/kaggle/input` وشغّل `nb.setup()` الآن.",
        "",
        "القنوات (400: regnet_x_400mf، 2048: resnet50).",
        "",
        "| البعد | الخريطة |",
        "|---|---|",
        "| عرض | 2048 x 7 x 7 |",
        "",
        "وينخفض بمقدار -0.046 أحياناً.",
    ])
    unwrapped = findings(body)
    assert unwrapped[0].startswith("the content is not inside")
    problems = findings(f"{OPEN}\n\n{body}\n\n{CLOSE}\n")
    expected = [
        ("(item)", "opens with Latin text"),
        ("(paragraph)", "code span `configs/`"),
        ("(paragraph)", "code span `/kaggle/input`"),
        ("(paragraph)", "code span `nb.setup()`"),
        ("(paragraph)", "'400: regnet_x_400mf' is split"),
        ("(cell)", "'2048 x 7 x 7' is split"),
        ("(paragraph)", "'-0.046' is split"),
    ]
    assert len(problems) == len(expected), problems
    for problem, (kind, what) in zip(problems, expected):
        assert kind in problem and what in problem, problem
    fixed = (body.replace("- **P100 مرفوض.**", "- **البطاقة P100 مرفوضة.**")
             .replace("`configs/`", f"`configs/`{LRM}").replace("`/kaggle/input`", f"{LRM}`/kaggle/input`")
             .replace("`nb.setup()`", f"`nb.setup()`{LRM}")
             .replace("(400: regnet_x_400mf، 2048: resnet50)", "(regnet_x_400mf لـ 400، و resnet50 لـ 2048)")
             .replace("| 2048 x 7 x 7 |", f"| {LRM}2048 x 7 x 7 |").replace(" -0.046", f" {LRM}-0.046"))
    assert findings(f"{OPEN}\n\n{fixed}\n\n{CLOSE}\n") == []
    misplaced = fixed.replace(f"| {LRM}2048 x 7 x 7 |", f"| 2048 x {LRM}7 x 7 |")
    assert "'2048 x \u200e7 x 7' is split" in findings(f"{OPEN}\n\n{misplaced}\n\n{CLOSE}\n")[0]
    code = "```bash\nls configs/\n```"
    assert "a code block outside" in findings(f"{OPEN}\n\n{fixed}\n\n{code}\n\n{CLOSE}\n")[0]
    wrapped = f"{OPEN}\n\n{fixed}\n\n{LTR_OPEN}\n\n{code}\n\n{CLOSE}\n\n{CLOSE}\n"
    assert findings(wrapped) == []
    assert "no blank line before" in findings(wrapped.replace(f"```\n\n{CLOSE}", f"```\n{CLOSE}"))[0]
    assert "no blank line after" in findings(f"{OPEN}\n{fixed}\n\n{CLOSE}\n")[0]
    assert "no blank line before" in findings(f"{OPEN}\n\n{fixed}\n{CLOSE}\n")[0]


def test_blocks_are_cut_as_markdown_renders_them():
    text = "\n".join([
        "<!-- a note -->",
        "# عنوان `x`",
        "فقرة تبدأ هنا",
        "وتكمل هنا.",
        "- بند **أول** [رابط](README.md)",
        "  يكمل",
        "```",
        "code is skipped",
        "```",
        "| أ | `b\\|c` |",
        "|---|---|",
    ])
    assert [(b.line, b.kind, b.text) for b in blocks(text)] == [
        (2, "heading", "عنوان x"),
        (3, "paragraph", "فقرة تبدأ هنا وتكمل هنا."),
        (5, "item", "بند أول رابط يكمل"),
        (10, "cell", "أ"),
        (10, "cell", "b|c"),
    ]
