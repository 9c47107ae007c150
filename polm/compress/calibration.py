"""Calibration data for compression (pruning, GPTQ): windows of token ids cut from any polm data reference."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from polm.errors import PolmError


@dataclass
class CalibrationConfig:
    data: str = "builtin:wiki-summaries?n=200&seed=0"   # any polm data reference
    n_samples: int = 32        # windows of seq_len tokens cut from the encoded records
    seq_len: int = 256
    batch_size: int = 8



def calibration_batches(ref: str, tokenizer: Any, *, n_samples: int, seq_len: int, batch_size: int) -> list[torch.Tensor]:
    """`n_samples` windows of `seq_len` tokens, as input_ids batches [≤ batch_size, seq_len].

    The records of `ref` (any polm data reference) are encoded as for training (polm.data.templating),
    joined into one token stream in file order and cut into consecutive windows; the reference's own
    `?n=&seed=` chooses which records. Too few tokens is a PolmError.
    """
    from polm.data.loaders import load_records
    from polm.data.templating import encode_records

    records = load_records(ref).records
    examples, _ = encode_records(records, tokenizer, max_length=1 << 30)
    stream = [t for ex in examples for t in ex["input_ids"]]
    need = n_samples * seq_len
    if len(stream) < need:
        raise PolmError(f"calibration data '{ref}' has {len(stream)} tokens, but n_samples × seq_len = "
                        f"{n_samples} × {seq_len} = {need} are needed", where="calibration",
                        fix="Lower calibration.n_samples or calibration.seq_len, or use more records (e.g. ?n=).")
    ids = torch.tensor(stream[:need]).reshape(n_samples, seq_len)
    return list(ids.split(batch_size))
