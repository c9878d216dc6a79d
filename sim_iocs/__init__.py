"""The simulated soft X-ray XAS beamline: caproto IOCs that behave like a real one over Channel Access.

- :mod:`sim_iocs.physics` -- the whole physics (no EPICS): sample spectra, beam, ring, detectors.
- :mod:`sim_iocs.beamline` -- one IOC process serving mono, detectors, sample changer and ring
  (``python -m sim_iocs.beamline --prefix SIM: --list-pvs``).
- :mod:`sim_iocs.mono` -- the monochromator alone (``python -m sim_iocs.mono``), for tests of
  motion and limits.

Every server starts through :func:`xas_bluesky.beamline.epics.server.run_ioc` (TCP_NODELAY).
"""
