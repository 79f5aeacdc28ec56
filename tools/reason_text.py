"""Write tbedge/webui/reasons.json from docs/reason-codes.md: the "raised when" / "set by" column of its
two tables, which `tbedge ui` shows under each reason code and QA flag. The doc is the one source; the
meanings themselves come from tbedge/schema.py (which the doc copies verbatim). tests/test_ui.py fails when
the JSON and the doc drift: run `python tools/reason_text.py` after editing the doc."""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DOC = REPO / "docs" / "reason-codes.md"
OUT = REPO / "tbedge" / "webui" / "reasons.json"
_ROW = re.compile(r"^\|\s*`([a-z0-9_]+)`\s*\|[^|]*\|(.*)\|\s*$")
_SECTIONS = {"## Reason codes": "reasons", "## QA flags": "qa_flags"}


def _plain(md: str) -> str:
    """Markdown cell -> text: code spans and emphasis unmarked, whitespace squeezed."""
    return " ".join(re.sub(r"[`*]", "", md).split())


def parse(text: str) -> dict[str, dict[str, str]]:
    out: dict[str, dict[str, str]] = {v: {} for v in _SECTIONS.values()}
    section = None
    for line in text.splitlines():
        if line.startswith("## "):
            section = next((v for k, v in _SECTIONS.items() if line.startswith(k)), None)
        elif section and (m := _ROW.match(line)):
            out[section][m.group(1)] = _plain(m.group(2))
    return out


def render(text: str) -> str:
    return json.dumps(parse(text), indent=1, sort_keys=True, ensure_ascii=False) + "\n"


if __name__ == "__main__":
    OUT.write_text(render(DOC.read_text()), encoding="utf-8")
    print(f"wrote {OUT.relative_to(REPO)}", file=sys.stderr)
