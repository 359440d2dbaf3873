"""The docs cannot drift from the code: the config table of docs/training.md is generated from the config sections'
field metadata (tools/config_docs.py) and must be up to date; relative links of the README and docs pages must
point at files of the repository."""
import importlib.util
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def _config_docs():
    spec = importlib.util.spec_from_file_location("config_docs", ROOT / "tools" / "config_docs.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_config_table_is_up_to_date():
    config_docs = _config_docs()
    text = config_docs.DOC.read_text()
    assert config_docs.render(text) == text, "docs/training.md's config table is stale: run python tools/config_docs.py"


def test_config_table_names_every_key_with_its_help():
    import dataclasses

    from kale_fast.train.config import SECTIONS

    config_docs = _config_docs()
    text = config_docs.table()
    for section, cls in SECTIONS.items():
        assert f"**{section}** (`config.{section}`, {cls.__name__})" in text
        for field in dataclasses.fields(cls):
            row = next(line for line in text.splitlines() if line.startswith(f"| `{field.name}` "))
            assert config_docs._cell(field.metadata["help"]) in row


def test_stale_table_is_detected_and_rewritten():
    config_docs = _config_docs()
    stale = f"intro\n{config_docs.BEGIN}\n| `n_iter` | int | `5` | an old description |\n{config_docs.END}\noutro\n"
    fresh = config_docs.render(stale)
    assert fresh != stale and "an old description" not in fresh
    assert fresh.startswith("intro\n") and fresh.endswith("outro\n")
    assert config_docs.render(fresh) == fresh


def test_missing_markers_are_an_error():
    with pytest.raises(ValueError, match="markers"):
        _config_docs().render("no markers here\n")


DOC_PAGES = sorted(p.relative_to(ROOT).as_posix() for p in (ROOT / "docs").glob("*.md"))


@pytest.mark.parametrize("page", ["README.md", *DOC_PAGES])
def test_relative_links_point_into_the_repository(page):
    path = ROOT / page
    text = path.read_text()
    if page == "README.md":
        assert "../shared" not in text, "the README points users outside the repository"
    for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", text):
        if "://" in target:
            continue
        resolved = (path.parent / target).resolve()
        assert resolved.is_relative_to(ROOT) and resolved.exists(), f"{page} links to {target}, which is missing"
