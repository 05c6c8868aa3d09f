"""Render the conda recipe offline, so that a broken recipe fails CI.

It checks what a build would rely on: the recipe parses and renders, it is noarch python,
its run requirements cover every dependency that pyproject.toml declares (torch is
``pytorch`` on conda, matplotlib is ``matplotlib-base``), and it tests the CLI and pip check.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

import tomllib
from rattler_build.stage0 import Stage0Recipe

ROOT = Path(__file__).resolve().parents[1]
CONDA_NAMES = {"torch": "pytorch", "matplotlib": "matplotlib-base"}


def main() -> int:
    path = ROOT / "recipe" / "recipe.yaml"
    recipe = Stage0Recipe.from_yaml(path.read_text(), recipe_dir=path.parent)
    variants = recipe.render()
    if not variants:
        print(f"{path}: rendered to no variant", file=sys.stderr)
        return 1
    rendered = variants[0].recipe.to_dict()
    problems = []
    if rendered["package"]["name"] != "lamost-rrnet":
        problems.append("package name is not lamost-rrnet")
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    if rendered["package"]["version"] != project["version"]:
        problems.append("recipe version differs from pyproject.toml")
    if rendered.get("build", {}).get("noarch") != "python":
        problems.append("build is not noarch: python")
    run = {re.split(r"[\s<>=]", r, maxsplit=1)[0] for r in rendered["requirements"]["run"]}
    for dep in project["dependencies"]:
        name = re.split(r"[\s<>=\[;]", dep, maxsplit=1)[0].lower()
        if CONDA_NAMES.get(name, name) not in run:
            problems.append(f"run requirements lack {CONDA_NAMES.get(name, name)}")
    tests = rendered.get("tests", [])
    # pip_check defaults to true, so the rendered recipe omits it unless it is switched off
    pip_check = any(t.get("python", {}).get("pip_check", True) for t in tests if "python" in t)
    if "lamost-rrnet --help" not in str(tests) or not pip_check:
        problems.append("tests must run `lamost-rrnet --help` and a pip check")
    for problem in problems:
        print(f"{path}: {problem}", file=sys.stderr)
    if not problems:
        print(f"{path}: renders ({len(variants)} variant), dependencies match pyproject.toml")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
