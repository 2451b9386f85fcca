"""Deleting a folder tree, including what tools made read-only in it.

Some tools write read-only folders (Go's module cache, some package managers' stores):
their entries cannot be unlinked until the folder is writable again, so `shutil.rmtree`
fails on them (for any user but root). `remove_tree` then gives the owner back full
access to every folder of the tree and deletes it again. Like `shutil.rmtree`, it refuses
a symlink and follows none: it never deletes or changes anything outside `path`.
"""

from __future__ import annotations

import os
import shutil
import stat
from pathlib import Path


def remove_tree(path: Path | str) -> None:
    """Delete `path` and everything below it; OSError if some of it cannot be deleted."""
    try:
        shutil.rmtree(path)
    except PermissionError:
        _give_folders_back(path)
        shutil.rmtree(path)


def _give_folders_back(root: Path | str) -> None:
    """rwx for the owner on `root` and every folder below it, symlinks not followed."""
    pending = [os.fspath(root)]
    while pending:
        folder = pending.pop()
        if not stat.S_ISDIR(os.lstat(folder).st_mode):
            continue  # a symlink (or replaced meanwhile): not ours to change
        os.chmod(folder, stat.S_IRWXU)
        with os.scandir(folder) as entries:
            pending += [entry.path for entry in entries if entry.is_dir(follow_symlinks=False)]
