"""Quad-thinking answer format: four thinking parts, then the only part that ever leaves the system.

Layout of an assistant turn::

    <think-observation>…</think-observation><think-deduction>…</think-deduction>
    <think-abduction>…</think-abduction><think-integration>…</think-integration><final>…</final>

Explained in notebooks/06_safety_eval.ipynb.
"""

from __future__ import annotations

THINK_PARTS = ("observation", "deduction", "abduction", "integration")
FINAL_TAG = "final"


def format_quad(observation: str, deduction: str, abduction: str, integration: str, final: str) -> str:
    """Join the four thinking parts and the final answer into the tagged layout.

    Args:
        observation, deduction, abduction, integration: thinking texts (never shown to a user).
        final: the answer text, the only part ``extract_final`` lets out.
    Returns:
        The tagged string.
    """
    parts = dict(zip(THINK_PARTS, (observation, deduction, abduction, integration)))
    body = "".join(f"<think-{k}>{v}</think-{k}>" for k, v in parts.items())
    return f"{body}<{FINAL_TAG}>{final}</{FINAL_TAG}>"
