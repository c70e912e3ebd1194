"""The layout holds: imports point one way between the rooms, the wheel lists every package, the
public surface stays small, and modules stay a few hundred lines."""

import ast
from pathlib import Path

import tomllib

import hf_kgelu

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "hf_kgelu"
# Rooms from the bottom up: a module may import its own room and the ones before it, never after.
ROOMS = [
    {"ops"},
    {"hardness"},
    {"modeling"},
    {"metrics"},
    {"data"},
    {"relu", "substitution"},
    {"training"},
    {"plotting"},
    {"conversion"},
    {"publishing"},
    {"checkpoint"},
    {"presets", "analysis"},
    {"script_arguments", "demo", "cli"},
]
RANK = {room: rank for rank, rooms in enumerate(ROOMS) for room in rooms}
MAX_LINES = 500


def _room(path: Path) -> str:
    parts = path.relative_to(PACKAGE).with_suffix("").parts
    return parts[0]


def _imported_rooms(path: Path):
    """Rooms of hf_kgelu imported anywhere in the module (top level or inside functions)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    package_parts = path.relative_to(ROOT).with_suffix("").parts[:-1]  # ('hf_kgelu', 'training')
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package_parts[: len(package_parts) - (node.level - 1)]
                target = [*base, *(node.module.split(".") if node.module else [])]
                names = [] if node.module else [alias.name for alias in node.names]
            elif node.module and node.module.split(".")[0] == "hf_kgelu":
                target, names = node.module.split("."), []
            else:
                continue
            if len(target) > 1:
                yield target[1], node.lineno
            for name in names:  # `from . import x` at the package root
                yield name, node.lineno
        elif isinstance(node, ast.Import):
            for alias in node.names:
                parts = alias.name.split(".")
                if parts[0] == "hf_kgelu" and len(parts) > 1:
                    yield parts[1], node.lineno


def test_imports_point_one_way():
    wrong = []
    for path in sorted(PACKAGE.rglob("*.py")):
        if path.parent == PACKAGE and path.name == "__init__.py":
            continue  # the package root re-exports the public names
        room = _room(path)
        assert room in RANK, f"{path.relative_to(ROOT)} is in no room of this test's list: add it to ROOMS"
        for imported, line in _imported_rooms(path):
            if imported in RANK and RANK[imported] > RANK[room]:
                wrong.append(f"{path.relative_to(ROOT)}:{line} ({room}) imports {imported}")
    assert not wrong, "imports against the arrows:\n" + "\n".join(wrong)


def test_the_wheel_lists_every_package():
    config = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["tool"]["setuptools"]
    listed = set(config["packages"])
    found = {".".join(p.parent.relative_to(ROOT).parts) for p in PACKAGE.rglob("__init__.py")}
    assert found | {"hf_kgelu.model_cards"} == listed
    assert config["package-dir"]["hf_kgelu.model_cards"] == "model_cards"


def test_public_surface_is_small_and_resolves():
    assert 12 <= len(hf_kgelu.__all__) <= 18
    for name in hf_kgelu.__all__:
        assert getattr(hf_kgelu, name) is not None


def test_modules_stay_a_few_hundred_lines():
    long = {str(p.relative_to(ROOT)): n for p in PACKAGE.rglob("*.py") if (n := len(p.read_text().splitlines())) > MAX_LINES}
    assert not long, f"modules over {MAX_LINES} lines: {long}"
