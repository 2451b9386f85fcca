"""remove_tree: a tree that tools made partly read-only is deleted all the same (as an
ordinary user: root ignores permissions), and nothing outside it is touched."""

from __future__ import annotations

import os
import subprocess
import tempfile

from tests.conftest import REPO, as_ordinary_user

# Builds a tree as Go's module cache leaves it (read-only folders), plus a folder nobody
# may read, and a symlink to a read-only folder outside; then deletes the tree.
SCRIPT = """
import os, shutil, sys
from pathlib import Path
from flows.removal import remove_tree
base = Path(sys.argv[1])
tree, outside = base / "tree", base / "outside"
(tree / "pkg" / "mod@v1").mkdir(parents=True)
(tree / "pkg" / "mod@v1" / "go.mod").write_text("module m")
(tree / "locked").mkdir()
(tree / "locked" / "secret").write_text("x")
outside.mkdir()
(outside / "kept").write_text("x")
(tree / "link").symlink_to(outside)
for folder in (tree / "pkg" / "mod@v1", tree / "pkg", outside):
    os.chmod(folder, 0o555)
os.chmod(tree / "locked", 0)
try:
    shutil.rmtree(tree)
except PermissionError:
    print("rmtree: PermissionError")
remove_tree(tree)
print("tree gone:", not tree.exists())
print("outside kept:", (outside / "kept").exists(), oct(outside.stat().st_mode & 0o777))
os.chmod(outside, 0o755)
"""


def test_a_partly_read_only_tree_is_deleted_and_nothing_outside_changes() -> None:
    user = as_ordinary_user()
    # not under pytest's tmp_path: the ordinary user may not traverse root's folders
    with tempfile.TemporaryDirectory(prefix="test-removal-") as base:
        os.chmod(base, 0o755)
        if os.geteuid() == 0:
            os.chown(base, 65534, 65534)  # as_ordinary_user runs it as nobody
        result = subprocess.run(
            [*user, "-c", SCRIPT, base], capture_output=True, text=True, cwd="/", timeout=60,
            env={"PATH": os.defpath, "PYTHONPATH": str(REPO)},
        )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [
        "rmtree: PermissionError",  # what shutil alone does
        "tree gone: True",
        "outside kept: True 0o555",
    ]
