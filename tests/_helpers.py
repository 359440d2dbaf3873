"""What test files in several folders share: small training configs and a live pickle payload."""

# A 2-D toy run that trains, evaluates and samples in about a second (the training tests' default).
TINY = dict(name="tiny", dataset="8gaussians", n_train=512, n_test=128, hidden=16, depth=2, n_iter=6,
            n_iter_d_init=3, n_iter_d=2, batch_size=32, n_eval=64, sampler_steps=4, log_every=2, checkpoint_every=3)

# Smaller still, checkpointing every other round: for the tests that only need a run folder to exist.
TINIER = dict(name="tiny", dataset="8gaussians", n_train=256, n_test=64, hidden=8, depth=1, n_iter=4,
              n_iter_d_init=1, n_iter_d=1, batch_size=16, n_eval=32, sampler_steps=2, log_every=2, checkpoint_every=2,
              n_partition_samples=16)


class Payload:
    """Unpickling it creates the file `marker` (what an attacker's code could do)."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return open, (self.marker, "w")
