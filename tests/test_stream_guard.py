"""The remote worker's StreamGuard with plain documents: gaps, duplicates, the stop's count,
events read back, a run joined late (tiled replaced by a stand-in)."""

from __future__ import annotations

from event_model import compose_run

from xas_bluesky.beamline import remote
from xas_bluesky.beamline.remote import StreamGuard


def _run(n: int):
    xas = {"xas_element": "O", "xas_fields": {"energy": "x", "i0": "x", "signal": "x"}}
    bundle = compose_run(metadata=xas)
    desc = bundle.compose_descriptor(
        name="primary", data_keys={"x": {"dtype": "number", "shape": [], "source": "s"}}
    )
    events = [
        desc.compose_event(data={"x": float(i)}, timestamps={"x": 0.0}, seq_num=i + 1)
        for i in range(n)
    ]
    return bundle.start_doc, desc.descriptor_doc, events, bundle.compose_stop()


def _seqs(out):
    seqs = []
    for name, doc in out:
        if name == "event":
            seqs.append(doc["seq_num"])
        elif name == "event_page":
            seqs += list(doc["seq_num"])
    return seqs


class _Node:
    def __init__(self, metadata, children=None):
        self.metadata = metadata
        self.children = children or {}

    def __getitem__(self, key):
        return self.children[key]

    def __iter__(self):
        return iter(self.children)


class _Tiled:
    """What the guard asks of tiled: runs by uid (start, stop, streams' descriptors)."""

    def __init__(self, start, desc, stop=None):
        smd = {k: v for k, v in desc.items() if k not in ("name", "run_start", "object_keys")}
        md = {"start": start, **({"stop": stop} if stop else {})}
        self.runs = {start["uid"]: _Node(md, {"primary": _Node(smd)})}

    def __getitem__(self, uid):
        return self.runs[uid]

    def search(self, query):
        return self

    def keys(self):
        return list(self.runs)


def test_gaps_and_tail_found_and_lost_without_tiled():
    start, desc, events, stop = _run(10)
    out = []
    g = StreamGuard(lambda n, d: out.append((n, d)))
    for doc in [start, desc]:
        g(*(("start", doc) if doc is start else ("descriptor", doc)))
    for ev in events[:3] + events[5:8] + events[6:7]:  # 4, 5 missing; 7 twice; 9, 10 missing
        g("event", ev)
    g("stop", stop)
    assert _seqs(out) == [1, 2, 3, 6, 7, 8]
    assert out[-1][0] == "stop"
    (note,) = g.take_notes(start["uid"])
    assert "4 of 10 primary events missed over 0MQ (seq 4-5, 9-10); lost" in note


def test_missed_events_read_back_before_the_stop(monkeypatch):
    start, desc, events, stop = _run(10)
    monkeypatch.setattr(remote, "stream_events", lambda client, uid, stream, d: list(events))
    out = []
    g = StreamGuard(lambda n, d: out.append((n, d)), tiled_client=_Tiled(start, desc, stop))
    g("start", start)
    g("descriptor", desc)
    for ev in events[:2] + events[6:]:
        g("event", ev)
    g("stop", stop)
    assert sorted(_seqs(out)) == list(range(1, 11))
    assert out[-1][0] == "stop"
    (note,) = g.take_notes(start["uid"])
    assert "4 of 10 primary events missed over 0MQ (seq 3-6); all read back from tiled" in note
    assert g.open_runs() == 0


def test_run_joined_late_is_read_from_tiled(monkeypatch):
    start, desc, events, stop = _run(10)
    monkeypatch.setattr(remote, "stream_events", lambda client, uid, stream, d: events[:6])
    out = []
    g = StreamGuard(lambda n, d: out.append((n, d)), tiled_client=_Tiled(start, desc))
    for ev in events[4:]:  # the worker started while event 5 was on its way
        g("event", ev)
    g("stop", stop)
    assert [n for n, _ in out[:2]] == ["start", "descriptor"]
    assert _seqs(out) == list(range(1, 11))
    (note,) = g.take_notes(start["uid"])
    assert note == "worker joined the run late: primary events 1-4 missed over 0MQ, read from tiled"


def test_events_of_an_unknown_run_without_tiled_are_reported():
    start, desc, events, stop = _run(3)
    out, statuses = [], []
    g = StreamGuard(lambda n, d: out.append((n, d)), status=lambda s, m: statuses.append((s, m)))
    g("event", events[0])
    assert out == [] and g.dropped == 1
    assert statuses and statuses[0][0] == "Warning" and "no tiled client" in statuses[0][1]
