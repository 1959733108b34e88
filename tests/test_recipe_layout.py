"""The diffusion recipes read top to bottom: each imports from at most three vislora packages and branches
on no task (the training loop they share lives in vislora.diffusion)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

RECIPES = Path(__file__).resolve().parents[1] / "recipes"


def _tree(name: str) -> ast.Module:
    return ast.parse((RECIPES / name).read_text(encoding="utf-8"))


@pytest.mark.parametrize("name", ["dreambooth_sd.py", "style_sd.py"])
def test_a_diffusion_recipe_imports_from_at_most_three_vislora_packages(name):
    packages = set()
    for node in ast.walk(_tree(name)):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "vislora":
            parts = node.module.split(".")
            if parts[1:2] == ["recipes"]:
                continue  # a sibling recipe
            packages.add(parts[1] if len(parts) > 1 else f"vislora.{node.names[0].name}")
    assert 1 <= len(packages) <= 3, packages


@pytest.mark.parametrize("name", ["dreambooth_sd.py", "style_sd.py"])
def test_a_diffusion_recipe_has_no_task_branches(name):
    reads = [node for node in ast.walk(_tree(name))
             if isinstance(node, ast.Attribute) and node.attr == "task" and isinstance(node.ctx, ast.Load)]
    assert not reads, [ast.unparse(n) for n in reads]
