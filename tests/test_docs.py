"""The Arabic docs say what their English originals say, with the terms of docs/GLOSSARY.ar.md.

Section by section (a section runs from one heading to the next), an Arabic doc must match its
English original in: heading levels, tables (rows x columns), fenced code blocks (identical text),
inline code spans and numbers (the same multiset). A caveat dropped or a figure added in one language
changes a section's numbers or code spans and fails here with the section's heading.

Numbers: Arabic prose writes small counts as words ("بنواتين" for "2-core", "خمس مراحل" for
"5 stages"), so an English 1 to 12 may stand in the Arabic section as an Arabic number word
(`arabic_number_words`); every other number, and every digit the Arabic writes, must match exactly.
Glossary terms are compared without Arabic vowel marks and without invisible direction marks.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAIRS = [
    ("README.md", "README.ar.md"),
    ("BACKBONE_GUIDE.md", "BACKBONE_GUIDE.ar.md"),
    ("GLOVE_GUIDE.md", "GLOVE_GUIDE.ar.md"),
]
GLOSSARY = ROOT / "docs" / "GLOSSARY.ar.md"
FENCE = re.compile(r"^(```|~~~)")
HEADING = re.compile(r"^(#{1,6}) (.*)$")
INLINE_CODE = re.compile(r"`([^`]+)`")  # may wrap onto the next line
NUMBER = re.compile(r"\d+(?:[.,]\d+)*")
LINK_TARGET = re.compile(r"\]\(([^)]*)\)")
# vowel marks (harakat), dagger alef, tatweel; and the invisible direction marks (LRM, RLM, ALM, isolates)
ARABIC_MARKS = re.compile("[\u064b-\u0652\u0670\u0640\u200e\u200f\u061c\u2066-\u2069]")
ARABIC_WORD = re.compile("[\u0621-\u064a\u064b-\u0652\u0670\u0640]+")
SMALL_NUMBERS = {str(n) for n in range(1, 13)}
# Arabic cardinals 1-10 in their common forms (masculine, feminine, accusative, genitive) after
# normalize_arabic (hamza on alef dropped); a dual noun stands for 2 (the docs' "بنواتين": 2-core)
NUMBER_WORDS = {
    "1": "واحد واحدة واحدا",
    "2": "اثنان اثنين اثنتان اثنتين نواتان نواتين",
    "3": "ثلاث ثلاثة",
    "4": "اربع اربعة",
    "5": "خمس خمسة",
    "6": "ست ستة",
    "7": "سبع سبعة",
    "8": "ثمان ثماني ثمانية",
    "9": "تسع تسعة",
    "10": "عشر عشرة",
}
WORD_VALUE = {form: value for value, forms in NUMBER_WORDS.items() for form in forms.split()}
TENS_UNITS = {"احد": "11", "احدى": "11", "اثنا": "12", "اثني": "12", "اثنتا": "12", "اثنتي": "12"}


@dataclass
class Section:
    heading: str
    level: int
    code_blocks: list[str] = field(default_factory=list)
    tables: list[tuple[int, int]] = field(default_factory=list)
    prose: list[str] = field(default_factory=list)  # lines outside code blocks, tables included

    @property
    def text(self) -> str:
        return "\n".join(self.prose)

    def inline_code(self) -> Counter:
        return Counter(" ".join(span.split()) for span in INLINE_CODE.findall(self.text))

    def numbers(self) -> Counter:
        """Numbers outside code (code is compared as it is), links (targets differ by language) and
        the heading itself, which may differ in wording but not in what it counts."""
        text = LINK_TARGET.sub("]()", INLINE_CODE.sub(" ", self.text))
        return Counter(NUMBER.findall(text))


def normalize_arabic(text: str) -> str:
    """Arabic text compared as words: no vowel marks or direction marks, أ إ آ written ا."""
    return re.sub("[\u0623\u0625\u0622]", "\u0627", ARABIC_MARKS.sub("", text))


def word_stems(word: str) -> list[str]:
    """A word with its attached prefixes taken off one by one: و/ف, then ب/ل/ك, then ال (or لل)."""
    stems = [word]
    for prefixes in (("و", "ف"), ("ب", "ل", "ك")):
        stems += [s[1:] for s in stems if s[:1] in prefixes and len(s) > 3]
    stems += [s[2:] for s in stems if s[:2] in ("ال", "لل") and len(s) > 3]
    return stems


def arabic_number_words(text: str) -> Counter:
    """The numbers 1 to 12 that Arabic prose writes as words, as digit strings: "بنواتين" -> 2,
    "خمس مراحل" -> 5, "إحدى عشرة" -> 11. Larger compounds ("ثلاثة عشر") count as nothing."""
    words = ARABIC_WORD.findall(normalize_arabic(text))
    found: Counter = Counter()
    i = 0
    while i < len(words):
        stems = word_stems(words[i])
        following = word_stems(words[i + 1]) if i + 1 < len(words) else []
        if {"عشر", "عشرة"} & set(following):  # 11-19: one number in two words
            value = next((TENS_UNITS[s] for s in stems if s in TENS_UNITS), None)
            if value or any(s in WORD_VALUE for s in stems):
                if value:
                    found[value] += 1
                i += 2
                continue
        value = next((WORD_VALUE[s] for s in stems if s in WORD_VALUE), None)
        if value:
            found[value] += 1
        i += 1
    return found


def number_differences(en: Section, ar: Section) -> tuple[Counter, Counter]:
    """(English-only, Arabic-only) numbers of a section pair: an English 1 to 12 missing from the
    Arabic digits counts as present when the Arabic prose writes it as a word."""
    english, arabic = en.numbers(), ar.numbers()
    english_only, arabic_only = english - arabic, arabic - english
    words = arabic_number_words(INLINE_CODE.sub(" ", ar.text))
    for number in list(english_only):
        if number in SMALL_NUMBERS:
            english_only[number] -= min(english_only[number], words[number])
    return +english_only, arabic_only


def table_cells(line: str) -> int:
    return len(re.split(r"(?<!\\)\|", line.strip().strip("|")))


def sections(path: Path) -> list[Section]:
    """A Markdown file cut at its headings (the part before the first heading is section 0)."""
    found = [Section(heading="(top)", level=0)]
    lines = path.read_text(encoding="utf-8").splitlines()
    code: list[str] | None = None
    table_rows = columns = 0
    for line in lines + [""]:
        if code is not None:
            if FENCE.match(line.strip()):
                found[-1].code_blocks.append("\n".join(code))
                code = None
            else:
                code.append(line)
            continue
        is_row = line.startswith("|")
        if table_rows and not is_row:
            found[-1].tables.append((table_rows - 1, columns))  # the |---| line is not a row
            table_rows = 0
        if FENCE.match(line.strip()):
            code = []
        elif HEADING.match(line):
            level, title = HEADING.match(line).groups()
            found.append(Section(heading=title, level=len(level)))
        else:
            if is_row:
                if table_rows == 0:
                    columns = table_cells(line)
                table_rows += 1
            found[-1].prose.append(line)
    return found


def glossary() -> list[tuple[re.Pattern, list[str]]]:
    """(English term pattern, its Arabic forms) from the glossary's table."""
    rows = []
    for line in GLOSSARY.read_text(encoding="utf-8").splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        is_term_row = line.startswith("|") and len(cells) >= 3 and cells[0] != "English"
        if not is_term_row or set(cells[0]) <= {"-"}:
            continue
        english = [e.strip() for e in cells[0].split(",")]
        pattern = re.compile(r"\b(" + "|".join(re.escape(e) for e in english) + r")s?\b", re.IGNORECASE)
        rows.append((pattern, [normalize_arabic(a.strip()) for a in cells[1].split("/")]))
    return rows


@pytest.mark.parametrize("english, arabic", PAIRS)
def test_arabic_doc_has_the_english_sections_tables_and_code(english, arabic):
    en, ar = sections(ROOT / english), sections(ROOT / arabic)
    assert [s.level for s in ar] == [s.level for s in en], f"{arabic}: headings differ from {english}"
    for e, a in zip(en, ar, strict=True):
        where = f"{arabic} section '{a.heading}' (English: '{e.heading}')"
        assert a.tables == e.tables, f"{where}: tables (rows, columns) differ"
        assert a.code_blocks == e.code_blocks, f"{where}: code blocks differ"
        assert a.inline_code() == e.inline_code(), (
            f"{where}: inline code differs: English only {e.inline_code() - a.inline_code()}, "
            f"Arabic only {a.inline_code() - e.inline_code()}"
        )
        english_only, arabic_only = number_differences(e, a)
        assert not english_only and not arabic_only, (
            f"{where}: numbers differ: English only {english_only}, Arabic only {arabic_only}"
        )


@pytest.mark.parametrize("english, arabic", PAIRS)
def test_arabic_doc_uses_the_glossary_terms(english, arabic):
    """Where an English section names a glossary term, the Arabic section uses its Arabic word."""
    assert "docs/GLOSSARY.ar.md" in (ROOT / arabic).read_text(encoding="utf-8")
    terms = glossary()
    for e, a in zip(sections(ROOT / english), sections(ROOT / arabic), strict=True):
        english_prose = INLINE_CODE.sub(" ", e.text)
        arabic_prose = " ".join(normalize_arabic(a.text).split())  # a term may wrap onto the next line
        for pattern, forms in terms:
            # EPOCHS, BATCH_SIZE...: parameter names, not the words
            words = [m[0] for m in pattern.finditer(english_prose) if m[0] != m[0].upper()]
            if words:
                assert any(form in arabic_prose for form in forms), (
                    f"{arabic} section '{a.heading}': the English says '{words[0]}'"
                    f" but the Arabic uses none of {forms}"
                )


def test_each_arabic_term_stands_for_one_english_term():
    """One word per idea: the issue found شبكة used for both network and grid, أنوية for both GPU
    kernels and CPU cores."""
    owners: dict[str, str] = {}
    for pattern, forms in glossary():
        for form in forms:
            assert form not in owners, f"'{form}' is the Arabic for both {owners[form]} and {pattern.pattern}"
            owners[form] = pattern.pattern
    assert len(owners) >= 10


def test_the_check_catches_a_dropped_caveat_and_a_changed_code_block(tmp_path):
    english = tmp_path / "en.md"
    english.write_text(
        "# T\n\n## A\n\nIt took 12 min; not measured on a T4.\n\n```bash\nrun --x 1\n```\n",
        encoding="utf-8",
    )
    arabic = tmp_path / "ar.md"
    arabic.write_text("# T\n\n## A\n\nاستغرق 12 دقيقة.\n\n```bash\nrun --x 2\n```\n", encoding="utf-8")
    en, ar = sections(english), sections(arabic)
    assert en[2].numbers() - ar[2].numbers() == Counter({"4": 1})
    assert en[2].code_blocks == ["run --x 1"] and ar[2].code_blocks == ["run --x 2"]


def test_arabic_number_words_stand_for_small_numbers():
    assert arabic_number_words("معالج بنواتين، خمس مراحل، والخمس كلها، أربعة عمّال، مرةً واحدة") == Counter(
        {"2": 1, "5": 2, "4": 1, "1": 1}
    )
    assert arabic_number_words("الثلاثُ الأولى، ثمانيَ دفعات، سِتّة أعمدة، للعشرة، وتسع، سبعة") == Counter(
        {"3": 1, "8": 1, "6": 1, "10": 1, "9": 1, "7": 1}
    )
    # 11 and 12 are two words; 13-19 and the tens are not small numbers and count as nothing
    assert arabic_number_words("إحدى عشرة ساعة، اثنا عشر ملفاً، وثلاثة عشر يوماً، وستون ثانية") == Counter(
        {"11": 1, "12": 1}
    )
    assert arabic_number_words("لستَ مضطراً؛ تتسع الذاكرة؛ شبكة أساسية") == Counter()


def test_small_numbers_may_be_words_and_every_other_number_must_match():
    english = Section("A", 2, prose=["On a 2-core CPU, 5 stages took 60 s: 3 of the 20 runs."])
    arabic = Section("A", 2, prose=["على معالج بنواتين استغرقت خمس مراحل 60 ثانية: ثلاث من التجارب الـ 20."])
    assert number_differences(english, arabic) == (Counter(), Counter())
    dropped = Section("A", 2, prose=["على معالج بنواتين أخذت خمس مراحل ستين ثانية: ثلاث من التجارب العشرين."])
    assert number_differences(english, dropped) == (Counter({"60": 1, "20": 1}), Counter())
    no_word = Section("A", 2, prose=["على معالج سريع أخذت المراحل 60 ثانية: 3 من التجارب الـ 20، و 7 أخرى."])
    assert number_differences(english, no_word) == (Counter({"2": 1, "5": 1}), Counter({"7": 1}))


def test_every_test_the_fault_catalogue_names_exists():
    """docs/FAULTS.md's test column names test functions (and files): each must be in tests/."""
    named = set(re.findall(r"`(?:(test_\w+)\.py::)?(test_\w+)", (ROOT / "docs" / "FAULTS.md").read_text()))
    defined = {
        path.stem: set(re.findall(r"^def (test_\w+)\(", path.read_text(), re.MULTILINE))
        for path in (ROOT / "tests").glob("test_*.py")
    }
    missing = [
        f"{file or 'test_faults'}.py::{name}" for file, name in sorted(named)
        if name not in defined.get(file or "test_faults", set())
    ]
    assert len(named) > 30 and not missing, missing
