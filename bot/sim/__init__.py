"""The IVH simulator: Tencent's two customization endpoints on loopback, for `ivh-approvals
demo`, `ivh-approvals simulate` and the tests. The product's loops never import it (an
import-linter contract in pyproject.toml says so)."""

from bot.sim.server import RunningSimulator, Simulator, start
from bot.sim.state import SimTask

__all__ = ["RunningSimulator", "SimTask", "Simulator", "start"]
