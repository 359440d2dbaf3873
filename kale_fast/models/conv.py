"""Small convolutional base and energy for 8x8 digits and 28x28 MNIST (any size divisible by 4)."""
from torch import Tensor, nn


class ConvBase(nn.Module):
    """z (B, latent_dim) -> images (B, channels, size, size) in [-1, 1]: Linear to (4w, size/4, size/4), two
    ReLU-ConvT(4, 2, 1) upsamplings, ReLU-Conv(3x3), tanh."""

    def __init__(self, latent_dim: int, channels: int = 1, size: int = 8, width: int = 32):
        super().__init__()
        if size % 4:
            raise ValueError(f"size must be divisible by 4, got {size}")
        self.shape = (4 * width, size // 4, size // 4)
        self.project = nn.Linear(latent_dim, 4 * width * (size // 4) ** 2)
        self.net = nn.Sequential(nn.ReLU(), nn.ConvTranspose2d(4 * width, 2 * width, 4, 2, 1), nn.ReLU(),
                                 nn.ConvTranspose2d(2 * width, width, 4, 2, 1), nn.ReLU(),
                                 nn.Conv2d(width, channels, 3, 1, 1), nn.Tanh())

    def forward(self, z: Tensor) -> Tensor:
        return self.net(self.project(z).view(-1, *self.shape))


class ConvEnergy(nn.Module):
    """images (B, channels, size, size) -> energies (B,): Conv(3x3) and two stride-2 convs with LeakyReLU(0.1)."""

    def __init__(self, channels: int = 1, size: int = 8, width: int = 32):
        super().__init__()
        self.net = nn.Sequential(nn.Conv2d(channels, width, 3, 1, 1), nn.LeakyReLU(0.1),
                                 nn.Conv2d(width, 2 * width, 4, 2, 1), nn.LeakyReLU(0.1),
                                 nn.Conv2d(2 * width, 4 * width, 4, 2, 1), nn.LeakyReLU(0.1), nn.Flatten(),
                                 nn.Linear(4 * width * (size // 4) ** 2, 1))

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x).squeeze(1)
