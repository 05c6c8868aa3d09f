"""Noiseless model spectra from stellar labels: a one-layer atmosphere, the shipped atomic line
list, molecular bands and the instrument's resolution (docs/simulator.md has the physics).

The RV templates (:mod:`lamost_rrnet.spectra.rv`) are made with it, and so are the
simulator's spectra (:mod:`lamost_rrnet.simulate`).
"""
