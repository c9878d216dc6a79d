"""RunEngine, its metadata and the tiled writer (NSLS-II profile_collection style).

The pieces of ``nslsii.configure_base`` that a XAS beamline uses, set up here one by one rather
than through nslsii itself (which pulls in the facility's whole stack: Olog, ophyd's EPICS
logging, a databroker v1 catalog): SupplementalData ``sd``, and in an interactive session
BestEffortCallback ``bec``, a ProgressBarManager and bluesky's IPython magics; a Kafka publisher
as ``nslsii.configure_kafka_publisher`` configures it.

Environment (defaults fit ``xas-bluesky sim-beamline`` on this machine):

- ``XAS_BEAMLINE_PREFIX``  PV prefix of the beamline (``SIM:``)
- ``XAS_RING_CURRENT_PV`` the storage ring's current, for the beam-dump suspender and the
                           ``ring_current`` device (``{XAS_BEAMLINE_PREFIX}Ring:Current-I``, the
                           sim beamline's; NSLS-II: ``SR:OPS-BI{DCCT:1}I:Real-I``)
- ``XAS_BEAMLINE_ID``      ``RE.md["beamline_id"]`` (``xas-sim``)
- ``XAS_SCORE_PREFIX``     PV prefix of the structure-match score IOC (``XAS:``)
- ``XAS_TILED_URI``        tiled server to write runs to (unset: runs are not stored)
- ``XAS_TILED_API_KEY``    its API key (else ``TILED_API_KEY``)
- ``XAS_BACKUP_DIR``       where runs and match results wait while tiled is away
                           (``~/.cache/xas_bluesky/backup``; ``xas-bluesky replay`` writes them)
- ``XAS_TILED_BATCH``      events the raw-run writer gathers per write (``1``: every event at once,
                           so a restarted remote worker finds the run in flight in tiled)
- ``XAS_ZMQ_PUBLISH``      a ``bluesky-0MQ-proxy``'s in address (``HOST:PORT``): documents are
                           published there in msgpack for ``xas-bluesky worker --zmq``
- ``XAS_KAFKA_CONFIG``     nslsii's Kafka settings (``/etc/bluesky/kafka.yml``; ``""``: none):
                           when the file exists, documents go to the topic
                           ``<beamline_id>.bluesky.runengine.documents`` as
                           ``nslsii.configure_kafka_publisher`` sends them
- ``XAS_MD_DIR``           directory of a persistent ``RE.md`` (unset: in memory)
- ``XAS_SCORE_PORT``       CA port of the in-process score IOC (a free one)
- ``XAS_CANDIDATES``       default candidate structure file (the shipped library of the edge)
- ``XAS_ANALYSIS``         ``0`` leaves the live analysis out (20-analysis.py)

The Channel Access variables (``EPICS_CA_ADDR_LIST`` ...) are the standard ones;
``xas-bluesky sim-beamline`` prints those of the sim beamline.
"""

import atexit
import os

from bluesky import RunEngine
from bluesky.callbacks.best_effort import BestEffortCallback
from bluesky.callbacks.buffer import BufferingWrapper
from bluesky.preprocessors import SupplementalData
from bluesky.utils import ProgressBarManager

from xas_bluesky.contracts import DEFAULT_PREFIX

BEAMLINE_PREFIX = os.environ.get("XAS_BEAMLINE_PREFIX", "SIM:")
RING_CURRENT_PV = os.environ.get("XAS_RING_CURRENT_PV") or BEAMLINE_PREFIX + "Ring:Current-I"
SCORE_PREFIX = os.environ.get("XAS_SCORE_PREFIX", DEFAULT_PREFIX)
TILED_URI = os.environ.get("XAS_TILED_URI") or None
TILED_API_KEY = os.environ.get("XAS_TILED_API_KEY") or os.environ.get("TILED_API_KEY") or None
BACKUP_DIR = os.environ.get("XAS_BACKUP_DIR") or os.path.expanduser("~/.cache/xas_bluesky/backup")

RE = RunEngine({})
if os.environ.get("XAS_MD_DIR"):
    from bluesky.utils import PersistentDict

    RE.md = PersistentDict(os.environ["XAS_MD_DIR"])
RE.md.setdefault("beamline_id", os.environ.get("XAS_BEAMLINE_ID", "xas-sim"))
RE.md.setdefault("facility", "NSLS-II")

try:  # the queue server's worker runs this profile too (start-re-manager --startup-dir)
    from bluesky_queueserver import is_re_worker_active
except ImportError:  # bluesky-queueserver not installed: always an interactive session

    def is_re_worker_active():
        return False


# baseline readings and monitors, as NSLS-II profiles have them: sd.baseline.append(device)
sd = SupplementalData()
RE.preprocessors.append(sd)
if not is_re_worker_active():
    # an interactive session: a table of each run's readings and a progress bar for moves
    # (the queue server's worker has no terminal to draw them on)
    bec = BestEffortCallback()
    bec.disable_plots()
    RE.subscribe(bec)
    RE.waiting_hook = ProgressBarManager()
    # bluesky's %mov / %movr / %ct / %wa in IPython, as nslsii.configure_base registers them
    try:
        from IPython import get_ipython
    except ImportError:
        get_ipython = None
    _ip = get_ipython() if get_ipython is not None else None
    if _ip is not None:
        from bluesky.magics import BlueskyMagics

        _ip.register_magics(BlueskyMagics)

tiled_client = None
tiled_writer = None
tiled_writer_buffer = None
if TILED_URI:
    from bluesky_tiled_plugins import TiledWriter
    from tiled.client import from_uri

    tiled_client = from_uri(TILED_URI, api_key=TILED_API_KEY)
    # a run tiled does not take (an outage) is kept whole in BACKUP_DIR as JSON lines
    tiled_writer = TiledWriter(
        tiled_client,
        backup_directory=BACKUP_DIR,
        batch_size=int(os.environ.get("XAS_TILED_BATCH", "1")),
    )
    # the writer makes HTTP requests: behind a buffer it never holds up the RunEngine
    tiled_writer_buffer = BufferingWrapper(tiled_writer)
    RE.subscribe(tiled_writer_buffer)
else:
    print("00-base: XAS_TILED_URI not set; runs are not stored in tiled")


# Kafka, as NSLS-II beamlines publish (the kafka extra): read by `xas-bluesky worker --kafka`
kafka_publisher = None
_kafka_yml = os.environ.get("XAS_KAFKA_CONFIG", "/etc/bluesky/kafka.yml")
if _kafka_yml and os.path.exists(_kafka_yml):
    try:
        from xas_bluesky.beamline.kafka_publisher import configure_kafka_publisher
    except ImportError as _exc:
        print(f"00-base: {_kafka_yml} found but no Kafka publisher ({_exc}): install .[kafka]")
    else:
        kafka_publisher = configure_kafka_publisher(
            RE, RE.md["beamline_id"], config_path=_kafka_yml
        )
        if kafka_publisher.error:
            print(f"00-base: {kafka_publisher.error}")

zmq_publisher = None
if os.environ.get("XAS_ZMQ_PUBLISH"):
    from xas_bluesky.beamline.remote import make_publisher

    # msgpack, as the worker expects (never pickle)
    zmq_publisher = make_publisher(os.environ["XAS_ZMQ_PUBLISH"])
    RE.subscribe(zmq_publisher)


def close_tiled_writer():
    """Write out every buffered document and stop the writer (before tiled stops)."""
    if tiled_writer_buffer is not None:
        tiled_writer_buffer.shutdown(wait=True)


# the queue server's worker (and a plain `exit`) leaves through the interpreter's exit: write out
# what is still buffered, so that the last run reaches tiled whole, stop document included
atexit.register(close_tiled_writer)
