"""The gate: SO(8) block rotations, the alpha gate, PET and the soul wrapper (notebooks 01-02).

Imports only ``so8t_core.config``; every other part of the package builds on it.
"""
