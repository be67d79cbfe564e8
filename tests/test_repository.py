"""Tests of .ci/set_repository.py: one repository address shared by setup.py, the README's badges and the notebooks."""

import importlib.util
import json
import os
import shutil

import pytest
from conftest import ROOT

_spec = importlib.util.spec_from_file_location("set_repository", os.path.join(ROOT, ".ci", "set_repository.py"))
set_repository = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(set_repository)


def test_the_readme_and_the_notebooks_use_the_address_of_setup_py():
    assert set_repository.repository().startswith("https://github.com/")
    assert set_repository.mismatches() == []


def test_setting_the_address_rewrites_every_copy_and_keeps_the_notebooks_valid(tmp_path):
    for path in ("setup.py", "README.md", *set_repository.NOTEBOOKS):
        os.makedirs(tmp_path / os.path.dirname(path), exist_ok=True)
        shutil.copy(os.path.join(ROOT, path), tmp_path / path)
    set_repository.set_repository("https://github.com/someone/fork.git", root=str(tmp_path))
    assert set_repository.repository(str(tmp_path)) == "https://github.com/someone/fork"
    assert set_repository.mismatches(str(tmp_path)) == []
    readme = (tmp_path / "README.md").read_text()
    assert "colab.research.google.com/github/someone/fork/blob/main/notebooks/sskt_quickstart.ipynb" in readme
    for path in set_repository.NOTEBOOKS:
        cells = json.loads((tmp_path / path).read_text())["cells"]
        code = "".join("".join(c["source"]) for c in cells)
        assert 'REPO_URL = "https://github.com/someone/fork.git"' in code
    # A copy edited by hand is found.
    (tmp_path / "README.md").write_text(readme.replace("someone/fork", "other/place", 1))
    assert set_repository.mismatches(str(tmp_path)) == ["README.md: other/place"]
    with pytest.raises(ValueError, match="expected https://github.com/<owner>/<name>"):
        set_repository.set_repository("git@github.com:someone/fork.git", root=str(tmp_path))
