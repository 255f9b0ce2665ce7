"""Writes docs/CONFIG.md, the reference of every config key: `python scripts/make_config_doc.py [OUT]`.

The keys, types and defaults come from helpers/config.py's dataclasses and each key's meaning from the
comment on (or just above) its line there, so the reference has one home: edit config.py and rerun.
tests/test_config_doc.py checks that the committed doc is this script's output. A key without a
comment stops the script with its name.
"""

from __future__ import annotations

import ast
import dataclasses
import io
import sys
import tokenize
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from helpers import config as config_module  # noqa: E402

SOURCE = Path(config_module.__file__)
OUT = Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT / "docs" / "CONFIG.md"
SECTIONS = [  # (YAML section, dataclass); "" is the top level
    ("", config_module.Config),
    ("model", config_module.ModelConfig),
    ("embeddings", config_module.EmbeddingsConfig),
    ("data", config_module.DataConfig),
    ("training", config_module.TrainingConfig),
    ("training.scst", config_module.ScstConfig),
]


def comments_by_line(source: str) -> dict[int, str]:
    """Line number -> the text of the comment on that line."""
    tokens = tokenize.generate_tokens(io.StringIO(source).readline)
    return {tok.start[0]: tok.string.lstrip("#").strip() for tok in tokens if tok.type == tokenize.COMMENT}


def field_meanings(source: str) -> dict[tuple[str, str], str]:
    """(class name, field name) -> the comment lines just above the field plus the one on its line."""
    comments = comments_by_line(source)
    lines = source.splitlines()
    meanings = {}
    for node in ast.walk(ast.parse(source)):
        if not isinstance(node, ast.ClassDef):
            continue
        for statement in node.body:
            if isinstance(statement, ast.AnnAssign) and isinstance(statement.target, ast.Name):
                parts = []
                above = statement.lineno - 1
                while above >= 1 and lines[above - 1].strip().startswith("#"):
                    parts.insert(0, comments[above])
                    above -= 1
                if statement.lineno in comments:
                    parts.append(comments[statement.lineno])
                meanings[(node.name, statement.target.id)] = " ".join(parts)
    return meanings


def annotations(source: str) -> dict[tuple[str, str], str]:
    """(class name, field name) -> the type as written in the source."""
    found = {}
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.ClassDef):
            for statement in node.body:
                if isinstance(statement, ast.AnnAssign) and isinstance(statement.target, ast.Name):
                    found[(node.name, statement.target.id)] = ast.unparse(statement.annotation)
    return found


def cell(text: str) -> str:
    """Text safe inside a Markdown table cell: pipes escaped, angle brackets not read as HTML."""
    return text.replace("|", "\\|").replace("<", "&lt;").replace(">", "&gt;")


def yaml_value(value) -> str:
    """A default as it is written in a YAML file."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list):
        return "[" + ", ".join(yaml_value(v) for v in value) + "]"
    return str(value)


def render() -> str:
    source = SOURCE.read_text(encoding="utf-8")
    meanings, types = field_meanings(source), annotations(source)
    defaults = config_module.Config()
    out = [
        "# Config reference",
        "",
        "Every key of a config, its type, its default and what it does. A decoder config",
        "(`configs/LSTM.yaml`, ...) and a preset (`configs/presets/`) set only the keys they change;",
        "every other key has the default below. Set any key from the command line or a notebook with",
        "`section.key=value`, for example `python -m helpers.train --config configs/LSTM.yaml",
        "training.epochs=3 model.hidden_dim=256`.",
        "",
        "Generated from `helpers/config.py` by `python scripts/make_config_doc.py`; edit the comments",
        "there and rerun.",
    ]
    for section, cls in SECTIONS:
        values = defaults
        for part in section.split(".") if section else []:
            values = getattr(values, part)
        out += ["", f"## `{section}:`" if section else "## Top level", "", cls.__doc__.strip(), ""]
        out += ["| key | type | default | meaning |", "|---|---|---|---|"]
        for item in dataclasses.fields(cls):
            if dataclasses.is_dataclass(item.type) or f"{section}.{item.name}".lstrip(".") in dict(SECTIONS):
                continue
            meaning = meanings.get((cls.__name__, item.name), "")
            if not meaning:
                raise SystemExit(f"{SOURCE}: {cls.__name__}.{item.name} has no comment saying what it does")
            key = f"{section}.{item.name}" if section else item.name
            default = yaml_value(getattr(values, item.name))
            kind = types[(cls.__name__, item.name)]
            out.append(f"| `{key}` | `{cell(kind)}` | `{cell(default)}` | {cell(meaning)} |")
    return "\n".join(out) + "\n"


if __name__ == "__main__":
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(render(), encoding="utf-8")
    print(f"wrote {OUT}")
