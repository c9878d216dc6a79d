"""The demo's session: start the simulated beamline, tiled and the live analysis, run the scan,
collect what the CLI reports, stop everything.

The Channel Access environment is set here before ``epics``/``ophyd`` are first imported (libca
reads it once per process), which is why those imports live inside the functions.
"""

from __future__ import annotations

import json
import math
import os
import random
import signal
import sys
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, TextIO

import numpy as np

from sim_iocs.launcher import DEFAULT_CLOCK, SimBeamline, check_slots
from xas_bluesky.contracts import DEFAULT_PREFIX
from xas_bluesky.resources import REFERENCE_SLOTS, candidates_file, heldout_samples
from xas_bluesky.science.spectra import NormalizationError, mu_from_channels, normalize
from xas_bluesky.services import (
    ManagedProcess,
    _spawn,
    apply_ca_env,
    free_ports,
    loopback_ca_env,
    start_repeater,
    start_tiled,
)

__all__ = ["DemoConfig", "DemoError", "run_demo"]

#: prefix of the score PVs in the demo (CLI.md names follow it)
SCORE_PREFIX = DEFAULT_PREFIX


class DemoError(RuntimeError):
    """A problem the user can fix (bad sample name, bad file, ...): shown as one line."""


@dataclass
class DemoConfig:
    #: the K edge, or both edges of one sample in the order measured (``"O,N"``)
    edge: str = "O"
    mode: str = "adaptive"
    sample: str | None = None
    #: one spectrum (one edge), or with two edges one per edge: ``{"O": path, "N": path}``
    sample_spectrum: str | dict[str, str] | None = None
    #: energy axis of ``sample_spectrum``: "feff" or "experiment"
    axis: str = "feff"
    #: the simulated beamline's Gaussian FWHM (eV) and axis shift (eV) of the sample spectra
    broadening: float = 0.0
    axis_offset: float = 0.0
    #: broadening FWHM (eV) the live analysis marginalises over; None: (0, 0.5, 1) for a
    #: spectrum on the experiment's axis, else none
    widths: tuple[float, ...] | None = None
    candidates: str | None = None
    data_dir: Path = Path(".")
    seed: int = 0
    json_path: str | None = None
    plot_path: str | None = None
    threshold: float = 0.99
    max_points: int = 49
    clock: float | None = None
    progress: TextIO | None = None
    #: run the fault drill (:mod:`xas_bluesky.apps.demo_faults`)
    faults: bool = False
    #: open world: no candidates, functional groups only
    no_candidates: bool = False
    #: the open-world analysis (groups, in_library) during the run
    groups: bool = True
    #: predict the model's reference library first when it is not cached
    predict_library: bool = False
    #: where the predicted reference libraries are cached (the default cache when None)
    library_cache: str | None = None

    @property
    def edges(self) -> list[str]:
        return [e.strip() for e in self.edge.split(",") if e.strip()]


def _say(config: DemoConfig, text: str) -> None:
    if config.progress is not None:
        print(text, file=config.progress, flush=True)


def choose_sample(config: DemoConfig) -> tuple[str, str]:
    """``(sample name, slot spec)`` of the sample to measure (with two edges, a sample that has
    both: a held-out molecule with O and N, or one spectrum per edge)."""
    edges = config.edges
    if config.sample_spectrum:
        files = config.sample_spectrum
        if isinstance(files, dict):
            name = "+".join(Path(files[e]).stem for e in edges)[:39]
            paths = [str(_on_feff_axis(config, files[e], e).resolve()) for e in edges]
            return name, f"{name}={'|'.join(paths)}"
        name = Path(files).stem
        return name, f"{name[:39]}={_on_feff_axis(config, files, edges[0]).resolve()}"
    pools = [{s["name"] for s in heldout_samples(e)[1]} for e in edges]
    names = sorted(set.intersection(*pools))
    what = f"{' and '.join(edges)} K-edge"
    if config.sample:
        if config.sample not in names:
            raise DemoError(
                f"no held-out {what} sample named {config.sample!r} (e.g. {', '.join(names[:3])})"
            )
        name = config.sample
    else:  # a random held-out sample, but not the calibration reference
        refs = {REFERENCE_SLOTS[e][1] for e in edges}
        pool = [n for n in names if n not in refs]
        name = random.Random(config.seed).choice(pool)
    if len(edges) > 1:
        return name, f"{name}=heldout:{name}"
    return name, f"{name}=heldout:{edges[0]}:{name}"


def live_widths(config: DemoConfig) -> tuple[float, ...]:
    """The broadening FWHM (eV) the live analysis marginalises over: ``config.widths``, else
    :data:`~xas_bluesky.science.compare.broadening.DEFAULT_WIDTHS_EV` for a spectrum on the
    experiment's axis (not FEFF's width) and FEFF's own width (0) otherwise."""
    from xas_bluesky.science.compare.broadening import DEFAULT_WIDTHS_EV

    if config.widths is not None:
        return tuple(float(w) for w in config.widths)
    return tuple(DEFAULT_WIDTHS_EV) if config.axis == "experiment" else (0.0,)


def _on_feff_axis(config: DemoConfig, file: str, edge: str) -> Path:
    """A ``--sample-spectrum`` file on FEFF's axis: itself, or (``axis="experiment"``) a copy
    moved by the edge's convention (:mod:`xas_bluesky.science.compare.axis`) under the data
    directory."""
    src = Path(file)
    if config.axis == "feff":
        return src
    from xas_bluesky.science.compare.axis import to_feff_axis
    from xas_bluesky.science.spectra import SpectrumError, load_spectrum_csv

    try:
        energy, mu = load_spectrum_csv(src)
    except SpectrumError as exc:
        raise DemoError(str(exc)) from None
    out = Path(config.data_dir).resolve() / "spectra" / f"{src.stem}.{edge}.feff_axis.csv"
    out.parent.mkdir(parents=True, exist_ok=True)
    e = to_feff_axis(energy, edge, config.axis)
    rows = "".join(f"{a!r},{b!r}\n" for a, b in zip(e.tolist(), mu.tolist(), strict=True))
    out.write_text("energy_eV,mu\n" + rows)
    return out


class _SignalGuard:
    """SIGTERM ends the demo like Ctrl-C, so every exit path stops what we started.

    During a scan the RunEngine's own SIGINT handler pauses it (RE() then raises
    RunEngineInterrupted and the demo aborts the run); SIGTERM is turned into that SIGINT.
    Outside a scan both end in KeyboardInterrupt in the main thread.
    """

    run_engine: Any = None  # set while a scan runs

    def __enter__(self):
        self._old = None
        if threading.current_thread() is threading.main_thread():
            self._old = signal.signal(signal.SIGTERM, self._handle)
        return self

    @classmethod
    def _handle(cls, signum, frame):
        if cls.run_engine is not None:
            os.kill(os.getpid(), signal.SIGINT)  # the RunEngine's handler: pause, then abort
            return
        raise KeyboardInterrupt

    def __exit__(self, *exc):
        if self._old is not None:
            signal.signal(signal.SIGTERM, self._old)
        _SignalGuard.run_engine = None


def _start_probe(pvname: str, out: Path, env: dict, log_dir: Path) -> ManagedProcess:
    return _spawn(
        "score-probe",
        [
            sys.executable,
            "-m",
            "xas_bluesky.beamline.epics.probe",
            "--pv",
            pvname,
            "--out",
            str(out),
        ],
        env,
        log_dir,
    )


def _wait_probe(path: Path, proc: ManagedProcess, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists() and '"connected"' in path.read_text():
            return
        if not proc.alive():
            raise DemoError(f"the latency probe exited: {proc.log_tail()}")
        time.sleep(0.05)
    raise DemoError("the latency probe did not connect to the score PVs")


def run_demo(config: DemoConfig) -> dict:
    """Run the demo end to end; returns the JSON-able result (also written to ``json_path``)."""
    t_start = time.time()
    data_dir = Path(config.data_dir).resolve()
    log_dir = data_dir / "logs"
    log_dir.mkdir(parents=True, exist_ok=True)
    sample_name, slot = choose_sample(config)

    sim_port, score_port, repeater_port = free_ports(3)
    env = loopback_ca_env(sim_port, repeater_port, search_ports=[score_port])
    apply_ca_env(env)  # before epics/ophyd are imported

    try:
        check_slots([slot])
    except ValueError as exc:
        raise DemoError(str(exc)) from None

    with ExitStack() as stack, _SignalGuard():
        stack.enter_context(start_repeater(repeater_port, log_dir))
        sim = SimBeamline(
            slots=[slot],
            sample=slot.split("=")[0],
            clock=config.clock or DEFAULT_CLOCK,
            seed=config.seed,
            port=sim_port,
            repeater_port=repeater_port,
            log_dir=log_dir,
            broadening=config.broadening,
            axis_offset=config.axis_offset,
        )
        _say(config, f"demo: starting the simulated beamline and tiled under {data_dir} ...")
        with ThreadPoolExecutor(2) as pool:  # both take seconds: start them side by side
            f_sim = pool.submit(sim.start)
            f_tiled = pool.submit(
                start_tiled, data_dir
            )  # catalog.db at the top: `query --data-dir`
            errors = []
            for fut, stopper in ((f_sim, lambda: sim.stop()), (f_tiled, None)):
                try:
                    res = fut.result()
                    stack.callback(res.stop if stopper is None else stopper)
                except Exception as exc:
                    errors.append(exc)
            if errors:
                raise DemoError(f"could not start the services: {errors[0]}")
        tiled = f_tiled.result()
        result = _run_session(config, sim, tiled, sample_name, score_port, env, log_dir, stack)
    predictions = result.pop("_predictions", None)
    edge_predictions = result.pop("_edge_predictions", None)
    result["seconds"] = round(time.time() - t_start, 2)
    result["data_dir"] = str(data_dir)
    if config.json_path:
        Path(config.json_path).write_text(json.dumps(result, indent=2) + "\n")
    if config.plot_path:
        from xas_bluesky.apps.demo_plot import plot_demo

        if edge_predictions is None:
            plot_demo(result, config.plot_path, predictions)
        else:  # one figure per edge (OUT_O.png, OUT_N.png), and both stacked in OUT.png
            from xas_bluesky.apps.demo_plot import stack_images

            out = Path(config.plot_path)
            parts = []
            for e, sub in result["edges"].items():
                path = out.with_name(f"{out.stem}_{e}{out.suffix}")
                plot_demo(sub, str(path), edge_predictions[e])
                parts.append(path)
            stack_images(parts, out)
            _say(config, f"demo: plots in {out} ({', '.join(p.name for p in parts)} per edge)")
    best = result["ranking"][0] if result.get("ranking") else None
    if best:
        _say(
            config,
            f"demo: {result['points']} points, best {best['name']} ({best['smiles']}) "
            f"p={best['probability']:.3f}; sample was {sample_name}",
        )
    if result.get("groups"):
        lead = ", ".join(f"{g['name']} {g['probability']:.2f}" for g in result["groups"][:3])
        p_in = result.get("in_library")
        _say(
            config,
            f"demo: functional groups {lead}"
            + ("" if p_in is None else f"; in_library {p_in:.2f}"),
        )
    return result


class _Progress:
    """RunEngine callback: remembers primary events (times, channels) per run and prints live
    progress.

    It only copies numbers and reads the analysis' latest published update (no I/O but one
    print), so it costs the RunEngine microseconds.  Two runs may be open at once (both edges
    of a sample, :func:`~xas_bluesky.beamline.plans.two_edge_xanes_scan`): each keeps its own.
    """

    def __init__(self, config: DemoConfig, server):
        self.config = config
        self.server = server
        self.runs: dict[str, dict] = {}  # run uid -> fields, times, rows, stop
        self._primary: dict[str, str] = {}  # descriptor uid -> run uid
        self._last = ""
        self._n = 0

    def _new(self) -> dict:
        return {"fields": {}, "times": {}, "rows": [], "stop": {}, "edge": ""}

    def run(self, uid: str | None = None) -> dict:
        """What was recorded of run ``uid`` (default: the run started last)."""
        return self.runs.get(uid or self._last) or self._new()

    @property
    def times(self) -> dict[int, float]:
        return self.run()["times"]

    @property
    def rows(self) -> list[tuple[float, float, float]]:
        return self.run()["rows"]

    @property
    def stop(self) -> dict:
        return self.run()["stop"]

    def __call__(self, name, doc):
        if name == "stop":
            self.runs.setdefault(doc["run_start"], self._new())["stop"] = dict(doc)
        elif name == "start":
            run = self.runs.setdefault(doc["uid"], self._new())
            run["fields"] = dict(doc.get("xas_fields") or {})
            run["edge"] = str(doc.get("xas_element") or "")
            self._last = doc["uid"]
        elif name == "descriptor" and doc.get("name") == "primary":
            self._primary[doc["uid"]] = doc["run_start"]
        elif name == "event" and doc["descriptor"] in self._primary:
            run = self.runs[self._primary[doc["descriptor"]]]
            data = doc["data"]
            n = len(run["times"]) + 1
            self._n += 1
            run["times"][n] = doc["time"]
            f = run["fields"]
            run["rows"].append((data[f["energy"]], data[f["i0"]], data[f["signal"]]))
            upd = self.server.latest
            if self.config.progress is not None:
                best = upd.best_name or "-"
                group = f"  {upd.groups[0]} {upd.group_probabilities[0]:.2f}" if upd.groups else ""
                edge = f"{run['edge']} " if len(self.runs) > 1 else ""
                print(
                    f"  point {self._n:3d}  {edge}E={data[f['energy']]:8.2f} eV   best "
                    f"{best:<12} p={upd.best_probability:5.3f}  (scored {upd.n_events}){group}",
                    file=self.config.progress,
                    flush=True,
                )


def _read_pvs(server) -> dict:
    """Every score PV, read back over Channel Access (fresh gets); CHAR waveforms as str."""
    import epics

    out: dict[str, object] = {}
    for pvname in server.pvnames.values():
        pv = epics.PV(pvname, auto_monitor=False)
        if not pv.wait_for_connection(5.0):
            out[pvname] = None
            continue
        value = pv.get(use_monitor=False, as_string=pv.type in ("char", "time_char", "ctrl_char"))
        if hasattr(value, "tolist"):
            value = value.tolist()
        out[pvname] = value
        pv.disconnect()
    return out


def _measured(rows, mode: str, edge: str, view=None) -> dict:
    """The measured spectrum of the JSON: the points the analysis scored (``view``, the live
    plot's :class:`~xas_bluesky.beamline.analysis.live_plot.MatchView`), normalised; every
    reading when there is no view.  A flagged reading (a saturated count, a zero I0) is not
    among them: it would set the edge step."""
    arr = np.asarray(rows, dtype=float).reshape(-1, 3)
    if view is not None and view.energy.size:
        e, mu = view.energy, view.mu
    else:
        e, mu = arr[:, 0], mu_from_channels(mode, arr[:, 1], arr[:, 2], strict=False).mu
    order = np.argsort(e, kind="stable")
    e, mu = e[order], mu[order]
    try:
        n = normalize(e, mu, edge)
    except NormalizationError as exc:
        return {"energy_eV": e.tolist(), "mu_norm": None, "error": str(exc)}
    return {
        "energy_eV": np.round(n.energy, 4).tolist(),
        "mu_norm": np.round(n.norm, 6).tolist(),
        "energy_order_eV": np.round(arr[:, 0], 4).tolist(),  # in the order measured
    }


def _close_channel_access() -> None:
    import epics

    try:
        epics.ca.finalize_libca(maxtime=2.0)
    except Exception:  # best effort at shutdown
        pass


class _FinalSummaries:
    """An analysis sink that keeps the final :class:`~xas_bluesky.contracts.MatchSummary` of
    each run: the analysis' own counters (flagged points, repeats, gaps) for the JSON."""

    def __init__(self) -> None:
        self.finals: dict[str, Any] = {}

    def status(self, status: str, message: str) -> None:
        pass

    def run_opened(self, run) -> None:
        pass

    def update(self, run, summary, scored: bool) -> None:
        pass

    def run_closing(self, run, raw_stop: dict) -> None:
        pass

    def run_closed(self, run, summary, raw_stop: dict) -> None:
        self.finals[run.uid] = summary


def _ring_suspender(devs):
    """The profile's ring-current suspender (suspend below 100 mA, resume above 300 mA), with a
    count of its trips (``trips``) and a short settling time for the accelerated demo."""
    from bluesky.suspenders import SuspendFloor
    from ophyd import EpicsSignalRO

    class CountingSuspendFloor(SuspendFloor):
        trips = 0

        def __call__(self, value, **kwargs):
            was = self._tripped
            super().__call__(value, **kwargs)
            if self._tripped and not was:
                self.trips += 1

    monitor = EpicsSignalRO(devs.ring_current.pvname, name="ring_monitor", auto_monitor=True)
    monitor.wait_for_connection(timeout=10)
    return CountingSuspendFloor(monitor, 100.0, resume_thresh=300.0, sleep=0.5)


def _groups(summary) -> list[dict]:
    """The final summary's functional groups as the JSON's ``groups``: best first."""
    return [
        {"name": str(n), "probability": float(p)}
        for n, p in zip(summary.groups, summary.group_probabilities, strict=False)
    ]


def _prepare_library(config: DemoConfig, edge: str) -> None:
    """``--predict-library``: the model's reference library of the edge, predicted now when it
    is not cached (minutes on a CPU, once per model)."""
    from xas_bluesky.science.library_cache import (
        library_path,
        predict_library,
        shipped_model_version,
    )

    path = library_path(edge, shipped_model_version(edge), config.library_cache)
    if path.is_file():
        return
    _say(config, f"demo: predicting the {edge} reference library into {path} (minutes) ...")
    predict_library(edge, config.library_cache)


def _run_session(config, sim, tiled, sample_name, score_port, env, log_dir, stack) -> dict:
    from bluesky import RunEngine
    from bluesky.callbacks.buffer import BufferingWrapper
    from bluesky_tiled_plugins import TiledWriter

    from xas_bluesky.beamline.analysis import LiveMatchPlot, subscribe_live_analysis
    from xas_bluesky.beamline.epics.devices import MatchScores
    from xas_bluesky.beamline.epics.probe import pair_latencies

    edges = config.edges
    client = tiled.client()
    RE = RunEngine({})  # its SIGINT handler pauses a scan on Ctrl-C; we then abort it
    RE.md.update({"beamline_id": "xas-bluesky-sim", "demo": True})
    backup = Path(config.data_dir).resolve() / "backup"  # what tiled does not take: replay
    raw_writer = BufferingWrapper(TiledWriter(client, backup_directory=str(backup)))
    RE.subscribe(raw_writer)
    stack.callback(raw_writer.shutdown)  # drained before tiled stops (LIFO)

    from xas_bluesky.contracts import NO_CANDIDATES
    from xas_bluesky.science.compare.axis import offset_prior
    from xas_bluesky.science.compare.broadening import BroadenedComparator

    if config.candidates:
        candidates = Path(config.candidates).resolve()
    elif len(edges) > 1:  # the molecules in every edge's shipped library: the joint's candidates
        from xas_bluesky.resources import two_edge_candidates

        candidates = two_edge_candidates(Path(config.data_dir).resolve() / "two_edges.xyz", edges)
    else:
        candidates = candidates_file(edges[0]).resolve()
    spec = NO_CANDIDATES if config.no_candidates else str(candidates)
    # a spectrum from the experiment's axis: the convention's error widens the offset prior
    # (the comparator's keywords, one set for the analysis: the widest of the edges')
    priors = [offset_prior(e, config.axis) for e in edges] if config.axis != "feff" else [{}]
    prior = max(priors, key=lambda p: p.get("offset_sigma", 0.0))
    widths = live_widths(config)
    factory = None if widths == (0.0,) else partial(BroadenedComparator, widths_ev=widths)
    if config.groups and config.predict_library:
        for edge in edges:
            _prepare_library(config, edge)
    finals = _FinalSummaries()
    live = LiveMatchPlot()  # never drawn during the run: it keeps what --plot and the JSON show
    analysis = subscribe_live_analysis(
        RE, score_prefix=SCORE_PREFIX, tiled_client=client, candidates=spec,
        port=score_port, backup_directory=backup, comparator_kwargs=prior, sinks=[finals, live],
        comparator_factory=factory,
        open_world=config.groups, library_cache=config.library_cache, predict_library=False,
    )  # fmt: skip
    stack.callback(analysis.shutdown)
    if analysis.open_world is not None:  # read now, not in the middle of the scan
        for edge in edges:
            analysis.open_world.libraries.feff(edge)
    cands_by_edge: dict[str, Any] = {}
    if config.no_candidates:
        _say(config, "demo: open world, no candidates: functional groups only")
    else:
        for edge in edges:
            _say(config, f"demo: predicting {candidates.name} at the {edge} K edge with the GNN "
                         "(cached in tiled) ...")  # fmt: skip
            try:
                cands = analysis.cache.from_file(candidates, edge)
            except Exception as exc:
                raise DemoError(f"{candidates}: {exc}") from None
            for why in cands.skipped:
                _say(config, f"demo: skipped candidate at {edge}: {why}")
            _say(config, f"demo: {len(cands)} candidates, model {cands.model_version}")
            cands_by_edge[edge] = cands

    devs = sim.devices()
    scores = MatchScores(SCORE_PREFIX, name="scores", wait_timeout=30.0)
    scores.wait_for_connection(timeout=10)

    arrivals = log_dir / "score_arrivals.jsonl"
    probe = _start_probe(analysis.server.pvname("npoints"), arrivals, env, log_dir)
    stack.callback(probe.stop)
    _wait_probe(arrivals, probe)

    # runs first on exit: close our Channel Access channels before the IOCs go away, so libca
    # has no "virtual circuit disconnect" to complain about
    stack.callback(_close_channel_access)
    ctx = _EdgeContext(
        config=config, RE=RE, analysis=analysis, finals=finals, devs=devs, scores=scores,
        sim=sim, spec=spec, candidates=candidates, sample_name=sample_name, stack=stack,
        sample_uid=str(uuid.uuid4()), tiled_uri=tiled.uri, live=live,
    )  # fmt: skip
    per_edge = []
    if len(edges) > 1 and config.mode == "adaptive" and not config.faults:
        per_edge = _measure_both(ctx, cands_by_edge)
    else:
        for k, edge in enumerate(edges):
            # the second edge of a sample stops on the joint posterior once there is one
            stop_on = "joint" if k else "best"
            per_edge.append(_measure_edge(ctx, edge, cands_by_edge.get(edge), stop_on))
    pv = _read_pvs(analysis.server)
    time.sleep(0.2)  # let the probe write its last arrival lines
    probe.stop()
    lines = [json.loads(x) for x in arrivals.read_text().splitlines() if x.strip()]
    lat_all = []
    for k, res in enumerate(per_edge):  # each run's arrivals: from its start to the next's
        t0 = res.pop("_t0")
        if res.pop("_interleaved", False):
            # both runs at once: the point count on the PVs alternates between the runs, so
            # an event is paired only with an arrival of exactly its own count, after it
            lat_all += _exact_latencies(res.pop("_times"), lines)
            continue
        t1 = per_edge[k + 1]["_t0"] if k + 1 < len(per_edge) else math.inf
        lat_all += pair_latencies(res.pop("_times"), [a for a in lines if t0 <= a["t"] < t1])
    lat = np.asarray(lat_all) * 1e3
    latency = {
        "median": float(np.median(lat)) if lat.size else None,
        "p99": float(np.percentile(lat, 99)) if lat.size else None,
        "n": int(lat.size),
    }
    if len(per_edge) == 1:
        return {**per_edge[0], "pv": pv, "latency_ms": latency, "run_uid": per_edge[0]["run_uid"]}
    return _joint_result(ctx, per_edge, pv, latency)


def _exact_latencies(event_times: dict[int, float], arrivals: list[dict]) -> list[float]:
    """Latency of each event ``k``: the first arrival after it whose count is exactly ``k``."""
    ups = sorted((a["t"], a["value"]) for a in arrivals if "value" in a)
    out = []
    for k, t in sorted(event_times.items()):
        hit = next((ta for ta, v in ups if ta >= t and v == k), None)
        if hit is not None:
            out.append(hit - t)
    return out


@dataclass
class _EdgeContext:
    """What every edge's measurement of the demo shares."""

    config: DemoConfig
    RE: Any
    analysis: Any
    finals: _FinalSummaries
    devs: Any
    scores: Any
    sim: Any
    spec: str
    candidates: Path
    sample_name: str
    stack: Any
    sample_uid: str
    tiled_uri: str
    #: the live plot's sink: the scored points and best probabilities of every run
    live: Any = None


def _measure_edge(ctx: _EdgeContext, edge: str, cands, stop_on: str) -> dict:
    """Measure one edge of the sample (one run) and collect its part of the JSON."""
    from bluesky.utils import RunEngineInterrupted

    from xas_bluesky.beamline.plans import adaptive_xanes_scan, grid_xanes_scan

    config, RE, analysis, devs = ctx.config, ctx.RE, ctx.analysis, ctx.devs
    progress = _Progress(config, analysis.server)
    token = RE.subscribe(progress)
    drill = suspender = None
    if config.faults:
        from xas_bluesky.apps.demo_faults import FaultDrill, fault_schedule
        from xas_bluesky.science.adaptive import coarse_energies

        schedule = fault_schedule(config.seed, coarse_energies(edge).size, config.max_points)
        drill = FaultDrill(
            schedule, ctx.sim.prefix, restart_ioc=analysis.server.restart,
            say=lambda text: _say(config, text),
        ).connect()  # fmt: skip
        ctx.stack.callback(drill.close)
        RE.subscribe(drill)
        suspender = _ring_suspender(devs)
        RE.install_suspender(suspender)
        _say(config, f"demo: fault drill, {len(schedule)} faults scheduled (seed {config.seed})")
    slot = ctx.sample_name[:39]
    common = dict(
        sample=slot,
        sample_changer=devs.sample_changer,
        candidates=ctx.spec,
        ring_current=devs.ring_current,  # points measured with the beam down are flagged
        md={"sample_uid": ctx.sample_uid},  # the edges of one sample: the joint posterior
    )
    if config.mode == "grid":
        plan = grid_xanes_scan(devs.mono, devs.det, edge=edge, **common)
    else:
        # the drill's score-IOC restart: Channel Access clients take seconds to find it again
        # (more under load), so the wait for a score gets longer than the plan's default 10 s
        plan = adaptive_xanes_scan(
            devs.mono, devs.det, ctx.scores, edge=edge, threshold=config.threshold,
            max_points=config.max_points, score_timeout=30.0 if config.faults else 10.0,
            stop_on=stop_on, **common,
        )  # fmt: skip
    _say(config, f"demo: {config.mode} scan of {ctx.sample_name} at the {edge} K edge")
    _SignalGuard.run_engine = RE
    t0 = time.time()
    try:
        uids = RE(plan)
    except RunEngineInterrupted:
        RE.abort("interrupted")
        raise KeyboardInterrupt from None
    finally:
        _SignalGuard.run_engine = None
        RE.unsubscribe(token)
    run_uid = uids[0]  # a tuple of uids: call_returns_result is off
    if not analysis.wait_idle(120):
        raise DemoError("the analysis did not finish scoring within 120 s")
    if drill is not None:
        drill.close()
        RE.remove_suspender(suspender)
    return _edge_json(ctx, edge, run_uid, cands, progress.run(run_uid), t0, drill, suspender)


def _measure_both(ctx: _EdgeContext, cands_by_edge: dict) -> list[dict]:
    """Measure every edge of the sample in one plan, point by point where each tells most
    (:func:`~xas_bluesky.beamline.plans.two_edge_xanes_scan`: one run per edge, both open)."""
    from bluesky.utils import RunEngineInterrupted

    from xas_bluesky.beamline.plans import two_edge_xanes_scan

    config, RE, analysis, devs = ctx.config, ctx.RE, ctx.analysis, ctx.devs
    edges = config.edges
    progress = _Progress(config, analysis.server)
    token = RE.subscribe(progress)
    plan = two_edge_xanes_scan(
        devs.mono, devs.det, ctx.scores, edges=edges, threshold=config.threshold,
        max_points=config.max_points * len(edges), sample=ctx.sample_name[:39],
        sample_changer=devs.sample_changer, candidates=ctx.spec,
        ring_current=devs.ring_current, md={"sample_uid": ctx.sample_uid},
    )  # fmt: skip
    _say(config, f"demo: adaptive scan of {ctx.sample_name} at the {' and '.join(edges)} K "
                 "edges, each point at the edge where it tells most")  # fmt: skip
    _SignalGuard.run_engine = RE
    t0 = time.time()
    try:
        RE(plan)
    except RunEngineInterrupted:
        RE.abort("interrupted")
        raise KeyboardInterrupt from None
    finally:
        _SignalGuard.run_engine = None
        RE.unsubscribe(token)
    if not analysis.wait_idle(120):
        raise DemoError("the analysis did not finish scoring within 120 s")
    by_edge = {rec["edge"]: uid for uid, rec in progress.runs.items()}
    out = []
    for edge in edges:
        uid = by_edge[edge]
        res = _edge_json(ctx, edge, uid, cands_by_edge.get(edge), progress.run(uid), t0)
        res["_interleaved"] = True
        out.append(res)
    return out


def _edge_json(ctx, edge, run_uid, cands, rec: dict, t0: float, drill=None, suspender=None):
    """One edge's part of the demo's JSON, from its run's record (:class:`_Progress`)."""
    from xas_bluesky.beamline.catalog import final_ranking

    config, analysis = ctx.config, ctx.analysis
    result = analysis.results.get(run_uid)
    ranking = final_ranking(result, cands) if result is not None else []
    final = ctx.finals.finals.get(run_uid)
    if result is None and not (config.no_candidates and final is not None and final.groups):
        raise DemoError(f"the analysis produced no result: {'; '.join(analysis.errors[-3:])}")
    groups = [] if final is None else _groups(final)
    in_library = None if final is None else final.in_library
    view = None if ctx.live is None else ctx.live.views.get(run_uid)
    return {
        "sample": ctx.sample_name,
        "edge": edge,
        "mode": config.mode,
        "seed": config.seed,
        "axis": config.axis,
        "broadening_ev": config.broadening,
        "axis_offset_ev": config.axis_offset,
        "widths_ev": list(live_widths(config)),
        "points": len(rec["times"]),
        "ranking": ranking,
        "run_uid": run_uid,
        "analysis_run_uid": analysis.analysis_uids.get(run_uid),
        "tiled_uri": ctx.tiled_uri,
        "stop_reason": rec["stop"].get("reason"),
        "offset_ev": None if result is None else float(result.offset_ev),
        "true_offset_ev": ctx.sim.true_offset(),
        "measured": _measured(rec["rows"], "TEY", edge, view),
        # (points scored, best probability) after each scored update of the analysis
        "probability_trace": [] if view is None else [[n, p] for n, p in view.history],
        "candidates": None if config.no_candidates else str(ctx.candidates),
        "model_version": None if cands is None else cands.model_version,
        # the open world: functional groups (best first) and in_library (null: not computed)
        "groups": groups,
        "in_library": None if in_library is None or not np.isfinite(in_library) else in_library,
        "groups_points": 0 if final is None else int(final.groups_n_points),
        "status": None if final is None else final.status,
        "no_candidates": config.no_candidates,
        # the analysis' own counters (its final summary of the run) and the score IOC's
        "flagged_points": int(final.n_flagged) if final is not None else 0,
        "gaps": int(final.gaps) if final is not None else 0,
        "duplicates": int(final.n_duplicates) if final is not None else 0,
        # points the comparator set aside: their reading passed, no candidate came near them
        "glitch_points": int(final.n_glitches) if final is not None else 0,
        "ioc_restarts": int(analysis.server.restarts),
        "faults": None
        if drill is None
        else {
            "injected": drill.injected,
            "not_reached": drill.not_reached,
            "suspensions": suspender.trips if suspender is not None else 0,
        },
        "_predictions": {}
        if cands is None
        else {
            name: (
                cands.energy,
                cands.mean[i],
                cands.std[i] if cands.std is not None else np.zeros_like(cands.mean[i]),
            )
            for i, name in enumerate(cands.names)
            if name in {r["name"] for r in ranking[:3]}
        },
        "_t0": t0,
        "_times": rec["times"],
    }


def _joint_result(ctx: _EdgeContext, per_edge: list[dict], pv: dict, latency: dict) -> dict:
    """The JSON of a two-edge demo: the joint ranking on top, each edge's own under ``edges``."""
    last = per_edge[-1]
    joint = ctx.analysis.joint_results.get(last["run_uid"])
    if joint is None and not ctx.config.no_candidates:
        raise DemoError(
            "no joint posterior of the edges (no candidate shared by the edges' lists, or an "
            f"edge without a fit): {'; '.join(ctx.analysis.errors[-3:])}"
        )
    edges = {r["edge"]: r for r in per_edge}
    groups = sorted(
        ({**g, "edge": r["edge"]} for r in per_edge for g in r["groups"]),
        key=lambda g: -g["probability"],
    )
    in_lib = [r["in_library"] for r in per_edge if r["in_library"] is not None]
    measured: dict[str, list] = {"energy_eV": [], "mu_norm": []}
    for r in sorted(per_edge, key=lambda r: r["measured"]["energy_eV"][:1]):
        if r["measured"].get("mu_norm") is not None:
            measured["energy_eV"] += r["measured"]["energy_eV"]
            measured["mu_norm"] += r["measured"]["mu_norm"]
    total = lambda key: sum(int(r[key]) for r in per_edge)  # noqa: E731
    return {
        "sample": ctx.sample_name,
        "edge": ",".join(edges),
        "mode": ctx.config.mode,
        "seed": ctx.config.seed,
        "axis": ctx.config.axis,
        "broadening_ev": ctx.config.broadening,
        "axis_offset_ev": ctx.config.axis_offset,
        "widths_ev": list(live_widths(ctx.config)),
        "points": total("points"),
        "ranking": [] if joint is None else joint.ranking(),
        "edges": {
            e: {k: v for k, v in r.items() if not k.startswith("_")} for e, r in edges.items()
        },
        "joint": None
        if joint is None
        else {
            "edges": joint.edges,
            "n_candidates": len(joint.names),
            "outlier_probability": joint.joint.outlier_probability,
            "run_uids": joint.run_uids,
        },
        "sample_uid": ctx.sample_uid,
        "pv": pv,
        "latency_ms": latency,
        "run_uid": last["run_uid"],
        "analysis_run_uid": last["analysis_run_uid"],
        "tiled_uri": ctx.tiled_uri,
        "stop_reason": last["stop_reason"],
        "offset_ev": None,  # one per edge: edges[E]["offset_ev"]
        "true_offset_ev": last["true_offset_ev"],
        "measured": measured,
        "candidates": last["candidates"],
        "model_version": ",".join(f"{r['edge']}={r['model_version']}" for r in per_edge),
        # groups of every edge, best first, each naming its edge; in_library the least
        # (the sample is among the candidates only if it is at every edge)
        "groups": groups,
        "in_library": min(in_lib) if in_lib else None,
        "groups_points": total("groups_points"),
        "status": last["status"],
        "no_candidates": ctx.config.no_candidates,
        "flagged_points": total("flagged_points"),
        "gaps": total("gaps"),
        "duplicates": total("duplicates"),
        "glitch_points": total("glitch_points"),
        "ioc_restarts": int(ctx.analysis.server.restarts),
        "faults": None,
        "_edge_predictions": {r["edge"]: r["_predictions"] for r in per_edge},
    }
