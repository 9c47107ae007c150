"""The damped inverse Hessian shared by GPTQ and SparseGPT (the OBS family), as its upper Cholesky factor."""

from __future__ import annotations

import torch

from polm.errors import PolmError


def inverse_hessian_cholesky(hessian: torch.Tensor, percdamp: float = 0.01) -> torch.Tensor:
    """Upper Cholesky factor U of (H + λI)⁻¹ with λ = percdamp · mean(diag H): (H + λI)⁻¹ = Uᵀ U."""
    damp = percdamp * torch.mean(torch.diag(hessian))
    h = hessian + damp * torch.eye(hessian.shape[0], dtype=hessian.dtype, device=hessian.device)
    try:
        inverse = torch.cholesky_inverse(torch.linalg.cholesky(h))
        return torch.linalg.cholesky(inverse, upper=True)
    except torch.linalg.LinAlgError as err:
        raise PolmError(f"the calibration Hessian is not positive definite with percdamp={percdamp}",
                        where="percdamp", fix="Raise percdamp (e.g. 0.1) or calibrate on more sequences.") from err
