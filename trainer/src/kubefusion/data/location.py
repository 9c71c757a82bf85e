"""Where a dataset is, as a command was told, and how to name its settings back to the user.

Every command that reads a dataset (``data validate``, ``predict --data``, and the job file through
``spec.data``) takes it the same way: a folder with ``images/``, ``text.csv`` and ``numeric.csv``; or a folder and a
manifest CSV in it (``--manifest`` / ``spec.data.manifest``); or the manifest CSV file itself, whose folder is
then the root. A manifest given on the command line is a path like any other argument (from the current folder;
``DIR/manifest.csv`` is not read as ``DIR/DIR/manifest.csv``); a bare name that is not there is looked up in the
dataset folder. A job file's manifest is relative to ``spec.data.path``.

:class:`Spelling` carries how the user set the data settings, so that a message names what they typed: a job
field (``spec.data.onBadRecord``) or a command's flag (``--on-bad-record``).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from kubefusion.errors import DataError


@dataclass(frozen=True)
class Spelling:
    """How each data setting was given: the job file's field names by default, or a command's flags."""

    on_bad_record: str = "spec.data.onBadRecord"
    missing_modality: str = "spec.data.missingModality"
    manifest: str = "spec.data.manifest"

    def set_to(self, setting: str, value: str) -> str:
        """How to give ``setting`` the value ``value``, in the user's own terms."""
        name = getattr(self, setting)
        return f"{name} {value}" if name.startswith("-") else f"{name}: {value}"


JOB_FILE = Spelling()


@dataclass(frozen=True)
class DatasetLocation:
    root: str
    """The dataset folder (local path or URI)."""
    manifest: str | None
    """The manifest CSV, relative to ``root`` when it is inside it, else absolute (or a URI); None: 3 files."""


def _is_uri(path: str) -> bool:
    return "://" in path


def _is_file(path: str) -> bool:
    if _is_uri(path):
        from kubefusion.data import _gfile  # noqa: PLC0415 (imports TensorFlow)

        return _gfile.exists(path) and not _gfile.isdir(path)
    return Path(path).is_file()


def dataset_location(given: str | Path, manifest: str | Path | None = None, *,
                     manifest_option: str = "--manifest") -> DatasetLocation:
    """Resolve a dataset given on the command line (see the module docstring)."""
    given = str(given)
    if _is_file(given):
        if manifest is not None:
            raise DataError(f"{given} is a file: give either the manifest CSV itself, or its folder and "
                            f"{manifest_option}, not both")
        root, _, name = given.rstrip("/").rpartition("/") if _is_uri(given) else \
            (str(Path(given).parent), "", Path(given).name)
        return DatasetLocation(root, name)
    if manifest is None:
        return DatasetLocation(given, None)
    manifest = str(manifest)
    if _is_uri(manifest) or _is_uri(given):
        return DatasetLocation(given, manifest)
    path = Path(manifest).expanduser()
    if not path.is_absolute() and path.exists():
        path = path.resolve()
    if path.is_absolute():
        try:
            return DatasetLocation(given, str(path.relative_to(Path(given).resolve())))
        except ValueError:
            return DatasetLocation(given, str(path))
    return DatasetLocation(given, manifest)  # a name inside the dataset folder


def data_flag(value: str | None) -> str | None:
    """A ``--data`` folder given to ``preprocess`` or ``train`` instead of ``spec.data.path``: refused here, by the
    flag's name, when it is not there (a URI is looked at when read)."""
    if value is not None and not _is_uri(value) and not Path(value).is_dir():
        what = "a file, not a folder" if Path(value).exists() else "no such folder"
        raise DataError(f"--data {value}: {what} (the dataset folder to use instead of spec.data.path)")
    return value


def manifest_hint(names: list[str], spelling: Spelling) -> str:
    """A hint naming the CSV files found in a folder that lacks the three-file layout."""
    csvs = sorted(n.rstrip("/") for n in names if n.lower().endswith(".csv"))
    if not csvs:
        return ""
    found = ", ".join(csvs[:3]) + (" ..." if len(csvs) > 3 else "")
    how = spelling.set_to("manifest", csvs[0])
    return f"; found {found}: if it is a manifest (id,image,text,<numeric columns>,label), give {how}" + (
        ", or the file itself as the dataset" if spelling.manifest.startswith("-") else "")
