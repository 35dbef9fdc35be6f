"""A seed ensemble: decoders fitted on the same split with different seeds, averaged.

``SeedEnsemble(members)(x)`` is the mean of ``member(x)`` over the members, so it is a
decoder like any other: prediction, salience (attributions of the average are the
average of the members' attributions for the linear methods integrated gradients and
grad x input) and checkpoints work on it unchanged. The members are typically
:class:`~nwb_llmdecode.models.Decoder` or
:class:`~nwb_llmdecode.models.baselines.LSTMDecoder`; each runs in its own precision.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

__all__ = ["SeedEnsemble"]


class SeedEnsemble(nn.Module):
    """The average of ``members``' outputs.

    Parameters
    ----------
    members
        Trained torch decoders mapping ``(batch, seq_len, rois)`` to
        ``(batch, seq_len, channels)``, all of the same input and output size.

    Examples
    --------
    >>> a, b = nn.Linear(3, 2), nn.Linear(3, 2)
    >>> ens = SeedEnsemble([a, b])
    >>> x = torch.ones(1, 4, 3)
    >>> bool(torch.allclose(ens(x), (a(x) + b(x)) / 2))
    True
    """

    def __init__(self, members: Sequence[nn.Module]) -> None:
        super().__init__()
        if len(members) < 1:
            raise ValueError("a SeedEnsemble needs at least one member")
        self.members = nn.ModuleList(members)

    def __len__(self) -> int:
        return len(self.members)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.members[0](x)
        for m in self.members[1:]:
            out = out + m(x)
        return out / len(self.members)
