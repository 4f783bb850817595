"""Run-folder helpers."""

import os
import stat

from lightning_gen.runs import atomic_write


def test_atomic_write_gives_the_mode_of_a_plain_open(tmp_path):
    # A file written by open() gets 0666 & ~umask; atomic_write's temporary file (mkstemp, 0600)
    # must end up with the same mode, or PNGs/configs in a shared run folder are owner-only.
    old = os.umask(0o022)
    try:
        plain = tmp_path / "plain.txt"
        plain.write_text("x")
        path = atomic_write(tmp_path / "atomic.txt", lambda tmp: open(tmp, "w").write("x"))
    finally:
        os.umask(old)
    assert stat.S_IMODE(path.stat().st_mode) == stat.S_IMODE(plain.stat().st_mode) == 0o644
    assert path.read_text() == "x"
    assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")] == []
