"""tests/RELIABILITY.md is generated from the tests' lists and names only tests that exist."""
import importlib
from pathlib import Path

from tests.reliability import markdown, rows

ROOT = Path(__file__).resolve().parents[1]


def test_every_named_test_exists():
    for _, _, test in rows():
        path, name = test.split("::")
        module = importlib.import_module(path.removesuffix(".py").replace("/", "."))
        assert callable(getattr(module, name, None)), test


def test_committed_matrix_is_current():
    assert (ROOT / "tests" / "RELIABILITY.md").read_text() == markdown(), (
        "regenerate with: python -m tests.reliability > tests/RELIABILITY.md")
