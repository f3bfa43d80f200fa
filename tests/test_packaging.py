"""What pyproject.toml declares matches the code and the tests.

Every third-party package that a module of ``airflow_provider_batch`` imports (at the top or inside a
function) comes from a declared dependency, and every declared floor is the version the lowest tier
installs (``constraints-airflow-3.1.txt``), so that the lowest versions we claim are the ones we test.
"""

from __future__ import annotations

import ast
import importlib.metadata
import sys
import tomllib
from collections import defaultdict
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import NormalizedName, canonicalize_name
from packaging.version import Version

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "airflow_provider_batch"
LOWEST_CONSTRAINTS = ROOT / "constraints-airflow-3.1.txt"
RUNTIME_EXTRAS = ("parquet",)
"""Extras that features of the package need (imported lazily, with a clear error when missing)."""


def declared_dependencies(*, extras: tuple[str, ...] = ()) -> list[Requirement]:
    """``[project] dependencies``, and those of the named extras."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    lines = [line for extra in extras for line in project["optional-dependencies"][extra]]
    return [Requirement(line) for line in [*project["dependencies"], *lines]]


def pinned_versions(constraints: Path) -> dict[NormalizedName, Version]:
    """``name==version`` lines of a constraints file (comments and blank lines skipped)."""
    pins = {}
    for line in constraints.read_text().splitlines():
        line = line.partition("#")[0].strip()
        if line:
            requirement = Requirement(line)
            [pin] = [spec.version for spec in requirement.specifier if spec.operator == "=="]
            pins[canonicalize_name(requirement.name)] = Version(pin)
    return pins


def third_party_imports(package: Path) -> dict[str, set[str]]:
    """The top-level names of the modules imported anywhere in ``package`` (function bodies
    included) that are neither in the standard library nor the package itself, each with the
    files importing it."""
    found: dict[str, set[str]] = defaultdict(set)
    for path in sorted(package.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if isinstance(node, ast.Import):
                modules = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                modules = [node.module]
            else:
                continue
            for module in modules:
                top = module.partition(".")[0]
                if top not in sys.stdlib_module_names and top != package.name:
                    found[top].add(path.relative_to(package.parent).as_posix())
    return found


def provided_top_levels(requirements: list[Requirement]) -> set[str]:
    """The top-level names the installed distributions of ``requirements`` provide.

    A distribution that only pins its parts exactly, as ``apache-airflow`` pins
    ``apache-airflow-core`` and ``apache-airflow-task-sdk``, provides what those parts provide.
    """
    names = {canonicalize_name(requirement.name) for requirement in requirements}
    for name in list(names):
        for line in importlib.metadata.requires(name) or []:
            part = Requirement(line)
            if part.marker is None and any(spec.operator == "==" for spec in part.specifier):
                names.add(canonicalize_name(part.name))
    return {
        top
        for top, distributions in importlib.metadata.packages_distributions().items()
        if names & {canonicalize_name(distribution) for distribution in distributions}
    }


def test_every_declared_floor_is_the_version_the_lowest_tier_pins() -> None:
    pins = pinned_versions(LOWEST_CONSTRAINTS)
    wrong = {}
    for requirement in declared_dependencies(extras=RUNTIME_EXTRAS):
        floors = [Version(spec.version) for spec in requirement.specifier if spec.operator == ">="]
        pinned = pins.get(canonicalize_name(requirement.name))
        if len(floors) != 1 or floors[0] != pinned:
            wrong[requirement.name] = (
                f"declared {requirement.specifier or 'no floor'}, the lowest tier pins {pinned}"
            )
    assert not wrong, (
        f"set each floor to the version {LOWEST_CONSTRAINTS.name} pins (or the pin to the floor): {wrong}"
    )


def test_every_third_party_import_comes_from_a_declared_dependency() -> None:
    provided = provided_top_levels(declared_dependencies(extras=RUNTIME_EXTRAS))
    undeclared = {
        top: sorted(files) for top, files in third_party_imports(PACKAGE).items() if top not in provided
    }
    assert not undeclared, f"imported, but no dependency in pyproject.toml provides them: {undeclared}"


def test_imports_are_found_inside_functions_too(tmp_path: Path) -> None:
    package = tmp_path / "somepackage"
    package.mkdir()
    (package / "module.py").write_text(
        "import os\nfrom . import sibling\nfrom somepackage import other\n"
        "def later():\n    import yaml.loader\n    from msgspec import json\n"
    )
    assert third_party_imports(package) == {
        "yaml": {"somepackage/module.py"},
        "msgspec": {"somepackage/module.py"},
    }
    assert "yaml" not in provided_top_levels(declared_dependencies())
