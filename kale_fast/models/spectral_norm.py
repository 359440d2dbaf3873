"""Spectral normalisation of a whole network (Miyato et al., 2018), the GEBM paper's setting for image energies."""
from torch import nn
from torch.nn.utils.parametrizations import spectral_norm


def with_spectral_norm(module: nn.Module) -> nn.Module:
    """Put every Linear and Conv2d layer of `module` under torch's spectral_norm parametrization, in place;
    returns `module`. In train mode each forward runs one power iteration per layer: keep the module in eval()
    while sampling."""
    for layer in list(module.modules()):
        if isinstance(layer, (nn.Linear, nn.Conv2d)):
            spectral_norm(layer)
    return module
