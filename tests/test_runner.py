"The papermill runner and CLI: parameter checking, failure reports that name notebook and cell, results."
import json, os, subprocess, sys
from pathlib import Path
import nbformat, pytest
from contrastlab.runner import run_notebook, NotebookFailed, main, save_results, results_table

def _nb(path, cells, params="preset = 'full'\nx = 1"):
    nb = nbformat.v4.new_notebook()
    p = nbformat.v4.new_code_cell(params); p.metadata["tags"] = ["parameters"]
    nb.cells = [p] + [nbformat.v4.new_code_cell(c) for c in cells]
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "python3", "language": "python"}
    nbformat.write(nb, path); return path

def test_unknown_parameter_is_an_error(tmp_path):
    nb = _nb(tmp_path / "ok.ipynb", ["y = x + 1"])
    with pytest.raises(ValueError, match=r"has no parameter\(s\) \['typo'\]"):
        run_notebook(nb, tmp_path / "out", params={"typo": 3})

def test_misspelt_parameter_of_several_notebooks_is_an_error(tmp_path):
    "Regression (hardening issue): with several notebooks a parameter none of them declares was dropped silently."
    a, b = _nb(tmp_path / "a.ipynb", ["y = x"]), _nb(tmp_path / "b.ipynb", ["y = 1"], params="preset = 'full'\nseed = 0")
    from contrastlab.runner import run_notebooks
    with pytest.raises(ValueError, match=r"no notebook declares the parameter\(s\) \['seeed'\]; together they declare \['preset', 'seed', 'x'\]"):
        run_notebooks([a, b], params={"seeed": 1}, out=tmp_path / "out")
    assert not (tmp_path / "out").exists(), "nothing may run before the parameters are checked"

def test_results_on_a_corrupt_file_names_it(tmp_path, capsys):
    "Regression (hardening issue): `contrastlab results` on a corrupt JSON ended in a traceback without the file's name."
    (tmp_path / "broken.json").write_text("{not json")
    for argv in (["results", str(tmp_path)], ["results", str(tmp_path), "--all"]):
        assert main(argv) == 2
        assert "broken.json is not a valid JSON record" in capsys.readouterr().err
    (tmp_path / "broken.json").write_text('{"name": "x"}')
    assert main(["results", str(tmp_path)]) == 2
    assert "lacks the field(s) ['preset', 'seed']" in capsys.readouterr().err

def test_failure_names_notebook_and_cell(tmp_path):
    nb = _nb(tmp_path / "bad.ipynb", ["y = x + 1", "raise RuntimeError('boom at cell two')"])
    with pytest.raises(NotebookFailed) as e: run_notebook(nb, tmp_path / "out")
    msg = str(e.value)
    assert "bad.ipynb" in msg and "boom at cell two" in msg and "RuntimeError" in msg and "raise RuntimeError" in msg

def test_cli_exit_codes_and_table(tmp_path, capsys):
    ok = _nb(tmp_path / "ok.ipynb", ["from contrastlab.runner import save_results",
                                     "save_results('demo', {'acc': 0.5 + x / 10}, preset=preset, seed=0)"])
    bad = _nb(tmp_path / "bad.ipynb", ["assert x == 2, 'x must be 2'"])
    assert main(["run", str(ok), "--preset", "ci", "-p", "x", "3", "--out", str(tmp_path / "r1")]) == 0
    out = capsys.readouterr().out
    assert "demo" in out and "[ci, seed 0] no registered claims" in out
    assert main(["results", str(tmp_path / "r1" / "results"), "--all"]) == 0
    assert "demo [ci" in capsys.readouterr().out
    assert main(["run", str(ok), str(bad), "--out", str(tmp_path / "r2")]) == 1
    err = capsys.readouterr().err
    assert "bad.ipynb" in err and "x must be 2" in err
    assert main(["run", str(ok), "-p", "nosuch", "1", "--out", str(tmp_path / "r3")]) == 2

def test_save_results_records_provenance(tmp_path, monkeypatch):
    monkeypatch.setenv("CONTRASTLAB_RESULTS", str(tmp_path))
    p = save_results("x", {"a": 1.0}, preset="full", seed=3)
    rec = json.loads(p.read_text())
    assert rec["preset"] == "full" and rec["seed"] == 3 and "torch" in rec["versions"] and rec["wall_time_s"] >= 0
    with pytest.raises(ValueError, match="non-empty dict"): save_results("x", {}, preset="ci", seed=0)

def test_every_preset_cell_is_tagged_parameters():
    "A `preset = ...` cell without papermill's `parameters` tag silently runs its default (`full`) under `preset='ci'`."
    import ast, re
    root = Path(__file__).resolve().parents[1] / "nbs"
    untagged = []
    for path in sorted(root.rglob("*.ipynb")):
        for cell in nbformat.read(path, as_version=4).cells:
            if cell.cell_type == "code" and re.match(r"\s*preset\s*=", cell.source):
                if "parameters" not in cell.metadata.get("tags", []): untagged.append(str(path.relative_to(root)))
    assert not untagged, f"parameters cells without the `parameters` tag (nbdev-clean strips it unless allowed): {untagged}"

def test_nbdev_clean_keeps_the_parameters_tag(tmp_path):
    "nbdev-clean drops cell metadata it is not told to keep; pyproject's allowed_cell_metadata_keys must list `tags`."
    import shutil
    root = Path(__file__).resolve().parents[1]
    shutil.copy(root / "pyproject.toml", tmp_path / "pyproject.toml"); (tmp_path / "nbs").mkdir()
    nb = _nb(tmp_path / "nbs" / "check.ipynb", ["y = x + 1"])
    subprocess.run([str(Path(sys.executable).parent / "nbdev-clean"), "--fname", str(nb)], check=True, cwd=tmp_path)
    assert nbformat.read(nb, as_version=4).cells[0].metadata.get("tags") == ["parameters"]
