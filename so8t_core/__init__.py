"""so8t_core: the small tested package the SO8T notebooks call.

The package mirrors the notebooks (see the README's "Layout"); ``notebooks/`` has the literate walk-through.

Importing it silences library messages that tell a reader of the reports nothing (listed below, each with why),
so a warning that does show in a report means something.
"""

import logging
import warnings

__version__ = "0.2.0"


def _quiet_library_noise() -> None:
    # bitsandbytes logs at import, on CPUs with AVX512-BF16, that an optional hub kernel package is missing; this
    # project never downloads kernels and the CPU path works without it.
    logging.getLogger("bitsandbytes.backends.cpu.ops").setLevel(logging.ERROR)
    # peft 0.21 still reads transformers' renamed `is_gradient_checkpointing` property; nothing for a user to do.
    warnings.filterwarnings("ignore", message=r"`is_gradient_checkpointing` is deprecated", category=FutureWarning)
    # torch marks TorchScript deprecated; transformers' own modules trigger it on import, not this package.
    warnings.filterwarnings("ignore", message=r"`torch\.jit\.script", category=DeprecationWarning)


_quiet_library_noise()
