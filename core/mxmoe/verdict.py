"""What a backend answers when asked whether it can run a config on a device."""

from __future__ import annotations

import dataclasses
import math

from .config import MX_BLOCK, MoEConfig

__all__ = ["Verdict"]


def _round_up(value: int, multiple: int) -> int:
    return -(-value // multiple) * multiple


@dataclasses.dataclass(frozen=True)
class Verdict:
    """A backend's answer from ``supports_config``.

    ``supported`` with ``priority`` (higher wins; keyring-style: the always-available
    fallback is low, a vendor kernel on its own hardware high), or not, with a
    ``reason`` a user can act on. A supported verdict also tells the layer how the
    backend lays out the layer: sizes are padded up to ``hidden_multiple`` /
    ``intermediate_multiple`` (always to a whole MX block), and ``routes_internally``
    backends receive router logits instead of top-k weights and ids.
    """

    supported: bool
    reason: str | None = None
    priority: float = 0
    hidden_multiple: int = 1
    intermediate_multiple: int = 1
    routes_internally: bool = False

    def __post_init__(self) -> None:
        if not isinstance(self.supported, bool):
            raise TypeError(f"supported: expected a bool, got {type(self.supported).__name__}")
        if not self.supported and not self.reason:
            raise ValueError("reason: an unsupported verdict must say why")
        if self.reason is not None and not isinstance(self.reason, str):
            raise TypeError(f"reason: expected a str, got {type(self.reason).__name__}")
        if isinstance(self.priority, bool) or not isinstance(self.priority, (int, float)):
            raise TypeError(f"priority: expected a number, got {type(self.priority).__name__}")
        for field in ("hidden_multiple", "intermediate_multiple"):
            value = getattr(self, field)
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise ValueError(f"{field}: expected a positive int, got {value!r}")

    @classmethod
    def yes(cls, priority: float = 0, **layout: object) -> Verdict:
        """Supported, at ``priority``, with optional layout fields."""
        return cls(True, None, priority, **layout)  # type: ignore[arg-type]

    @classmethod
    def no(cls, reason: str) -> Verdict:
        """Unsupported, because ``reason``."""
        return cls(False, reason)

    def padded_sizes(self, config: MoEConfig) -> tuple[int, int]:
        """(hidden, intermediate) after this backend's padding."""
        h = _round_up(config.hidden_size, math.lcm(self.hidden_multiple, MX_BLOCK))
        i = _round_up(config.intermediate_size, math.lcm(self.intermediate_multiple, MX_BLOCK))
        return h, i
