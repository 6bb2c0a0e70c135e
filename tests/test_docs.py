"""The project's docs stand alone: no reference to a file the repository does not hold, and every
"METHOD.md §N" a docstring, help text or doc cites is a section of docs/METHOD.md."""
from __future__ import annotations

import re
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _tracked_text() -> dict[str, str]:
    names = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True).stdout.split()
    out = {}
    for name in names:
        if name.endswith((".py", ".md", ".yaml", ".sh", ".toml", ".cpp", ".h")) and (ROOT / name).is_file():
            out[name] = (ROOT / name).read_text(errors="replace")
    return out


def test_no_file_cites_a_document_outside_the_repository():
    outside = [name for name, text in _tracked_text().items()
               if name != "tests/test_docs.py" and re.search(r"\b(KLAS|DESIGN|STYLE)\.md\b", text)]
    assert not outside, outside


def test_every_cited_method_section_exists():
    method = (ROOT / "docs" / "METHOD.md").read_text()
    sections = set(re.findall(r"^## §(\d+)", method, re.M))
    cited = {(name, n) for name, text in _tracked_text().items() for n in re.findall(r"METHOD\.md §(\d+)", text)}
    assert cited, "nothing cites docs/METHOD.md"
    assert {n for _, n in cited} <= sections, sorted(c for c in cited if c[1] not in sections)


def test_docs_architecture_names_every_module():
    """docs/ARCHITECTURE.md's layout holds every module of klas/, kernels/ and csrc/ (by file name,
    under its own package's heading), so a new module cannot go unexplained."""
    doc = (ROOT / "docs" / "ARCHITECTURE.md").read_text()
    layout = doc.split("## Layout", 1)[1].split("```", 2)[1]
    missing = []
    for folder, pattern in (("klas", "*.py"), ("kernels", "*.py"), ("csrc", "*.*")):
        for path in sorted((ROOT / folder).rglob(pattern)):
            if path.name == "__init__.py" or path.suffix not in (".py", ".cpp", ".h"):
                continue
            stem, ext = path.stem, path.suffix.lstrip(".")
            named = re.search(rf"(^|\s){re.escape(path.name)}\s", layout) or re.search(
                rf"(^|\s){re.escape(stem)}\.\{{[a-z,]*\b{ext}\b[a-z,]*\}}", layout)
            if not named:
                missing.append(str(path.relative_to(ROOT)))
    assert not missing, missing
