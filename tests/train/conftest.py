"""Fixtures shared by the run-folder tests of tests/train."""
import pytest


@pytest.fixture
def victim(tmp_path):
    """A file of the user's outside the run folder, which no write of a run may change."""
    path = tmp_path / "victim.txt"
    path.write_text("precious")
    yield path
    assert path.read_text() == "precious", "a write went through a planted link"
