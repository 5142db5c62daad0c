"""core/paths: names from files never leave their root."""

import pytest

from sptbench.core.errors import SptbenchError
from sptbench.core.paths import check_name, check_run_id, inside


def test_run_ids_keep_the_strict_pattern():
    assert check_run_id("20261207T070030-fb3125") == "20261207T070030-fb3125"
    for bad in ["../../victim", "20261207T070030-fb3125/..", "20261207T070030-FB3125", "", None, 7]:
        with pytest.raises(SptbenchError, match="run_id"):
            check_run_id(bad)


def test_names_are_one_component():
    assert check_name("sst2", "task") == "sst2"
    for bad in ["..", ".hidden", "a/b", "a\\b", "", "x\n"]:
        with pytest.raises(SptbenchError, match="task"):
            check_name(bad, "task")


def test_inside_refuses_escapes_and_symlinks(tmp_path):
    (tmp_path / "root").mkdir()
    assert inside(tmp_path / "root", "a", "b.yaml") == (tmp_path / "root" / "a" / "b.yaml").resolve()
    with pytest.raises(SptbenchError, match="leaves its folder"):
        inside(tmp_path / "root", "..", "victim")
    (tmp_path / "root" / "link").symlink_to(tmp_path)
    with pytest.raises(SptbenchError, match="leaves its folder"):
        inside(tmp_path / "root", "link", "victim")
