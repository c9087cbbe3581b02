"""The import contract (pyproject.toml, run by `lint-imports` in CI) names every
module, so a new module cannot sit outside the layering unnoticed."""

import pkgutil
import tomllib
from pathlib import Path

import recommender

ROOT = Path(__file__).resolve().parents[1]


def contract_layers() -> list[str]:
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]
    (contract,) = [c for c in config["contracts"] if c["type"] == "layers"]
    names = []
    for layer in contract["layers"]:
        names += [part.strip() for part in layer.replace(":", "|").split("|")]
    return names


def test_every_library_module_has_a_layer():
    named = set(contract_layers())
    modules = {f"recommender.{m.name}" for m in pkgutil.iter_modules(recommender.__path__)}
    assert modules - named == set(), "add the new module to [tool.importlinter] in pyproject.toml"


def test_the_top_packages_are_layered():
    assert {"api", "eval", "embeddings", "recommender.cli"} <= set(contract_layers())

