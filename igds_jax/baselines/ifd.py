"""IFD baseline (Li et al. 2024, "From Quantity to Quality", the Cherry LLM paper).

Instruction-Following Difficulty of an example is

    IFD = s(response | prompt) / s(response)

where ``s(response | prompt)`` is the mean cross-entropy of the response tokens with the
prompt as context and ``s(response)`` the mean cross-entropy of the same response tokens with
no prompt (``train.tokenize.encode_response_alone``). IFD > 1 means the prompt does not
help predict the response, so those examples are dropped; among the rest the highest IFD is
kept. The model code computes the losses; this module contains only the formula,
with the loss alignment convention of ``loss.py``.
"""

from __future__ import annotations

import numpy as np


def ifd_values(conditioned_loss_n: np.ndarray, unconditioned_loss_n: np.ndarray) -> np.ndarray:
    """Return ``[n]`` IFD = conditioned / unconditioned mean response loss.

    A non-positive or non-finite unconditioned loss gives NaN (IFD undefined).
    """
    cond = np.asarray(conditioned_loss_n, dtype=np.float64)
    uncond = np.asarray(unconditioned_loss_n, dtype=np.float64)
    if cond.shape != uncond.shape or cond.ndim != 1:
        raise ValueError(
            f"conditioned {cond.shape} and unconditioned {uncond.shape} losses must be equal "
            "1-D shapes"
        )
    valid = np.isfinite(cond) & np.isfinite(uncond) & (uncond > 0)
    out = np.full(cond.shape, np.nan)
    out[valid] = cond[valid] / uncond[valid]
    return out


def ifd_scores(
    conditioned_loss_n: np.ndarray,
    unconditioned_loss_n: np.ndarray,
    *,
    max_ifd: float = 1.0,
) -> np.ndarray:
    """Return IFD baseline scores: IFD itself, or ``-inf`` (ineligible) where IFD > max_ifd.

    Examples whose IFD is undefined (see ``ifd_values``) are ineligible too.
    """
    ifd = ifd_values(conditioned_loss_n, unconditioned_loss_n)
    return np.where(np.isnan(ifd) | (ifd > max_ifd), -np.inf, ifd)
