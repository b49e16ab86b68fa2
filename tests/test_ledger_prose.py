"""Every passage a notebook renders from the ledger names only metrics its entry holds.

A notebook's ci preset cannot check this before the entry exists (the cell then says "no entry yet"), so a template
that names a setting or a misspelt metric would only fail in the full run; here every template is rendered against
the committed entry."""
import ast, json
from pathlib import Path
import pytest
from contrastlab.ledger import from_ledger, ledger_dir

ROOT = Path(__file__).resolve().parents[1]

def _passages():
    for f in sorted((ROOT / "nbs").rglob("*.ipynb")):
        if ".ipynb_checkpoints" in f.parts: continue
        for i, c in enumerate(json.loads(f.read_text())["cells"]):
            src = "".join(c["source"])
            if c["cell_type"] != "code" or "# from the ledger" not in src: continue
            for node in ast.walk(ast.parse("\n".join(l for l in src.splitlines() if not l.lstrip().startswith("#")))):
                if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "from_ledger":
                    yield pytest.param(f, node, id=f"{f.relative_to(ROOT / 'nbs')}#{i}")

@pytest.mark.parametrize("nb,call", list(_passages()))
def test_ledger_passage_renders(nb, call):
    name, template = (ast.literal_eval(a) for a in call.args)     # literals only: a passage is fixed text
    if not (ledger_dir() / f"{name}.json").exists(): pytest.skip(f"no ledger entry {name} yet")
    text = from_ledger(name, template).data                        # raises KeyError on a metric the entry lacks
    assert "No ledger entry" not in text

def test_a_bad_field_is_caught():
    entry = next(iter(sorted(ledger_dir().glob("*.json")))).stem
    with pytest.raises(KeyError, match="not in the per-seed rows"): from_ledger(entry, "{no_such_metric_anywhere}")
