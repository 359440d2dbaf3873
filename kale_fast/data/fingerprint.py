"""The training data's fingerprint: a run records it so that a resume or an energy on a pre-trained base can check
that it sees the same data."""
import hashlib
from typing import Iterable, Optional

import numpy as np
from torch import Tensor


def data_hash(splits: Iterable[Optional[Tensor]]) -> str:
    """SHA-256 (hex) of the splits as the model sees them (after all preprocessing): each split's dtype, shape and
    bytes in order, a missing split (None) marked as such. Hashing the final tensors rather than a file and the
    options that read it covers every way data can differ: another file, another key, another loader version."""
    digest = hashlib.sha256()
    for split in splits:
        if split is None:
            digest.update(b"none;")
            continue
        array = np.ascontiguousarray(split.detach().cpu().numpy())
        digest.update(f"{array.dtype.str}{array.shape};".encode())
        digest.update(memoryview(array).cast("B"))
    return digest.hexdigest()
