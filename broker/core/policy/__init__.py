"""Policy as code: Cedar policies decide every credential request (docs/policy.md).

The public surface: :class:`PolicyEngine` (load, reload, decide), :class:`PolicyRequest`,
:class:`Decision` and :class:`Effect`, :class:`PolicyInfo`, and ``TAINTS``, the taint labels.
"""

from broker.core.policy.engine import PolicyEngine
from broker.core.policy.loader import PolicyInfo
from broker.core.policy.model import TAINTS, Decision, Effect, PolicyRequest

__all__ = ["TAINTS", "Decision", "Effect", "PolicyEngine", "PolicyInfo", "PolicyRequest"]
