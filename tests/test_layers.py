"""The declared layer order (pyproject.toml, [tool.importlinter]): functional < kernels < core < formats <
model operations < bank < train < diffusion | classify < tools < studio < cli < recipes. An import that
reaches upward, lazy ones inside functions included, fails here."""

from pathlib import Path

from importlinter.cli import lint_imports

ROOT = Path(__file__).resolve().parents[1]


def test_imports_follow_the_declared_layers(monkeypatch, capsys):
    monkeypatch.chdir(ROOT)  # recipes/ imports as `recipes` from the repository root
    monkeypatch.syspath_prepend(str(ROOT))
    code = lint_imports(config_filename=str(ROOT / "pyproject.toml"), no_cache=True, no_logo=True)
    out = capsys.readouterr().out
    assert code == 0, out
    assert "1 kept, 0 broken" in out
