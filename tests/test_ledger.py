"""The evidence layer: ledger entries are complete and current, staleness is detected, effect checks need a failing control,
verdicts follow their table. The entries themselves are committed under ledger/ by `make run PRESET=full`."""
import json, shutil
from pathlib import Path
import nbformat, pytest
from contrastlab import ledger
from contrastlab.ledger import (check_effect, code_hash, load_entry, record, stale_entries, summarize, verdict, claims_report,
                                ledger_markdown, metric_values, from_ledger, PROSE_MARK, EXPLORER_MARK)
from contrastlab.registry import papers, Claim
from conftest import ROOT

ENTRIES = sorted((ROOT / "ledger").glob("*.json"))

def test_no_entry_is_stale():
    "Every committed entry was measured on the code as it is now (rerun `make run PRESET=full` for the ones listed)."
    assert stale_entries() == [], f"stale ledger entries (the code changed since they were measured): {stale_entries()}"

# Papers whose full preset has not been run into the ledger yet (issue 21 is open until this is empty). The list may only
# shrink: a paper that gains an entry must leave it, and any other paper with claims must have its entry.
PENDING = set()        # papers whose full run exists but whose entry is not recorded yet (see the closing note of their issue)

def test_every_paper_with_claims_has_a_full_entry():
    have = {p.stem for p in ENTRIES}
    missing = sorted(p.key for p in papers() if p.claims and p.key not in have and p.key not in PENDING)
    assert not missing, f"papers with registered claims but no ledger entry: {missing}"
    done = sorted(PENDING & have)
    assert not done, f"{done} now have ledger entries: remove them from PENDING"

def test_the_six_methods_declare_claims():
    without = [p.key for p in papers("methods") + papers("baseline") if not p.claims]
    assert not without, f"method papers without claims: {without}"

@pytest.mark.parametrize("path", ENTRIES, ids=[p.stem for p in ENTRIES])
def test_entry_is_complete(path):
    e = json.loads(path.read_text())
    assert e["preset"] == "full" and len(e["per_seed"]) >= 3 and len(set(e["seeds"])) == len(e["seeds"])
    for k in ("device", "versions", "commit", "code", "wall_time_s", "date", "settings", "claims", "effects"):
        assert k in e, f"{path.name} lacks {k}"
    assert e["device"]["type"] and e["device"]["name"]
    for p in ("torch", "numpy", "scikit-learn", "pillow", "mnist1d", "contrastlab"): assert p in e["versions"]
    assert e["code"]["modules"], "the code hash covers no module"
    for c in e["claims"]: assert c["verdict"] in ledger.VERDICTS
    for x in e["effects"]: assert x["method"] is True and not any(x["controls"].values()), f"{path.name}: {x}"

def _project(tmp_path, monkeypatch):
    "A scratch project: pyproject.toml, one notebook with a code cell and a prose cell, its own ledger and results folders."
    (tmp_path / "pyproject.toml").write_text("[project]\nname='scratch'\n"); (tmp_path / "nbs").mkdir()
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell("from contrastlab.core import seed_everything\nx = 1"),
                nbformat.v4.new_code_cell(f"#| echo: false\n{PROSE_MARK}\nfrom_ledger('scratch', 'acc {{acc}}')")]
    path = tmp_path / "nbs" / "scratch.ipynb"; nbformat.write(nb, path)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("CONTRASTLAB_LEDGER", str(tmp_path / "ledger")); monkeypatch.setenv("CONTRASTLAB_RESULTS", str(tmp_path / "results"))
    return path, nb

def test_stale_when_code_changes_not_when_prose_does(tmp_path, monkeypatch):
    path, nb = _project(tmp_path, monkeypatch)
    assert record("scratch", [dict(seed=0, acc=0.5), dict(seed=1, acc=0.7)], "ci", notebook="scratch.ipynb") is None
    assert not (tmp_path / "ledger").exists(), "the ci preset must not write the ledger"
    record("scratch", [dict(seed=0, acc=0.5), dict(seed=1, acc=0.7)], "full", notebook="scratch.ipynb")
    assert stale_entries() == []
    nb.cells[1].source = nb.cells[1].source.replace("acc {acc}", "accuracy {acc:.1%}"); nbformat.write(nb, path)
    assert stale_entries() == [], "editing a prose-from-the-ledger cell must not make the entry stale"
    nb.cells.append(nbformat.v4.new_code_cell(f"{EXPLORER_MARK}\nexplorer(lambda k: None, k=[1, 2])")); nbformat.write(nb, path)
    assert stale_entries() == [], "adding an explorer cell must not make the entry stale"
    nb.cells[0].source = "x = 2"; nbformat.write(nb, path)
    assert stale_entries() == ["scratch"], "editing a code cell must make the entry stale"
    assert "Stale" in from_ledger("scratch", "acc {acc}").data

NOTEBOOKS = sorted((ROOT / "nbs").rglob("*.ipynb"))

@pytest.mark.parametrize("path", NOTEBOOKS, ids=[str(p.relative_to(ROOT / "nbs")) for p in NOTEBOOKS])
def test_explorer_cells_come_after_the_record_cell(path):
    "An explorer cell is not hashed, so it may only come after every cell that computes what the ledger records."
    cells = [c.source for c in nbformat.read(path, 4).cells if c.cell_type == "code"]
    marked = [i for i, s in enumerate(cells) if ledger._unhashed(s) and EXPLORER_MARK in s.splitlines()[:3]]
    if not marked: return
    rec = [i for i, s in enumerate(cells) if "record(" in s and not ledger._unhashed(s)]
    assert rec, f"{path.name} has explorer cells but no record cell"
    assert min(marked) > max(rec), f"{path.name}: explorer cell {min(marked)} comes before the record cell {max(rec)}"
    assert all(ledger._unhashed(s) for s in cells[min(marked):]), f"{path.name}: a hashed code cell follows the explorer cells"

def test_hash_follows_module_imports():
    h = code_hash(ROOT / "nbs" / "methods" / "simclr.ipynb")
    assert {"contrastlab.methods.simclr", "contrastlab.train", "contrastlab.losses.core", "contrastlab.core"} <= set(h["modules"])
    assert not set(h["modules"]) & set(ledger.NOT_HASHED)

def test_from_ledger_renders_mean_ci_and_provenance(tmp_path, monkeypatch):
    _project(tmp_path, monkeypatch)
    record("scratch", [dict(seed=0, acc=0.5, b=0.1), dict(seed=1, acc=0.7, b=0.2), dict(seed=2, acc=0.6, b=0.1)], "full", notebook="scratch.ipynb")
    md = from_ledger("scratch", "gain {acc - b:.2f}").data
    assert "**0.47 ± " in md and "ledger/scratch.json" in md and "3 seeds" in md and "Stale" not in md
    assert "No ledger entry" in from_ledger("nosuch", "x {acc}").data

def test_check_effect_needs_a_control_that_fails():
    rec = check_effect("acc > 0.6", lambda m: m > 0.6, 0.8, {"untrained": 0.3})
    assert rec == dict(claim="acc > 0.6", method=True, controls={"untrained": False})
    with pytest.raises(AssertionError, match="vacuous"): check_effect("acc > 0.2", lambda m: m > 0.2, 0.8, {"untrained": 0.3})
    with pytest.raises(AssertionError, match="not shown"): check_effect("acc > 0.9", lambda m: m > 0.9, 0.8, {"untrained": 0.3})
    with pytest.raises(ValueError, match="non-empty dict"): check_effect("acc", lambda m: True, 0.8, {})

def test_verdict_table():
    assert verdict(summarize([0.05, 0.06, 0.07]), 0.02) == "reproduced"
    assert verdict(summarize([0.05, 0.06, 0.07]), 0.1) == "partly"
    assert verdict(summarize([0.9])) == "partly", "one seed is never 'reproduced'"
    assert verdict(summarize([-0.05, 0.01, 0.02])) == "not reproduced"
    assert verdict(summarize([-0.05, -0.06, -0.07])) == "reversed"
    with pytest.raises(ValueError): summarize([])

def test_metric_values_pairs_seeds():
    assert metric_values([dict(a=3, b=1), dict(a=5, b=2)], "a - b") == [2.0, 3.0]
    with pytest.raises(KeyError, match="'c' is not in"): metric_values([dict(a=1)], "a - c")
    with pytest.raises(ValueError, match="'a - b'"): metric_values([dict(a=1)], "a - b - c")

def test_record_validates(tmp_path, monkeypatch):
    _project(tmp_path, monkeypatch)
    with pytest.raises(TypeError, match="must be a number"): record("scratch", [dict(seed=0, acc="high")], "ci", notebook="scratch.ipynb")
    with pytest.raises(ValueError, match="non-empty list"): record("scratch", [], "ci", notebook="scratch.ipynb")
    with pytest.raises(ValueError, match="not a registered paper"): record("scratch", [dict(seed=0, acc=1.0)], "ci")
    with pytest.raises(ValueError, match="preset"): record("scratch", [dict(seed=0, acc=1.0)], "fast", notebook="scratch.ipynb")

def test_ledger_page_lists_every_paper_with_claims():
    md = ledger_markdown()
    for p in papers():
        if p.claims: assert f"[{p.key}](" in md
    pending_rows = sum(len(p.claims) for p in papers() if p.key in PENDING)
    assert md.count("no entry yet") == pending_rows, "only the pending papers may lack an entry on the page"

def test_claims_report_of_a_run(tmp_path, monkeypatch):
    _project(tmp_path, monkeypatch)
    record("scratch", [dict(seed=0, acc=0.5)], "ci", notebook="scratch.ipynb",
           effects=[check_effect("acc > 0.4", lambda m: m > 0.4, 0.5, {"untrained": 0.1})])
    out = claims_report(tmp_path / "results")
    assert "scratch" in out and "effect: acc > 0.4" in out and "untrained" in out

def test_cuda_entries_live_beside_the_cpu_ones(tmp_path, monkeypatch):
    "An entry measured on CUDA goes to ledger/cuda/, leaves the CPU entry alone, and pairs with it in `device_comparison`."
    _project(tmp_path, monkeypatch)
    rows = [dict(seed=0, acc=0.5), dict(seed=1, acc=0.7)]
    assert record("scratch", rows, "full", notebook="scratch.ipynb") == tmp_path / "ledger" / "scratch.json"
    assert ledger.device_comparison() == [], "no CUDA entry yet"
    monkeypatch.setattr(ledger, "device_info", lambda device=None: dict(type="cuda", name="Fake GPU", platform="test"))
    gpu = record("scratch", [dict(seed=0, acc=0.6), dict(seed=1, acc=0.8)], "full", notebook="scratch.ipynb", device="cuda")
    assert gpu == tmp_path / "ledger" / "cuda" / "scratch.json"
    assert load_entry("scratch")["device"]["type"] == "cpu" and load_entry("scratch")["per_seed"][0]["acc"] == 0.5
    assert load_entry("scratch", "cuda")["device"]["name"] == "Fake GPU"
    assert stale_entries() == [] and stale_entries("cuda") == []
    (row,) = ledger.device_comparison()
    assert row["name"] == "scratch" and row["device_name"] == "Fake GPU" and row["speedup"] > 0 and row["stale"] is False
    with pytest.raises(FileNotFoundError, match=r"no ledger entry 'other' in ledger/cuda/"):
        load_entry("other", "cuda")
