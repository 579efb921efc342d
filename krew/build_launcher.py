"""Build the archive krew installs (``krew/branch.yaml``): the launcher, byte for byte reproducible.

    python krew/build_launcher.py [OUT]     # default dist/kubectl-branch-launcher.tar.gz; prints its sha256

Reproducible (fixed mtimes, owners and modes; gzip without a timestamp) so the sha256 in the
manifest can be checked against a fresh build by the tests.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import sys
import tarfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
FILES = ("kubectl-branch",)
LICENSE_NOTE = b"oms-branch-operator kubectl plugin launcher; the plugin is the oms-branch-operator package.\n"


def build() -> bytes:
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tar:
        entries = [(name, (HERE / "launcher" / name).read_bytes(), 0o755) for name in FILES]
        entries.append(("README", LICENSE_NOTE, 0o644))
        for name, data, mode in entries:
            info = tarfile.TarInfo(name)
            info.size, info.mode, info.mtime, info.uid, info.gid = len(data), mode, 0, 0, 0
            info.uname = info.gname = ""
            tar.addfile(info, io.BytesIO(data))
    out = io.BytesIO()
    with gzip.GzipFile(fileobj=out, mode="wb", mtime=0, filename="") as gz:
        gz.write(raw.getvalue())
    return out.getvalue()


def main() -> int:
    target = Path(sys.argv[1] if len(sys.argv) > 1 else "dist/kubectl-branch-launcher.tar.gz")
    target.parent.mkdir(parents=True, exist_ok=True)
    data = build()
    target.write_bytes(data)
    print(f"{hashlib.sha256(data).hexdigest()}  {target}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
