"""tiled storage and queries of predicted spectra and match results.

Layout (under the client's root container)::

    xas_predictions/                      container
        <edge>-<model>-<hash>             array (N, E): predicted mean spectra of one batch
            metadata: kind="xas_predictions", edge, model_version, energy_eV (E values), n,
                      names, smiles, inchikeys, formulas, structure_keys (N values each)
        <edge>-<model>-<hash>-std         array (N, E): the ensemble spread (kind="xas_predictions_std")
    xas_matches/                          container
        <raw run uid>                     table: name, smiles, probability (best first)
            metadata: kind="xas_match", run_uid, analysis_run_uid, edge, model_version, best_name,
                      best_probability, entropy, offset_ev, n_points, sample_name, measured ...
    <run uid>                             a raw run, written by bluesky-tiled-plugins' TiledWriter:
        metadata: start, stop             the documents
        primary                           the event stream (read() gives an xarray Dataset)

A run is named by its uid, a unique prefix of it or its scan id (:func:`resolve_run`); only XAS
runs (``xas_fields`` in the start document) are looked among, so the analysis runs, which share the
root, never make a prefix ambiguous.

A batch is written with two requests however many candidates it holds (one write per candidate
would cost ~70 ms each).  Queries use ``tiled.queries`` (``Key``, and ``Contains`` on the
InChIKeys and SMILES lists as a server-side prefilter); a SMILES is never put in a full-text
query (an unquoted one makes the server fail, FACTS.md): it is turned into an InChIKey with
RDKit and compared exactly.
"""

from __future__ import annotations

import hashlib
import logging
import re
from collections.abc import Sequence
from typing import Any

import numpy as np

from xas_bluesky.contracts import RANKING_KEYS, TILED_KEYS, MatchSummary, is_xas_start, ranking
from xas_bluesky.science.candidates import CandidateSet, model_calibration, structure_key

__all__ = [
    "PREDICTIONS",
    "MATCHES",
    "TiledPredictionStore",
    "molecule_ids",
    "store_predictions",
    "load_predictions",
    "load_candidate_set",
    "query_predictions",
    "store_match",
    "match_record",
    "store_match_record",
    "get_match",
    "get_sample",
    "RunNotFound",
    "AmbiguousRun",
    "resolve_run",
    "read_run",
]

logger = logging.getLogger(__name__)

PREDICTIONS = "xas_predictions"
MATCHES = "xas_matches"
#: rows per stored array (keeps each node's metadata lists to a few hundred kB)
BATCH_ROWS = 2000


def _container(client, key: str):
    if key in client:
        return client[key]
    try:
        return client.create_container(key=key, metadata={"kind": key})
    except Exception:  # created meanwhile by another writer
        return client[key]


def molecule_ids(structure) -> tuple[str, str, str]:
    """(canonical SMILES, InChIKey, formula) of a structure; empty strings where RDKit fails."""
    from rdkit import Chem, RDLogger
    from rdkit.Chem import rdMolDescriptors

    RDLogger.DisableLog("rdApp.*")  # type: ignore[attr-defined]  # missing from RDKit's stubs
    try:
        mol = structure.mol
        smiles = str(structure.smiles)
    except Exception:
        return "", "", ""
    try:
        ikey = Chem.MolToInchiKey(mol) or ""
    except Exception:
        ikey = ""
    try:
        formula = rdMolDescriptors.CalcMolFormula(mol)
    except Exception:
        formula = ""
    return smiles, ikey, formula


def _ids_of_smiles(smiles: str) -> tuple[str, str]:
    from rdkit import Chem, RDLogger

    RDLogger.DisableLog("rdApp.*")  # type: ignore[attr-defined]
    mol = Chem.MolFromSmiles(smiles)
    if mol is None:
        raise ValueError(f"SMILES {smiles!r}: RDKit cannot parse it")
    return Chem.MolToSmiles(mol), Chem.MolToInchiKey(mol)


def store_predictions(
    client,
    structures: Sequence,
    mean: np.ndarray,
    std: np.ndarray | None,
    *,
    energy: np.ndarray,
    edge: str,
    model_version: str,
    keys: Sequence[str] | None = None,
    calibration: dict | None = None,
) -> list[str]:
    """Store predicted spectra of ``structures`` in batches; returns the nodes' paths.

    Parameters
    ----------
    client
        A writable tiled container (e.g. ``from_uri(uri, api_key=...)``).
    structures
        The structures, in ``mean``'s row order.
    mean, std
        (N, E) predicted spectra and ensemble spread (``std`` may be None).
    energy
        (E,) the model's grid (eV).
    keys
        Structure keys (:func:`~xas_bluesky.science.candidates.structure_key`); computed when
        None.
    calibration
        The model's comparator calibration, stored with the predictions so that a candidate
        set loaded back (:func:`load_candidate_set`) is scored as the model's own would be.
    """
    if keys is None:
        keys = [structure_key(s) for s in structures]
    mean = np.asarray(mean, dtype=np.float32)
    root = _container(client, PREDICTIONS)
    paths = []
    for a in range(0, len(structures), BATCH_ROWS):
        b = min(a + BATCH_ROWS, len(structures))
        chunk_keys = list(keys[a:b])
        digest = hashlib.sha1("|".join(chunk_keys).encode()).hexdigest()[:12]
        node = f"{edge}-{model_version}-{digest}"
        paths.append(f"{PREDICTIONS}/{node}")
        if node in root:
            continue
        ids = [molecule_ids(s) for s in structures[a:b]]
        md = {
            "kind": "xas_predictions",
            "edge": edge,
            "model_version": str(model_version),
            "n": b - a,
            "energy_eV": [float(e) for e in energy],
            "names": [s.name for s in structures[a:b]],
            "smiles": [i[0] for i in ids],
            "inchikeys": [i[1] for i in ids],
            "formulas": [i[2] for i in ids],
            "structure_keys": chunk_keys,
            "has_std": std is not None,
        }
        if calibration:
            # per-energy arrays (model_error) go in as lists
            md["calibration"] = _jsonable(dict(calibration))
        root.write_array(mean[a:b], key=node, metadata=md)
        if std is not None:
            root.write_array(
                np.asarray(std[a:b], dtype=np.float32),
                key=f"{node}-std",
                metadata={
                    "kind": "xas_predictions_std",
                    "of": node,
                    "edge": edge,
                    "model_version": str(model_version),
                },
            )
    return paths


def _prediction_search(client, *, edge=None, model_version=None, contains=None):
    """The search of the prediction arrays (None without any); ``contains=(metadata key,
    text)`` keeps the arrays whose list under that key holds ``text`` as a substring (a
    server-side prefilter: the caller still checks each row)."""
    from tiled.queries import Contains, Key

    if PREDICTIONS not in client:
        return None
    results = client[PREDICTIONS].search(Key("kind") == "xas_predictions")
    if edge is not None:
        results = results.search(Key("edge") == edge)
    if model_version is not None:
        results = results.search(Key("model_version") == str(model_version))
    if contains is not None:
        results = results.search(Contains(*contains))
    return results


def _prediction_nodes(client, *, edge=None, model_version=None, contains=None):
    """The prediction arrays' ``(key, node)`` (see :func:`_prediction_search`)."""
    results = _prediction_search(client, edge=edge, model_version=model_version, contains=contains)
    return [] if results is None else list(results.items())


def load_predictions(
    client, *, model_version: str, edge: str, keys: Sequence[str]
) -> dict[str, tuple[np.ndarray, np.ndarray | None]]:
    """Stored predictions of the structures ``keys``: ``{key: (mean row, std row or None)}``."""
    wanted = set(keys)
    found: dict[str, tuple[np.ndarray, np.ndarray | None]] = {}
    if not wanted:
        return found
    root = client[PREDICTIONS] if PREDICTIONS in client else None
    for node_key, node in _prediction_nodes(client, edge=edge, model_version=model_version):
        skeys = node.metadata.get("structure_keys", [])
        rows = [i for i, k in enumerate(skeys) if k in wanted and k not in found]
        if not rows:
            continue
        mean = np.asarray(node.read())
        std = None
        if node.metadata.get("has_std") and root is not None and f"{node_key}-std" in root:
            std = np.asarray(root[f"{node_key}-std"].read())
        for i in rows:
            found[skeys[i]] = (mean[i], None if std is None else std[i])
        if len(found) == len(wanted):
            break
    return found


class TiledPredictionStore:
    """The :class:`~xas_bluesky.science.candidates.PredictionStore` of a tiled container."""

    def __init__(self, client):
        self.client = client

    def load(self, *, model_version: str, edge: str, keys: Sequence[str]):
        return load_predictions(self.client, model_version=model_version, edge=edge, keys=keys)

    def save(self, structures, mean, std, *, energy, edge, model_version, keys, calibration):
        return store_predictions(
            self.client, structures, mean, std, energy=energy, edge=edge,
            model_version=model_version, keys=keys, calibration=calibration,
        )  # fmt: skip


def load_candidate_set(client, spec: str) -> CandidateSet:
    """A :class:`~xas_bluesky.science.candidates.CandidateSet` from stored predictions.

    ``spec``: node keys under ``xas_predictions`` joined by ``,``, or ``EDGE/MODEL_VERSION`` for
    every prediction of that model.
    """
    if "/" in spec:
        spec_edge, spec_version = spec.split("/", 1)
        nodes = _prediction_nodes(client, edge=spec_edge, model_version=spec_version)
    else:
        root = client[PREDICTIONS]
        nodes = [(k, root[k]) for k in spec.split(",") if k]
    if not nodes:
        raise ValueError(f"no stored predictions match {spec!r}")
    root = client[PREDICTIONS]
    names: list[str] = []
    smiles: list[str] = []
    keys: list[str] = []
    means: list[np.ndarray] = []
    stds: list[np.ndarray | None] = []
    edge: str | None = None
    version: str | None = None
    energy = np.empty(0)
    stored_calibration: dict = {}
    seen = set()
    for node_key, node in nodes:
        md = node.metadata
        if edge is not None and (md["edge"] != edge or md["model_version"] != version):
            raise ValueError(f"{spec!r} mixes edges or model versions")
        edge, version, energy = md["edge"], md["model_version"], np.asarray(md["energy_eV"])
        stored_calibration = dict(md.get("calibration") or stored_calibration)
        mean = np.asarray(node.read())
        std = np.asarray(root[f"{node_key}-std"].read()) if md.get("has_std") else None
        for i, k in enumerate(md["structure_keys"]):
            if k in seen:
                continue
            seen.add(k)
            names.append(md["names"][i])
            smiles.append(md["smiles"][i])
            keys.append(k)
            means.append(mean[i])
            stds.append(None if std is None else std[i])
    std_arr = None if any(s is None for s in stds) else np.stack(stds)  # type: ignore[arg-type]
    # predictions stored before calibrations were stored with them: the default calibration
    calibration = model_calibration({"model_version": version, "calibration": stored_calibration})
    assert edge is not None  # nodes is not empty
    return CandidateSet(
        names=names,
        smiles=smiles,
        energy=energy,
        mean=np.stack(means),
        std=std_arr,
        edge=edge,
        model_version=version,
        source=f"tiled:{spec}",
        keys=keys,
        calibration=calibration,
    )


def query_predictions(
    client,
    *,
    edge: str | None = None,
    smiles: str | None = None,
    model_version: str | None = None,
) -> list[dict]:
    """One entry per stored structure prediction matching the filters.

    Entries: ``name``, ``smiles``, ``inchikey``, ``formula``, ``edge``, ``model_version``,
    ``structure_key`` and ``tiled`` (``path`` of the array node, ``row`` in it, ``std_path``).
    ``smiles`` matches the same molecule however it is written, stereoisomers included (compared
    by the connectivity block of the InChIKey: a structure from 3D coordinates has its
    stereocentres assigned, a SMILES usually not).
    """
    ikey = canon = None
    if smiles:
        canon, ikey = _ids_of_smiles(smiles)
    out: list[dict] = []
    seen: set[tuple[str, str]] = set()
    skeleton = ikey.split("-")[0] if ikey else None
    if smiles:
        # only the arrays holding the molecule leave the server (with a million predictions
        # stored, listing every array's metadata would move ~100 MB per query): those whose
        # InChIKeys hold the skeleton, and those whose SMILES hold the canonical one (a row
        # whose InChIKey RDKit could not make).  A substring test; the rows are checked below.
        found: dict[str, Any] = {}
        if skeleton:
            found.update(
                _prediction_nodes(
                    client,
                    edge=edge,
                    model_version=model_version,
                    contains=("inchikeys", skeleton),
                )
            )
        by_smiles = _prediction_search(
            client, edge=edge, model_version=model_version, contains=("smiles", canon)
        )
        if by_smiles is not None:
            # keys only (no metadata sent): most of these arrays came with the InChIKey search
            for node_key in list(by_smiles.keys()):
                if node_key not in found:
                    found[node_key] = client[PREDICTIONS][node_key]
        nodes = list(found.items())
    else:
        nodes = _prediction_nodes(client, edge=edge, model_version=model_version)
    for node_key, node in nodes:
        md = node.metadata
        for i, skey in enumerate(md.get("structure_keys", [])):
            if (
                skeleton is not None
                and md["inchikeys"][i].split("-")[0] != skeleton
                and md["smiles"][i] != canon
            ):
                continue
            ident = (md["model_version"], skey)
            if ident in seen:
                continue
            seen.add(ident)
            out.append(
                {
                    "name": md["names"][i],
                    "smiles": md["smiles"][i],
                    "inchikey": md["inchikeys"][i],
                    "formula": md["formulas"][i],
                    "edge": md["edge"],
                    "model_version": md["model_version"],
                    "structure_key": skey,
                    "tiled": {
                        "path": f"{PREDICTIONS}/{node_key}",
                        "row": i,
                        "std_path": f"{PREDICTIONS}/{node_key}-std" if md.get("has_std") else None,
                    },
                }
            )
    return out


def final_ranking(result, candidates: CandidateSet | None) -> list[dict]:
    """Every candidate of a match result, best first; ties broken by name, never input order."""
    smiles = candidates.smiles if candidates is not None else [""] * len(result.names)
    order = result.top_indices(len(result.names))
    return ranking(result.names, smiles, result.probabilities, order)


def match_record(
    summary: MatchSummary,
    ranking: list[dict],
    candidates: CandidateSet | None = None,
    *,
    analysis_run_uid: str | None = None,
    metadata: dict | None = None,
) -> dict:
    """A run's final ranking and summary as one JSON-able record (what :func:`store_match`
    writes; a record can wait on disk for tiled and be stored later by
    :func:`store_match_record`)."""
    fields = summary.as_dict()
    md = {
        "kind": "xas_match",
        "analysis_run_uid": analysis_run_uid,
        "edge": getattr(candidates, "edge", None),
        "model_version": getattr(candidates, "model_version", None),
        "candidate_set": getattr(candidates, "ident", None),
        "candidates_source": getattr(candidates, "source", None),
        **{key: fields[name] for name, key in TILED_KEYS.items()},
    }
    md = _jsonable({**md, **(metadata or {})})
    rows = [{k: r[k] for k in RANKING_KEYS} for r in ranking]
    return {"run_uid": summary.run_uid, "ranking": _jsonable(rows), "metadata": md}


def store_match_record(client, record: dict) -> str:
    """Store a :func:`match_record` in tiled; returns its path.

    Idempotent for one analysis: a record of the same run and ``analysis_run_uid`` already in
    tiled (an earlier attempt that succeeded, though its answer was lost) is not written again.
    """
    import pandas as pd  # tiled's table writer needs it; nothing else here does

    md = record["metadata"]
    df = pd.DataFrame(record["ranking"], columns=list(RANKING_KEYS))
    root = _container(client, MATCHES)
    key = record["run_uid"]
    analysis = md.get("analysis_run_uid")
    alt = f"{key}-{hashlib.sha1(str(analysis).encode()).hexdigest()[:8]}"
    for k in (key, alt):
        if k in root:
            if analysis is not None and root[k].metadata.get("analysis_run_uid") == analysis:
                return f"{MATCHES}/{k}"
            key = alt  # a re-analysis of the same run keeps the earlier one
    root.write_table(df, key=key, metadata=md)
    return f"{MATCHES}/{key}"


def store_match(
    client,
    summary: MatchSummary,
    ranking: list[dict],
    candidates: CandidateSet | None = None,
    *,
    analysis_run_uid: str | None = None,
    metadata: dict | None = None,
) -> str:
    """Store a run's final ranking (a table, best first) and its summary; returns the path.

    The record's keys are :data:`~xas_bluesky.contracts.TILED_KEYS` of ``summary`` and
    the candidate set's identity, then ``metadata``.
    """
    record = match_record(
        summary, ranking, candidates, analysis_run_uid=analysis_run_uid, metadata=metadata
    )
    return store_match_record(client, record)


def get_match(client, run_uid: str) -> dict:
    """A run's stored final ranking and metadata: ``{"run_uid", "ranking", "metadata",
    "groups", "in_library"}`` (``groups``: the functional groups, most probable first, as
    ``{"name", "probability"}``, empty when none were computed; ``in_library``: a probability
    or None)."""
    from tiled.queries import Key

    if MATCHES not in client:
        raise KeyError(f"no match results stored (no {MATCHES!r} container)")
    root = client[MATCHES]
    if run_uid in root:
        node = root[run_uid]
    else:
        hits = list(root.search(Key("run_uid") == run_uid).values())
        if not hits:
            raise KeyError(f"no match result stored for run {run_uid!r}")
        node = hits[-1]
    df = node.read()
    rows = [
        dict(zip(RANKING_KEYS, (str(r.name), str(r.smiles), float(r.probability)), strict=True))
        for r in df.itertuples(index=False)
    ]
    md = dict(node.metadata)
    names, probs = list(md.get("groups") or []), list(md.get("group_probabilities") or [])
    groups = [
        {"name": str(n), "probability": float(p)}
        for n, p in zip(names, probs, strict=False)
        if p is not None
    ]
    in_library = md.get("in_library")
    return {
        "run_uid": run_uid,
        "ranking": rows,
        "metadata": md,
        "groups": groups,
        "in_library": None if in_library is None else float(in_library),
    }


def get_sample(client, sample: str) -> dict:
    """A sample's match record across its runs and edges: ``{"sample_uid", "runs", "joint",
    "ranking"}``.

    ``sample`` is the plans' ``sample_uid`` (else a ``sample_name``, as the analysis keys the
    sample posterior).  ``runs``: each match record of the sample (``run_uid``, ``edge``,
    ``best_name``, ``best_probability``, ``n_points``); ``joint``: the joint over the most edges
    that any record carries (``edges``, ``run_uids``, ``outlier_probability``, ``ranking``: what
    :class:`~xas_bluesky.beamline.analysis.sinks.TiledMatchSink` stores with the run that closed
    last), else None; ``ranking``: the joint's ranking, else the single run's.

    Raises
    ------
    KeyError
        No match record of that sample.
    """
    from tiled.queries import Key

    if MATCHES not in client:
        raise KeyError(f"no match results stored (no {MATCHES!r} container)")
    root = client[MATCHES]
    nodes = list(root.search(Key("sample_uid") == sample).values())
    key = "sample_uid"
    if not nodes:
        nodes, key = list(root.search(Key("sample_name") == sample).values()), "sample_name"
    if not nodes:
        raise KeyError(f"no match result stored for sample {sample!r}")
    runs, joint = [], None
    for node in nodes:
        md = dict(node.metadata)
        runs.append(
            {
                "run_uid": md.get("run_uid"),
                "edge": md.get("edge") or md.get("xas_element"),
                "best_name": md.get("best_name"),
                "best_probability": md.get("best_probability"),
                "n_points": md.get("n_points"),
            }
        )
        j = md.get("joint")
        if j and (joint is None or len(j.get("run_uids") or {}) >= len(joint["run_uids"])):
            joint = dict(j)  # the last stored of those over the most runs: the newest
    ranking = joint["ranking"] if joint else get_match(client, str(runs[-1]["run_uid"]))["ranking"]
    out = {"sample_uid": nodes[-1].metadata.get("sample_uid"), "runs": runs, "joint": joint}
    if key == "sample_name":  # looked up by name: say so beside the uid the records carry
        out["sample_name"] = sample
    return {**out, "ranking": ranking}


def _jsonable(obj):
    """Metadata for tiled: arrays as lists, numpy scalars as Python, non-finite floats as None."""
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return _jsonable(obj.tolist())
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, float) and not np.isfinite(obj):
        return None
    return obj


class RunNotFound(KeyError):
    """No XAS run in tiled by that uid, uid prefix or scan id."""

    def __str__(self) -> str:  # KeyError's would quote the message
        return str(self.args[0]) if self.args else ""


class AmbiguousRun(ValueError):
    """A uid prefix that more than one XAS run starts with."""


#: runs an ambiguous prefix's error names (newest first)
AMBIGUOUS_SHOWN = 5
_UID_PREFIX = re.compile(r"[0-9a-f-]+")


def _xas_runs(client):
    from tiled.queries import KeyPresent

    return client.search(KeyPresent("start.xas_fields"))


def _describe(uid: str, node) -> str:
    scan_id = (node.metadata.get("start") or {}).get("scan_id")
    return uid if scan_id is None else f"{uid} (scan {scan_id})"


def resolve_run(client, run: str | int) -> str:
    """The uid of the XAS run that ``run`` names: its uid, a unique prefix of it, or a scan id
    (the latest run with it, by start time).

    Digits alone are a scan id first; if no XAS run has it they are read as a uid prefix.

    Raises
    ------
    RunNotFound
        No XAS run matches.
    AmbiguousRun
        More than one XAS run starts with the prefix; the message names them (the newest
        :data:`AMBIGUOUS_SHOWN`) in one line.
    """
    from tiled.queries import Key, Like

    spec = str(run).strip().lower()
    if not spec:
        raise RunNotFound("no run given")
    runs = _xas_runs(client)
    if spec.isdigit():
        newest = runs.search(Key("start.scan_id") == int(spec)).sort(("start.time", -1))
        for uid, node in newest.items():
            if is_xas_start(node.metadata.get("start") or {}):
                return str(uid)
    if not _UID_PREFIX.fullmatch(spec):  # never a LIKE wildcard (% or _) into the query
        raise RunNotFound(f"no XAS run {run!r}: not a uid, a uid prefix or a scan id")
    hits = runs.search(Like("start.uid", spec + "%")).sort(("start.time", -1))
    n = len(hits)
    if n == 0:
        raise RunNotFound(f"no XAS run {run!r} in tiled (by uid, uid prefix or scan id)")
    if n > 1:
        shown = [_describe(str(uid), node) for uid, node in hits.items()[:AMBIGUOUS_SHOWN]]
        more = f" and {n - len(shown)} more" if n > len(shown) else ""
        raise AmbiguousRun(
            f"run {run!r} is ambiguous: {n} XAS runs start with it: {', '.join(shown)}{more}"
        )
    return str(hits.keys()[0])


def read_run(client, uid: str) -> tuple[dict, dict | None, dict[str, np.ndarray]]:
    """A raw XAS run as TiledWriter stored it: its start and stop documents and the primary
    stream's columns that ``xas_fields`` names (data key -> array, in event order).

    Raises
    ------
    RunNotFound
        No run ``uid``, or it is not an XAS run, or it has no primary stream.
    """
    if uid not in client:
        raise RunNotFound(f"no run {uid!r} in tiled")
    node = client[uid]
    start = dict(node.metadata.get("start") or {})
    stop = node.metadata.get("stop")
    if not is_xas_start(start):
        raise RunNotFound(f"run {uid!r} is not an XAS run (no xas_fields in its start document)")
    if "primary" not in node:
        raise RunNotFound(f"run {uid!r} has no primary stream (no events)")
    keys = sorted(set(start["xas_fields"].values()))
    ds = node["primary"].read(variables=keys)
    return start, None if stop is None else dict(stop), {k: np.asarray(ds[k].values) for k in keys}
