"""Flow bases: inverses and log-densities against the Jacobian."""
import pytest
import torch


@pytest.mark.parametrize("batch_norm", [False, True])
def test_realnvp_inverts_and_its_log_density_matches_the_jacobian(batch_norm):
    from kale_fast.models import RealNVP

    torch.manual_seed(0)
    flow = RealNVP(5, n_layers=4, hidden=16, batch_norm=batch_norm).double()
    for layer in flow.layers:
        torch.nn.init.normal_(layer.scale, std=0.5)
    if batch_norm:  # training batches move the running statistics; then scales and shifts away from the identity
        flow.log_prob(torch.randn(64, 5, dtype=torch.float64) * 3 + 1)
        assert all(not torch.equal(norm.running_var, torch.ones(5, dtype=torch.float64)) for norm in flow.norms)
        for norm in flow.norms:
            for tensor, mean in ((norm.log_gamma, 0.0), (norm.beta, 0.0), (norm.running_mean, 0.0),
                                 (norm.running_var, 2.0)):
                torch.nn.init.normal_(tensor, mean, 0.5)
        flow.eval()
    z = torch.randn(3, 5, dtype=torch.float64)
    x = flow(z)
    z_back, log_det = flow.inverse(x)
    torch.testing.assert_close(z_back, z)
    jacobian = torch.autograd.functional.jacobian(lambda v: flow.inverse(v[None])[0][0], x[0])
    torch.testing.assert_close(log_det[0], torch.logdet(jacobian))
    expected = torch.distributions.Normal(0.0, 1.0).log_prob(z[0]).sum() + torch.logdet(jacobian)
    torch.testing.assert_close(flow.log_prob(x[:1])[0], expected)


@pytest.mark.parametrize("kind", ["maf", "nsf"])
def test_zuko_flow_maps_latent_to_data_with_the_log_density_of_its_jacobian(kind):
    pytest.importorskip("zuko")
    from kale_fast.models.zuko_flows import ZukoFlow

    torch.manual_seed(0)
    flow = ZukoFlow(kind, 3, transforms=2, hidden=8).double()
    with torch.no_grad():
        for param in flow.parameters():  # away from the identity map of a fresh flow
            param.add_(torch.randn_like(param) * 0.3)
    z = torch.randn(2, 3, dtype=torch.float64)
    x = flow(z)
    jacobian = torch.autograd.functional.jacobian(lambda v: flow(v[None])[0], z[0])
    expected = torch.distributions.Normal(0.0, 1.0).log_prob(z[0]).sum() - torch.logdet(jacobian)
    torch.testing.assert_close(flow.log_prob(x[:1])[0], expected)
    assert torch.autograd.grad(flow(z.requires_grad_(True)).sum(), z)[0].abs().sum() > 0  # differentiable in z
