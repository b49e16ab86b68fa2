"Every notebook, executed headlessly with papermill and preset='ci'. A failure names the notebook and the cell."
import pytest
from contrastlab.runner import default_notebooks, run_notebook, NotebookFailed, project_root
from conftest import CI_RUN, ROOT

NBS = default_notebooks(ROOT / "nbs")

@pytest.mark.notebooks
@pytest.mark.parametrize("nb", NBS, ids=[str(p.relative_to(ROOT / "nbs")) for p in NBS])
def test_notebook(nb):
    out = CI_RUN / nb.parent.relative_to(ROOT / "nbs")
    try:
        run_notebook(nb, out, preset="ci")
    except NotebookFailed as e:
        pytest.fail(f"notebook {e.notebook} failed in cell {e.cell}: {e.ename}: {e.evalue}\n\n{e.tb}", pytrace=False)
