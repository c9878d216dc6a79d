"""The simulated soft X-ray XAS beamline: caproto IOCs that behave like a real one over Channel Access.

- :mod:`sim_iocs.physics` -- the whole physics (no EPICS): sample spectra, beam, ring, detectors.
- :mod:`sim_iocs.beamline` -- one IOC process serving mono, detectors, sample changer and ring
  (``python -m sim_iocs.beamline --prefix SIM: --list-pvs``).
- :mod:`sim_iocs.mono` -- the monochromator alone (``python -m sim_iocs.mono``), for tests of
  motion and limits.
- :mod:`sim_iocs.launcher` -- :class:`~sim_iocs.launcher.SimBeamline`: the beamline IOC in a
  subprocess on loopback, for the demo, the ``sim-beamline`` command, benchmarks and tests.

``sim_iocs`` depends on ``xas_bluesky`` (spectra, shipped resources, the tuned caproto server),
never the reverse: only the applications (``xas_bluesky.apps``) import the simulator.

Every server starts through :func:`xas_bluesky.beamline.epics.server.run_ioc` (TCP_NODELAY).
"""
