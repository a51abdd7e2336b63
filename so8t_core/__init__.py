"""so8t_core: the small tested package the SO8T notebooks call.

One concept per module; see ``notebooks/`` for the literate walk-through of each.
"""

__version__ = "0.1.0"
