"""Training stage: small decoders trained on a mixture, measured by how fast each skill is acquired.

    from diffmix.training import load_train_config, train
    summary = train("MIX", "RUN", load_train_config(None, steps=2000, device="auto"))

Under torchrun: `torchrun --nproc_per_node 2 -m diffmix.training --data MIX --out RUN`.
"""

from diffmix.training.config import TrainConfig, load_train_config
from diffmix.training.loop import train

__all__ = ["TrainConfig", "load_train_config", "train"]
