"""Run folders: which files a training run writes, and what it may delete.

A run folder holds exactly the files of :data:`RUN_FILES` and the figures of
:data:`FIGURE_FILES` under ``figures/``, plus the temporary files of interrupted writes
(``.<name>.<random>.tmp``, see :mod:`bbits_ref._files`).  Anything else is not the run's:

* a new run starts only in a folder that holds none of these (``force=True`` first removes them,
  and only them; a folder holding anything else is refused, naming what is there);
* a run is identified by the ``run_id`` stored in its ``run.json`` and in every checkpoint;
  a checkpoint is resumed only from the folder it belongs to (its ``checkpoint.npz``, with the
  same ``run_id`` as the folder's ``run.json`` and the same settings as its ``config.json``),
  and writes go back there.  ``config.json`` holds the run's TrainConfig as it is now (learning
  rates changed at a resume included); ``run.json`` also lists those changes (``lr_changes``);
* leftover temporary files are removed at the next start of the run.

Files read from a run folder are untrusted: errors are one-line
:class:`~bbits_ref._errors.DataFileError` / :class:`~bbits_ref._errors.RunDirError` naming the file.
"""
from __future__ import annotations

import json
import secrets
from pathlib import Path

from bbits_ref._errors import DataFileError, RunDirError
from bbits_ref._files import temp_files_of

__all__ = ["RUN_FILES", "FIGURE_FILES", "LR_KEYS", "new_run_id", "scan", "check_new_run",
           "clear_run", "clean_temp_files", "read_json", "read_run_config", "read_run_record",
           "run_record", "resume_folder"]

#: The files a run writes in its folder.
RUN_FILES = ("config.json", "run.json", "history.json", "summary.json", "checkpoint.npz")
#: The figures a run writes in ``figures/`` (bbits_ref.plotting.save_run_figures).
FIGURE_FILES = ("gate_probabilities.png", "bit_widths.png", "bops_accuracy.png",
                "kept_channels.png", "training_curves.png")
#: The learning rates that may change when a run is resumed explicitly (``--change-lr``).
LR_KEYS = ("lr_weights", "lr_gates", "lr_ranges")
MAX_JSON_BYTES = 512 * 2**20


def new_run_id() -> str:
    """A fresh random run identifier (not part of the training: it draws no training noise)."""
    return secrets.token_hex(8)


def _figures(folder: Path) -> Path:
    return folder / "figures"


def scan(folder) -> tuple[list[Path], list[Path], list[Path]]:
    """``(run_files, temp_files, foreign)`` present in ``folder`` (each a list of paths).

    ``foreign`` is everything a run does not write: other files, sub-folders, symbolic links,
    a ``figures/`` entry that is not the run's.
    """
    folder = Path(folder)
    if not folder.exists():
        return [], [], []
    if not folder.is_dir():
        raise RunDirError(f"{folder} is not a folder; give --out a new or empty folder")
    run, temps, foreign = [], [], []
    targets = [folder / n for n in RUN_FILES] + [_figures(folder) / n for n in FIGURE_FILES]
    temp_names = {p for t in targets for p in temp_files_of(t)}
    for entry in sorted(folder.iterdir()):
        if entry in temp_names:
            temps.append(entry)
        elif entry.name in RUN_FILES and entry.is_file() and not entry.is_symlink():
            run.append(entry)
        elif entry.name == "figures" and entry.is_dir() and not entry.is_symlink():
            for fig in sorted(entry.iterdir()):
                if fig in temp_names:
                    temps.append(fig)
                elif fig.name in FIGURE_FILES and fig.is_file() and not fig.is_symlink():
                    run.append(fig)
                else:
                    foreign.append(fig)
        else:
            foreign.append(entry)
    return run, temps, foreign


def _names(paths, folder: Path, limit: int = 5) -> str:
    shown = [str(p.relative_to(folder)) + ("/" if p.is_dir() else "") for p in paths[:limit]]
    more = f" and {len(paths) - limit} more" if len(paths) > limit else ""
    return ", ".join(shown) + more


#: What a run writes before its first checkpoint: a run killed then has lost no results.
UNSTARTED_FILES = ("config.json", "run.json")


def check_new_run(folder, force: bool = False, allow_unstarted: bool = False) -> None:
    """Refuse to start a new run in ``folder`` unless it is absent, empty, or (with ``force``)
    holds only the files of a run.  ``allow_unstarted`` also accepts the files of a run that
    never reached its first checkpoint (:data:`UNSTARTED_FILES`), which the new run replaces.
    Nothing is changed here."""
    folder = Path(folder)
    run, _temps, foreign = scan(folder)
    if allow_unstarted and all(p.parent == folder and p.name in UNSTARTED_FILES for p in run):
        run = []
    if foreign:
        raise RunDirError(f"{folder} holds files that are not a bbits_ref run's "
                          f"({_names(foreign, folder)}); bbits-ref never deletes or overwrites "
                          "them: choose another --out (a new or empty folder)")
    if run and not force:
        if (folder / "checkpoint.npz").exists():
            raise RunDirError(f"{folder} already holds a run: pass --resume {folder} to continue "
                              "it, --force to start it again, or --out for another folder")
        raise RunDirError(f"{folder} holds the files of a run that has no checkpoint yet "
                          f"({_names(run, folder)}): pass --force to start it again, or --out "
                          "for another folder")


def clear_run(folder) -> list[Path]:
    """Remove the run files (and leftover temporary files) from ``folder``; refuse (changing
    nothing) if it holds anything else.  Returns what was removed.  Call it only once the new
    run's configuration and data have been validated."""
    folder = Path(folder)
    check_new_run(folder, force=True)
    run, temps, _ = scan(folder)
    for p in run + temps:
        p.unlink()
    figures = _figures(folder)
    if figures.is_dir() and not figures.is_symlink() and not any(figures.iterdir()):
        figures.rmdir()
    return run + temps


def clean_temp_files(folder) -> list[Path]:
    """Remove the temporary files that interrupted writes of run files left in ``folder``."""
    folder = Path(folder)
    try:
        _, temps, _ = scan(folder)
    except RunDirError:
        return []
    for p in temps:
        p.unlink(missing_ok=True)
    return temps


def read_json(path, what: str = "file"):
    """``json.loads`` of an untrusted file: a bounded size, errors as one DataFileError line."""
    path = Path(path)
    try:
        if path.stat().st_size > MAX_JSON_BYTES:
            raise DataFileError(f"{path} is {path.stat().st_size} bytes, more than any bbits_ref "
                                f"{what}: not a bbits_ref {what}")
        text = path.read_bytes().decode("utf-8")
        return json.loads(text)
    except FileNotFoundError:
        raise DataFileError(f"no {what} at {path}") from None
    except IsADirectoryError:
        raise DataFileError(f"{path} is a folder, not a {what}") from None
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise DataFileError(f"{path} is not a readable {what} (corrupted or not JSON: "
                            f"{str(exc)[:80]})") from None


def run_record(run_id: str, lr_changes: list) -> dict:
    """The content of ``run.json``: the run's id and its learning-rate changes."""
    from bbits_ref._version import __version__
    return {"run_id": run_id, "lr_changes": list(lr_changes), "bbits_ref_version": __version__}


def read_run_config(folder) -> dict:
    """The settings in ``folder/config.json`` (a JSON object; TrainConfig.from_dict checks them)."""
    path = Path(folder) / "config.json"
    data = read_json(path, "run configuration (config.json)")
    if not isinstance(data, dict):
        raise DataFileError(f"{path} should hold a JSON object of settings, got "
                            f"{type(data).__name__}")
    return data


def read_run_record(folder) -> tuple[str | None, list]:
    """``(run_id, lr_changes)`` from ``folder/run.json``; ``(None, [])`` for runs written before
    run ids existed (no run.json)."""
    path = Path(folder) / "run.json"
    if not path.exists():
        return None, []
    data = read_json(path, "run record (run.json)")
    if not isinstance(data, dict):
        raise DataFileError(f"{path} should hold a JSON object, got {type(data).__name__}")
    run_id, lr_changes = data.get("run_id"), data.get("lr_changes", [])
    if not isinstance(run_id, str) or not isinstance(lr_changes, list):
        raise DataFileError(f"{path} should hold run_id (text) and lr_changes (a list); got "
                            f"{type(run_id).__name__} and {type(lr_changes).__name__}")
    return run_id, lr_changes


def resume_folder(checkpoint: Path, run_id: str | None, config_dict: dict) -> Path | None:
    """The run folder a checkpoint may write back to, or None if it belongs to none.

    ``checkpoint`` may continue in its folder only if it is that folder's ``checkpoint.npz``, the
    folder's ``run.json`` (if any) has the same run id and its ``config.json`` (if any) the same
    settings (learning rates aside, which a resume may change).  A ``checkpoint.npz`` in a folder without
    ``config.json`` and nothing else of a run adopts the folder.  A checkpoint in another run's
    folder raises :class:`RunDirError`; any other file returns None (resume it in memory, or
    into a new folder).
    """
    folder = checkpoint.parent
    has_config = (folder / "config.json").is_file()
    if checkpoint.name != "checkpoint.npz":
        if has_config:
            raise RunDirError(f"{checkpoint} is not the checkpoint.npz of the run in {folder}: "
                              f"resume that run with --resume {folder}, or copy {checkpoint.name} "
                              "into an empty folder as checkpoint.npz and resume that folder")
        return None
    if not has_config:
        run, _, foreign = scan(folder)
        others = [p for p in run if p.name != "checkpoint.npz"] + foreign
        if others:
            raise RunDirError(f"{checkpoint} sits beside files that are not its run's "
                              f"({_names(others, folder)}) and no config.json: copy it into an "
                              "empty folder as checkpoint.npz and resume that folder")
        return folder
    folder_config = read_run_config(folder)
    folder_id, _ = read_run_record(folder)
    if folder_id is not None and run_id is not None and folder_id != run_id:
        raise RunDirError(f"{checkpoint} belongs to run {run_id}, but {folder}/run.json is run "
                          f"{folder_id}: the checkpoint was copied from another run. Copy it into "
                          "an empty folder as checkpoint.npz and resume that folder instead")
    mine = {k: v for k, v in config_dict.items() if k not in LR_KEYS}
    theirs = {k: v for k, v in folder_config.items() if k not in LR_KEYS}
    if mine != theirs:
        diff = sorted(k for k in set(mine) | set(theirs) if mine.get(k) != theirs.get(k))
        raise RunDirError(f"{checkpoint} was trained with other settings than {folder}/config.json "
                          f"(differing: {', '.join(diff[:5])}): it belongs to another run. Copy it "
                          "into an empty folder as checkpoint.npz and resume that folder instead")
    return folder
