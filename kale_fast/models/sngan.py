"""The GEBM paper's 32x32 image networks (SNGAN-style DCGAN base and energy), the benchmark workload of
the samplers and the image models of training."""
from torch import Tensor, nn

from kale_fast.models.spectral_norm import with_spectral_norm


class SNGANBase32(nn.Module):
    """z (B, latent_dim) -> images (B, 3, 32, 32) in [-1, 1]: Linear -> 4x4x512, three BN-ReLU-ConvT(4, 2, 1)
    stages 512 -> 256 -> 128 -> 64, BN-ReLU-ConvT(64 -> 3, 3, 1, 1), tanh. About 3.6M parameters."""

    def __init__(self, latent_dim: int = 100, width: int = 512):
        super().__init__()
        self.width = width
        self.project = nn.Linear(latent_dim, 4 * 4 * width)
        stages = []
        channels = [width, width // 2, width // 4, width // 8]
        for c_in, c_out in zip(channels[:-1], channels[1:]):
            stages += [nn.BatchNorm2d(c_in), nn.ReLU(), nn.ConvTranspose2d(c_in, c_out, 4, 2, 1)]
        stages += [nn.BatchNorm2d(channels[-1]), nn.ReLU(), nn.ConvTranspose2d(channels[-1], 3, 3, 1, 1), nn.Tanh()]
        self.net = nn.Sequential(*stages)

    def forward(self, z: Tensor) -> Tensor:
        return self.net(self.project(z).view(-1, self.width, 4, 4))


class SNGANEnergy32(nn.Module):
    """images (B, 3, 32, 32) -> energies (B,): seven convolutions 3->64 (3x3), 64->128 (4x4, stride 2), 128->128,
    128->256 (stride 2), 256->256, 256->512 (stride 2), 512->512, LeakyReLU(0.1) after each, then
    Linear(8192 -> 1). About 5.9M parameters. spectral_norm (the paper's setting) normalises the convolutions
    and, with spectral_norm_head (kale_fast's original setting; the authors' energy leaves it free), the last
    Linear layer; put the module in eval() while sampling so that its power iteration does not run on every
    evaluation."""

    def __init__(self, spectral_norm: bool = True, spectral_norm_head: bool = True):
        super().__init__()
        specs = [(3, 64, 3, 1), (64, 128, 4, 2), (128, 128, 3, 1), (128, 256, 4, 2), (256, 256, 3, 1),
                 (256, 512, 4, 2), (512, 512, 3, 1)]
        layers = []
        for c_in, c_out, kernel, stride in specs:
            layers += [nn.Conv2d(c_in, c_out, kernel, stride, 1), nn.LeakyReLU(0.1)]
        self.features = nn.Sequential(*layers)
        self.head = nn.Linear(4 * 4 * 512, 1)
        if spectral_norm:
            with_spectral_norm(self, head=spectral_norm_head)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.features(x).flatten(1)).squeeze(1)
