"""What tiled could not take, kept on disk and replayed; documents read back from tiled.

Two kinds of things wait in a backup directory while tiled is away:

- whole runs, as bluesky-tiled-plugins' ``TiledWriter(client, backup_directory=DIR)`` leaves
  them: once a write of a run fails, the writer gives tiled up for that run and appends every
  document of it, from the start document on, to ``DIR/<uid prefix>.jsonl`` (one
  ``{"name", "doc"}`` per line);
- match results (:func:`~xas_bluesky.beamline.catalog.match_record`) that
  :class:`~xas_bluesky.beamline.analysis.sinks.TiledMatchSink` could not store yet, as
  ``DIR/matches/<run uid>.json`` (removed once stored).

:func:`replay_backup` (``xas-bluesky replay``) writes both into tiled once it is back: a run that
tiled holds in part (the start and descriptors written before the outage) is deleted and written
again from its backup, which holds every document; a run that tiled already holds whole is left
alone.  A replayed file moves to ``DIR/replayed/``, so a second replay does nothing.

:func:`run_documents` reads a run back from tiled as documents (start, descriptors, events,
stop): the tests compare them with what the RunEngine emitted, and the remote worker uses them to
pick up a run it joined late (:mod:`xas_bluesky.beamline.remote`).
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np

from xas_bluesky.beamline.catalog import store_match_record

__all__ = [
    "MATCHES_DIR",
    "REPLAYED_DIR",
    "run_documents",
    "stream_events",
    "read_backup",
    "save_match_record",
    "pending_match_records",
    "replay_backup",
]

logger = logging.getLogger(__name__)

#: sub-directory of a backup directory holding match records that wait for tiled
MATCHES_DIR = "matches"
#: sub-directory where replayed files go
REPLAYED_DIR = "replayed"


# -- documents read back from tiled ----------------------------------------------------------------
def _plain(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    return value


def stream_events(client, run_uid: str, stream: str, descriptor_uid: str) -> list[dict]:
    """The events of one stream of a run that tiled holds (rows of its internal table), by
    ``seq_num``.  Event uids are not stored by the ``TiledWriter``: each gets
    ``"tiled:<descriptor>:<seq_num>"``."""
    node = client[run_uid][stream]
    base = getattr(node, "base", node)
    if "internal" not in base:
        return []
    df = base["internal"].read()
    cols = [c for c in df.columns if c not in ("seq_num", "time") and not c.startswith("ts_")]
    events: list[dict[str, Any]] = []
    for row in df.to_dict(orient="records"):
        seq = int(row["seq_num"])
        data = {c: _plain(row[c]) for c in cols}
        stamps = {c: _plain(row.get(f"ts_{c}", row["time"])) for c in cols}
        events.append(
            {
                "uid": f"tiled:{descriptor_uid}:{seq}",
                "descriptor": descriptor_uid,
                "seq_num": seq,
                "time": float(row["time"]),
                "data": data,
                "timestamps": stamps,
                "filled": {},
            }
        )
    events.sort(key=lambda e: int(e["seq_num"]))
    return events


def run_documents(client, run_uid: str, *, events: bool = True) -> list[tuple[str, dict]]:
    """A run as tiled holds it, as documents: the start, each stream's descriptor and (with
    ``events``) its events, then the stop if tiled has it.

    Only what the ``TiledWriter`` keeps comes back: descriptors lose ``object_keys``, events their
    uids, and a stream whose configuration changed mid-run gives its first descriptor only.
    """
    run = client[run_uid]
    md = run.metadata
    docs: list[tuple[str, dict]] = [("start", dict(md["start"]))]
    for stream in list(run):
        smd = dict(run[stream].metadata)
        smd.pop("_config_updates", None)
        desc = {**smd, "name": stream, "run_start": run_uid}
        docs.append(("descriptor", desc))
        if events:
            docs += [("event", ev) for ev in stream_events(client, run_uid, stream, desc["uid"])]
    if md.get("stop"):
        docs.append(("stop", dict(md["stop"])))
    return docs


# -- backups ---------------------------------------------------------------------------------------
def read_backup(path: str | os.PathLike) -> list[tuple[str, dict]]:
    """The documents of one JSON-lines run backup, in order (a torn last line is left out)."""
    docs = []
    with open(path) as f:
        for line in f:
            if not line.strip():
                continue
            try:
                item = json.loads(line)
            except json.JSONDecodeError:  # the writer died mid-line
                logger.warning("%s: a line that is not JSON left out", path)
                continue
            docs.append((item["name"], item["doc"]))
    return docs


def save_match_record(directory: str | os.PathLike, record: dict) -> Path:
    """Keep a match record in ``directory/matches/`` (written whole, then renamed in)."""
    out = Path(directory) / MATCHES_DIR
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{record['run_uid']}.json"
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(record))
    os.replace(tmp, path)
    return path


def pending_match_records(directory: str | os.PathLike) -> list[Path]:
    """The match records waiting in ``directory/matches/``, oldest first."""
    d = Path(directory) / MATCHES_DIR
    if not d.is_dir():
        return []
    return sorted(d.glob("*.json"), key=lambda p: p.stat().st_mtime)


def _counts(docs: Iterable[tuple[str, dict]]) -> dict[str, int]:
    """Events per descriptor uid (event pages unpacked)."""
    n: dict[str, int] = {}
    for name, doc in docs:
        if name == "event":
            n[doc["descriptor"]] = n.get(doc["descriptor"], 0) + 1
        elif name == "event_page":
            n[doc["descriptor"]] = n.get(doc["descriptor"], 0) + len(doc["seq_num"])
    return n


def _whole_in_tiled(client, uid: str, docs: list[tuple[str, dict]]) -> bool:
    """tiled holds the run with its stop and as many events per stream as the backup."""
    if uid not in client or not client[uid].metadata.get("stop"):
        return False
    held = run_documents(client, uid)
    return _counts(held) == _counts(docs)


def _move(path: Path, directory: Path) -> None:
    done = directory / REPLAYED_DIR
    done.mkdir(exist_ok=True)
    os.replace(path, done / path.name)


def replay_backup(
    client, directory: str | os.PathLike, *, include_open: bool = False, batch_size: int = 1000
) -> dict:
    """Write the runs and match records of a backup directory into tiled.

    Returns a report: ``runs`` (one entry per backup file: ``file``, ``uid``, ``documents``,
    ``action`` -- ``written``, ``rewritten`` (tiled held it in part), ``already_in_tiled``,
    ``skipped_open`` or ``failed`` -- and ``error``), ``matches`` (``file``, ``run_uid``,
    ``action``, ``path`` or ``error``) and ``failed`` (how many could not be written; they stay in
    place for the next replay).

    A backup without a stop document belongs to a run still going on, or to a process that died
    mid-run: it is skipped unless ``include_open``.
    """
    from bluesky_tiled_plugins import TiledWriter

    directory = Path(directory)
    report: dict[str, Any] = {"directory": str(directory), "runs": [], "matches": [], "failed": 0}
    files = sorted(directory.glob("*.jsonl"), key=lambda p: p.stat().st_mtime)
    for path in files:
        entry: dict[str, Any] = {"file": path.name, "uid": None, "documents": 0, "error": None}
        report["runs"].append(entry)
        try:
            docs = read_backup(path)
            entry["documents"] = len(docs)
            if not docs or docs[0][0] != "start":
                raise ValueError("the backup does not begin with a start document")
            uid = entry["uid"] = docs[0][1]["uid"]
            if docs[-1][0] != "stop" and not include_open:
                entry["action"] = "skipped_open"
                continue
            if _whole_in_tiled(client, uid, docs):
                entry["action"] = "already_in_tiled"
                _move(path, directory)
                continue
            entry["action"] = "written"
            if uid in client:  # written in part before the outage: the backup has it all
                client.delete_contents(uid, recursive=True, external_only=False)
                entry["action"] = "rewritten"
            writer = TiledWriter(client, batch_size=batch_size)
            for name, doc in docs:
                writer(name, doc)
            if docs[-1][0] == "stop" and not _whole_in_tiled(client, uid, docs):
                raise RuntimeError("tiled does not hold the whole run after the replay")
            _move(path, directory)
        except Exception as exc:
            entry["action"] = "failed"
            entry["error"] = f"{type(exc).__name__}: {exc}"
            report["failed"] += 1
            logger.exception("could not replay %s", path)
    for path in pending_match_records(directory):
        m: dict[str, Any] = {"file": path.name, "run_uid": None}
        report["matches"].append(m)
        try:
            record = json.loads(path.read_text())
            m["run_uid"] = record["run_uid"]
            m["path"] = store_match_record(client, record)
            m["action"] = "written"
            path.unlink(missing_ok=True)
        except Exception as exc:
            m["action"] = "failed"
            m["error"] = f"{type(exc).__name__}: {exc}"
            report["failed"] += 1
            logger.exception("could not store the match record %s", path)
    return report
