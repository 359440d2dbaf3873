"""Initialisations of the networks' weights beyond PyTorch's defaults."""
from torch import nn

INITS = ("torch", "xavier")


def xavier_uniform_init(module: nn.Module) -> nn.Module:
    """Xavier-uniform weights (gain 1: U(-a, a), a = sqrt(6 / (fan_in + fan_out))) for every Linear, Conv2d and
    ConvTranspose2d layer of `module`, in place; biases and batch norm keep PyTorch's defaults. This is the
    authors' initialisation of their 32x32 base and energy. Apply it before spectral normalisation (which
    reparametrises the weights); returns `module`."""
    for layer in module.modules():
        if isinstance(layer, (nn.Linear, nn.Conv2d, nn.ConvTranspose2d)):
            nn.init.xavier_uniform_(layer.weight, gain=1.0)
    return module
