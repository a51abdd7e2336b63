"""Notebook helpers: the source shown next to an equation, and the library noise the package silences."""

from __future__ import annotations

import logging
import warnings

import so8t_core
from so8t_core.gate.rotation import cayley, skew
from so8t_core.show import source_markdown


def test_source_markdown_is_the_functions_source_in_one_python_block() -> None:
    text = source_markdown(skew, cayley)
    assert text.startswith("```python\ndef skew(")
    assert text.endswith("\n```")
    assert "def cayley(" in text
    assert text.count("```") == 2


def test_importing_the_package_silences_only_the_listed_library_noise() -> None:
    so8t_core._quiet_library_noise()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("default")
        so8t_core._quiet_library_noise()  # re-applied inside this context, as at import
        warnings.warn("`is_gradient_checkpointing` is deprecated and will be removed", FutureWarning, stacklevel=1)
        warnings.warn("something a reader should see", FutureWarning, stacklevel=1)
    assert [str(w.message) for w in caught] == ["something a reader should see"]
    assert logging.getLogger("bitsandbytes.backends.cpu.ops").getEffectiveLevel() == logging.ERROR
