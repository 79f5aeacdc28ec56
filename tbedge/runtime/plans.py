"""TensorRT plan compatibility: which TensorRT release and GPU a plan runs on (pure code, no TensorRT import).

Both the bundle reader (``bundle.check_plan_device``) and the TensorRT runner use it, so it lives below
both of them.
"""

from __future__ import annotations

import re

from ..errors import TbedgeError

REBUILD_CMD = "tbedge build-engine --default --target tensorrt --out {out}"
PLAN_KEYS = ("trt_version", "compute_capability")


class PlanCompatError(TbedgeError, RuntimeError):
    """A plan that cannot run on this host; the message ends with the rebuild command."""


def _version_tuple(v: str) -> tuple[int, ...]:
    parts = []
    for p in str(v).strip().split("."):
        m = re.match(r"\d+", p)  # leading digits only: "0rc1" is 0
        if not m:
            break
        parts.append(int(m.group()))
    if not parts:
        raise ValueError(f"not a version: {v!r}")
    return tuple(parts)


def _cc_tuple(cc: str) -> tuple[int, int]:
    s = str(cc).strip().lower().removeprefix("sm_").removeprefix("compute_")
    if "." in s:
        a, b = s.split(".", 1)
        return int(a), int(b)
    if s.isdigit() and len(s) >= 2:
        return int(s[:-1]), int(s[-1])
    raise ValueError(f"not a compute capability: {cc!r}")


def check_plan_compat(plan_meta: dict, trt_version: str, compute_capability: str, out: str = "<dir>") -> None:
    """Raise PlanCompatError unless a plan described by ``plan_meta`` (the bundle manifest's plan
    entry) runs under TensorRT ``trt_version`` on a GPU of ``compute_capability``.

    TensorRT plans are tied to the TensorRT release that built them and to the GPU's SM version.
    Versions compare on the components both sides state ("10.3.0" matches "10.3.0.30"). Two
    opt-ins recorded by the builder relax this: ``version_compatible`` (a plan built with
    BuilderFlag.VERSION_COMPATIBLE runs on the same major release, same or newer) and
    ``hardware_compatibility: "ampere_plus"`` (runs on any compute capability >= 8.0).
    """
    hint = "rebuild with: " + REBUILD_CMD.format(out=out)
    missing = [k for k in PLAN_KEYS if not plan_meta.get(k)]
    if missing:
        raise PlanCompatError(f"plan metadata lacks {', '.join(missing)}; cannot tell whether it fits this "
                              f"host; {hint}")
    built, here = _version_tuple(plan_meta["trt_version"]), _version_tuple(trt_version)
    n = min(len(built), len(here))
    if plan_meta.get("version_compatible"):
        ok = built[0] == here[0] and here[:n] >= built[:n]
    else:
        ok = built[:n] == here[:n]
    if not ok:
        raise PlanCompatError(f"plan was built with TensorRT {plan_meta['trt_version']}, this host runs "
                              f"TensorRT {trt_version}; {hint}")
    cc_built, cc_here = _cc_tuple(plan_meta["compute_capability"]), _cc_tuple(compute_capability)
    if plan_meta.get("hardware_compatibility") == "ampere_plus":
        ok = cc_here >= (8, 0) and cc_built >= (8, 0)
    else:
        ok = cc_built == cc_here
    if not ok:
        raise PlanCompatError(
            f"plan was built for compute capability {plan_meta['compute_capability']} "
            f"({plan_meta.get('gpu_name') or 'unknown GPU'}), this GPU is {compute_capability}; {hint}")
