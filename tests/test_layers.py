"""The import rules docs/architecture.md states, checked on every module's source (imports inside functions
count too: a lazy import is still a dependency).

    pytest tests/test_layers.py
"""

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "ember"

# package -> packages (top-level parts of `ember`) it must never import
FORBIDDEN = {
    "store": {"models", "engine", "server", "cli", "finetune", "train", "evaluate"},
    "models": {"engine", "server", "cli", "finetune", "train", "evaluate"},
    "engine": {"server", "cli", "finetune", "train", "evaluate"},
    "train": {"server", "cli", "finetune", "evaluate"},
    "finetune": {"server", "cli"},
    "evaluate": {"server", "cli", "finetune", "train"},
    # interfaces reach models only through engine/, and serving runs no training code
    "server": {"models", "finetune", "train", "cli"},
    "cli": {"models"},
}
TOP_LEVEL = {"config", "errors"}  # modules every layer may use


def _imports(path: Path, src: Path = SRC) -> list[tuple[int, str]]:
    """(line, dotted module) for every `import ember...` / `from ember... import` in the file."""
    tree = ast.parse(path.read_text(), filename=str(path))
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names if a.name.startswith("ember.")]
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: resolve against the module's own package
                pkg = path.relative_to(src.parent).with_suffix("").parts[: -node.level]
                name = ".".join([*pkg, node.module] if node.module else pkg)
            else:
                name = node.module or ""
            if name == "ember":  # `from ember import engine`
                found += [(node.lineno, f"ember.{a.name}") for a in node.names]
            elif name.startswith("ember."):
                found.append((node.lineno, name))
    return found


def _violations(package: str, src: Path = SRC) -> list[str]:
    bad = []
    for path in sorted((src / package).rglob("*.py")):
        for line, module in _imports(path, src):
            target = module.split(".")[1]
            if target in FORBIDDEN[package]:
                bad.append(f"{path.relative_to(src.parent)}:{line} imports {module}")
    return bad


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_layer_imports(package):
    assert _violations(package) == []


def test_store_imports_only_store_config_errors():
    targets = {m.split(".")[1] for p in (SRC / "store").rglob("*.py") for _, m in _imports(p)}
    assert targets <= {"store"} | TOP_LEVEL


def test_the_checker_sees_lazy_and_relative_imports(tmp_path):
    """The rules above are only as good as the parser: function-level and relative imports count."""
    src = tmp_path / "ember"
    (src / "models").mkdir(parents=True)
    bad = src / "models" / "bad.py"
    bad.write_text("def f():\n    from ember.engine import compute\n\nfrom ..server import app\n"
                   "import ember.finetune.tag\nfrom ember import train\nfrom ember.store import db\n")
    found = {m for _, m in _imports(bad, src)}
    assert found == {"ember.engine", "ember.server", "ember.finetune.tag", "ember.train", "ember.store"}
    assert len(_violations("models", src)) == 4
