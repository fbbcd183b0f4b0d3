"""Our models fed torchvision's weights give torchvision's outputs (eval and train mode)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from resnet_jax import convert, models

torch = pytest.importorskip('torch')
torch_resnet = pytest.importorskip('torch_resnet')


def randomised_torch_model(name, num_classes, seed):
  """A torchvision-built net with random weights and random BN running statistics."""
  torch.manual_seed(seed)
  net = torch_resnet.build(name, num_classes)
  with torch.no_grad():
    for m in net.modules():
      if isinstance(m, torch.nn.BatchNorm2d):
        m.weight.uniform_(0.5, 1.5)
        m.bias.normal_(0, 0.2)
        m.running_mean.normal_(0, 0.2)
        m.running_var.uniform_(0.5, 2.0)
  return net


@pytest.mark.parametrize('name', ['resnet18', 'resnet34', 'resnet50', 'resnet101', 'resnet152'])
def test_logits_and_train_step_match_torchvision(name):
  net = randomised_torch_model(name, num_classes=100, seed=0)
  x = np.random.RandomState(1).randn(2, 3, 64, 64).astype(np.float32)
  variables = convert.from_torchvision(net.state_dict(), name)
  model = models.get_model(name, num_classes=100)
  x_nhwc = jnp.asarray(x.transpose(0, 2, 3, 1))

  net.eval()
  with torch.no_grad():
    ref = net(torch.from_numpy(x)).numpy()
  ours = jax.jit(lambda v, x: model.apply(v, x, train=False))(variables, x_nhwc)
  assert np.abs(ours - ref).max() <= 1e-4 * np.abs(ref).max()

  # Train mode normalises with batch statistics, which deep nets amplify: on this batch float32
  # torch itself strays from float64 torch by up to 2e-3 (ResNet-152). So the train-mode reference
  # is torch in float64, and we must be as close to it as torch's own float32 forward is.
  net.train()
  with torch.no_grad():
    ref_train32 = net(torch.from_numpy(x)).numpy()
  ours_train, updates = jax.jit(
    lambda v, x: model.apply(v, x, train=True, mutable=['batch_stats'])
  )(variables, x_nhwc)
  torch_state = net.state_dict()
  with torch.no_grad():
    ref_train = net.double()(torch.from_numpy(x).double()).numpy()
  scale = np.abs(ref_train).max()
  torch_error = np.abs(ref_train32 - ref_train).max()
  assert np.abs(ours_train - ref_train).max() <= max(1.5 * torch_error, 1e-4 * scale)
  # Running statistics follow torch too (momentum 0.1, unbiased variance).
  stats = updates['batch_stats']
  for torch_key, ours_stat in [
    ('layer1.0.bn1.running_mean', stats['layer1_0']['bn1']['mean']),
    ('layer2.0.downsample.1.running_var', stats['layer2_0']['downsample_1']['var']),
  ]:
    np.testing.assert_allclose(ours_stat, torch_state[torch_key].numpy(), rtol=1e-4, atol=1e-5)
