"""The house rule, read from the code: layers never import papers (methods or zoo modules), and papers never import papers.

Checked on the generated modules and on the notebooks' code cells (a paper notebook may use the layers, not another paper)."""
import ast, json
from pathlib import Path
import pytest
from contrastlab.registry import FAMILIES

ROOT = Path(__file__).resolve().parents[1]
PAPER_PKGS = ("methods", "zoo")

def _paper(mod: str):
    "The paper a module name belongs to ('contrastlab.methods.hydra' → 'methods.hydra'), or None for a layer."
    parts = mod.split(".")
    if len(parts) >= 3 and parts[0] == "contrastlab" and parts[1] in PAPER_PKGS and parts[2] != "__init__": return ".".join(parts[1:3])
    return None

def imports_of(source: str, module: str) -> set:
    "Every module name an import statement of `source` (the code of `module`) refers to, relative imports resolved."
    out = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import): out |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = ".".join(module.split(".")[:-node.level] + ([node.module] if node.module else [])) if node.level else (node.module or "")
            out |= {base} | {f"{base}.{a.name}" for a in node.names}
    return out

def violations(source: str, module: str) -> list:
    "The imports of `module` that break the rule."
    me = _paper(module)
    bad = []
    for target in sorted(imports_of(source, module)):
        other = _paper(target)
        if other is None or other == me: continue
        bad.append(f"{module} imports {target}: " + ("a layer may not import a paper" if me is None else "a paper may not import another paper"))
    return bad

def _modules():
    for f in sorted((ROOT / "contrastlab").rglob("*.py")):
        if f.name == "_modidx.py": continue
        rel = f.relative_to(ROOT).with_suffix("")
        yield f, ".".join(rel.parts[:-1] if rel.name == "__init__" else rel.parts)

def _notebooks():
    for f in sorted((ROOT / "nbs").rglob("*.ipynb")):
        if ".ipynb_checkpoints" in f.parts: continue
        rel = f.relative_to(ROOT / "nbs").with_suffix("")
        module = "contrastlab." + ".".join(rel.parts if rel.name != "index" else rel.parts[:-1])
        cells = json.loads(f.read_text())["cells"]
        src = "\n".join("\n".join(l for l in "".join(c["source"]).splitlines() if not l.lstrip().startswith(("%", "!")))
                        for c in cells if c["cell_type"] == "code")
        yield f, module, src

def test_no_module_breaks_the_rule():
    bad = [v for f, mod in _modules() for v in violations(f.read_text(), mod)]
    assert not bad, "\n".join(bad)


def gallery_violations(source: str, module: str) -> list:
    "A family's gallery (`nbs/zoo/<family>.ipynb`) compares the family's zoo papers, so it may import them; it exports nothing and imports no method."
    bad = [f"{module} exports a module: a gallery only compares papers"] if "default_exp" in source else []
    return bad + [f"{module} imports {t}: a gallery compares zoo papers, not methods" for t in sorted(imports_of(source, module))
                  if (_paper(t) or "").startswith("methods.")]

GALLERIES = (*FAMILIES, "decoding")    # a family's gallery, plus the decoding gallery of the retrieval family (its decoders side by side)

def _is_gallery(module: str) -> bool: return module.startswith("contrastlab.zoo.") and module.rsplit(".", 1)[1] in GALLERIES

def test_no_notebook_breaks_the_rule():
    bad = [f"{f.relative_to(ROOT)}: {v}" for f, mod, src in _notebooks()
           for v in (gallery_violations(src, mod) if _is_gallery(mod) else violations(src, mod))]
    assert not bad, "\n".join(bad)

def test_the_gallery_rule():
    assert not gallery_violations("from contrastlab.zoo.dcl import train_dcl\nfrom contrastlab.zoo.swav import train_swav", "contrastlab.zoo.vision")
    assert gallery_violations("from contrastlab.methods.simclr import train_simclr", "contrastlab.zoo.vision")
    assert gallery_violations("#| default_exp zoo.vision", "contrastlab.zoo.vision")
    assert _is_gallery("contrastlab.zoo.decoding") and not gallery_violations(
        "from contrastlab.zoo.contrastive_search import contrastive_search\nfrom contrastlab.zoo.lol import contrastive_decode", "contrastlab.zoo.decoding")
    assert not _is_gallery("contrastlab.zoo.lol")
    assert violations("from contrastlab.zoo.dcl import train_dcl", "contrastlab.zoo.swav"), "a paper is not a gallery"

@pytest.mark.parametrize("module,source", [
    ("contrastlab.losses.named", "from contrastlab.methods.hydra import hydra_loss"),       # a layer imports a paper
    ("contrastlab.metrics.probes", "from ..zoo import dcl"),                                 # relative, into the zoo
    ("contrastlab.methods.sepclr", "from .simclr import train_simclr"),                     # a method imports a method
    ("contrastlab.zoo.swav", "import contrastlab.methods.beclr"),                            # a zoo paper imports a method
])
def test_the_check_catches_each_kind_of_violation(module, source):
    assert violations(source, module), f"{source!r} in {module} should be flagged"

def test_the_check_allows_layers_and_own_imports():
    assert not violations("from contrastlab.losses import info_nce_loss\nfrom ..nets import Conv4", "contrastlab.methods.beclr")
    assert not violations("from contrastlab.zoo.dcl import dcl", "contrastlab.zoo.dcl")
