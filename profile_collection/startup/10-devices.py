"""ophyd devices of the beamline: mono, detectors, sample changer, ring current."""

from xas_bluesky.beamline.devices import make_devices

beamline = make_devices(BEAMLINE_PREFIX, ring_current_pv=RING_CURRENT_PV)
mono = beamline.mono
det = beamline.det
sample_changer = beamline.sample_changer
ring_current = beamline.ring_current
