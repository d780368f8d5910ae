"""The escalation rule: one small pure function that compares the specialist's confidence with a threshold."""

from enum import Enum


class Route(str, Enum):
    ACCEPT = "accept"
    """The specialist's answer is final."""
    ESCALATE = "escalate"
    """The item goes to the LLM."""


def route(confidence: float, threshold: float) -> Route:
    """Escalate an item whose specialist confidence is below ``threshold`` (0 escalates nothing, 1 nearly all)."""
    if not 0.0 <= threshold <= 1.0:
        raise ValueError(f"threshold must be within [0, 1], not {threshold}")
    return Route.ESCALATE if confidence < threshold else Route.ACCEPT
