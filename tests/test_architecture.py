"""The layout is the design: the folders are the layers of the import contract
(pyproject.toml, run by `lint-imports` in CI), and the README's Architecture
section names every module, so neither can drift from the code unnoticed."""

import pkgutil
import re
import tomllib
from pathlib import Path

import recommender

ROOT = Path(__file__).resolve().parents[1]
LIBRARY = ("recommender", "api", "embeddings")


def contract_layers() -> list[str]:
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]
    (contract,) = [c for c in config["contracts"] if c["type"] == "layers"]
    names = []
    for layer in contract["layers"]:
        names += [part.strip() for part in layer.replace(":", "|").split("|")]
    return names


def library_modules() -> set[str]:
    return {str(path.relative_to(ROOT)) for package in LIBRARY for path in (ROOT / package).rglob("*.py")
            if path.name != "__init__.py"}


def test_every_top_level_module_and_subpackage_has_a_layer():
    named = set(contract_layers())
    top = {f"recommender.{m.name}" for m in pkgutil.iter_modules(recommender.__path__)}
    assert top - named == set(), "add the new module to [tool.importlinter] in pyproject.toml"


def test_the_library_lives_in_subpackages():
    top = [m.name for m in pkgutil.iter_modules(recommender.__path__) if not m.ispkg]
    assert sorted(top) == ["cli", "errors", "settings"]
    assert {m.name for m in pkgutil.iter_modules(recommender.__path__) if m.ispkg} == {
        "text", "store", "index", "ranking", "audience", "serving"}


def test_the_top_packages_are_layered():
    assert {"api", "eval", "embeddings", "recommender.cli"} <= set(contract_layers())


def test_the_readme_architecture_names_every_module():
    readme = (ROOT / "README.md").read_text()
    section = readme[readme.index("## Architecture"):readme.index("## The HTTP API")]
    named = set(re.findall(r"`([\w/]+\.py)`", section))
    assert library_modules() - named == set(), "name the new module in the README's Architecture table"
    assert named - library_modules() - {"tests/test_architecture.py"} <= {
        p for p in named if p.startswith("eval/")}, "the Architecture table names a module that is gone"
